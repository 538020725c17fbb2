"""Chapter 1's exercises: the CUDA verdict against the hardware, the kernels' environments."""
import json
import os
import sys

import pytest
import torch

from ch01_intro import exercises_ch01 as ex
from tests.common.cli import assert_one_error_line, run_main

NO_GPU = {"devices": [], "driver_gpus": [], "nvidia_smi": None}
GPU = {"devices": ["nvidia0"], "driver_gpus": [], "nvidia_smi": None}


def test_nvidia_hardware_reads_device_files_driver_entries_and_path(tmp_path):
    dev, proc, bin_dir = tmp_path / "dev", tmp_path / "gpus", tmp_path / "bin"
    for folder in (dev, proc, bin_dir):
        folder.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"):
        (dev / name).touch()
    (proc / "0000:01:00.0").mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n")
    smi.chmod(0o755)
    found = ex.nvidia_hardware(dev, proc, path=str(bin_dir))
    assert found == {"devices": ["nvidia0", "nvidia1"], "driver_gpus": ["0000:01:00.0"],
                     "nvidia_smi": str(smi)}
    assert ex.nvidia_hardware(tmp_path / "none", tmp_path / "none", path="") == NO_GPU


@pytest.mark.parametrize("available, build, hardware, matches, words", [
    (False, None, NO_GPU, True, "no NVIDIA GPU here"),
    (True, "12.8", GPU, True, "an NVIDIA GPU is present"),
    (False, None, GPU, False, "CPU-only build"),
    (False, "12.8", GPU, False, "driver older"),
    (True, "12.8", NO_GPU, False, "no NVIDIA device file"),
    (False, None, {**NO_GPU, "nvidia_smi": "/usr/bin/nvidia-smi"}, False, "CPU-only build"),
])
def test_the_cuda_verdict(available, build, hardware, matches, words):
    verdict, why = ex.cuda_verdict(available, build, hardware)
    assert verdict is matches and words in why


def test_exercise_1_reports_this_torch():
    answer = ex.exercise_1(hardware=NO_GPU)
    assert answer["torch"] == torch.__version__ and answer["torch_importable"]
    assert answer["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert answer["cuda_available"] is torch.cuda.is_available()
    assert answer["matches"] is (not torch.cuda.is_available())


def kernel(folder, name, argv0):
    (folder / name).mkdir(parents=True)
    (folder / name / "kernel.json").write_text(json.dumps({"argv": [argv0, "-m", "ipykernel"]}))


def test_exercise_2_names_this_interpreter_and_compares_each_kernel(tmp_path, monkeypatch):
    kernels = tmp_path / "kernels"
    kernel(kernels, "here", sys.executable)
    kernel(kernels, "conda", "/opt/conda/bin/python")
    (tmp_path / "bin").mkdir()
    os.symlink(sys.executable, tmp_path / "bin/python")       # the same binary, another prefix
    kernel(kernels, "linked", str(tmp_path / "bin/python"))
    kernel(kernels, "bare", "python")                           # looked up on PATH
    (kernels / "broken").mkdir()
    (kernels / "broken/kernel.json").write_text("{not json")
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    monkeypatch.chdir(tmp_path)
    answer = ex.exercise_2([kernels, tmp_path / "absent"])
    assert answer["executable"] == sys.executable and answer["torch_file"] == torch.__file__
    rows = {k["name"]: k for k in answer["kernels"]}
    assert sorted(rows) == ["bare", "broken", "conda", "here", "linked"]
    assert rows["here"]["same"] and rows["bare"]["same"]
    assert rows["bare"]["interpreter"] == os.path.join(os.path.dirname(sys.executable), "python")
    assert rows["conda"]["same"] is False and rows["linked"]["same"] is False
    assert rows["broken"]["error"].startswith("unreadable kernel.json")
    assert answer["path_python"]["python"] == (rows["bare"]["interpreter"], True)


def test_main_answers_both(capsys):
    answers = ex.main([])
    out = capsys.readouterr().out
    assert sorted(answers) == [1, 2]
    for label in ("Exercise 1.1", "torch.cuda.is_available()?", "does it match the hardware?",
                  "Exercise 1.2", "this environment's torch:", "%run ch01_intro/exercises_ch01"):
        assert label in out
    assert torch.__file__ in out and sys.executable in out


def test_a_bad_exercise_number_is_one_line(capsys):
    code, err = run_main(ex.main, ["--exercise", "3"], capsys)
    assert_one_error_line(code, err, "--exercise", "invalid choice: 3")
