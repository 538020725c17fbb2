""".ci/gpu, the one GPU check: its plan, its step runner (failures, timeouts, the budget), its
refusal without CUDA, and the whole dry run on the CPU writing the summary."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from common.data import REPO_ROOT, data_root

GPU_SH = REPO_ROOT / ".ci" / "gpu"
STEP_NAMES = ["gpu-tests", "ch10-train", "ch13-train", "ch13-analysis", "ch15-serving",
              "ch10-train-plain", "ch10-train-compiled", "ch13-train-compiled", "ch15-latency"]
COMPILED = ("ch10-train-compiled", "ch13-train-compiled")  # skipped by the dry run


@pytest.fixture(scope="module")
def gpu():
    """.ci/gpu.py as a module (its folder is not a package)."""
    spec = importlib.util.spec_from_file_location("ci_gpu", REPO_ROOT / ".ci" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flag(args, name):
    return args[args.index(name) + 1]


def test_the_gpu_plan_runs_every_benchmark_on_cuda_and_the_dry_run_on_the_cpu(gpu):
    full = gpu.plan(False, ("seg.state", "cls.state"), latency_takes_device=True)
    dry = gpu.plan(True, ("seg.state", "cls.state"), latency_takes_device=True)
    assert [s["name"] for s in full] == [s["name"] for s in dry] == STEP_NAMES
    for on_gpu, on_cpu in zip(full[1:], dry[1:]):
        assert flag(on_gpu["args"], "--device") == "cuda", on_gpu["name"]
        assert flag(on_cpu["args"], "--device") == "cpu", on_cpu["name"]
        assert on_gpu["script"] == on_cpu["script"] and (REPO_ROOT / on_gpu["script"]).is_file()
    assert full[0]["args"] == dry[0]["args"] == ["-m", "gpu"]
    analysis = {s["name"]: s for s in full}["ch13-analysis"]["args"]
    assert "--analysis" in analysis and flag(analysis, "--seg-model") == "seg.state"
    assert flag(analysis, "--cls-model") == "cls.state"
    ch10 = {s["name"]: s for s in dry}
    assert int(flag(ch10["ch10-train"]["args"], "--steps")) == 1        # the smallest size
    assert "--no-augment" in ch10["ch10-train-plain"]["args"]
    assert all("--compile" in s["args"] for s in full + dry if s["name"] in COMPILED)
    assert not any(s.get("skip") for s in full)
    assert [s["name"] for s in dry if s.get("skip")] == list(COMPILED)


def test_latency_without_a_device_flag_is_skipped_on_the_gpu_and_run_in_the_dry_run(gpu):
    on_gpu, on_cpu = gpu.plan(False)[-1], gpu.plan(True)[-1]
    assert "takes no --device" in on_gpu["skip"] and "--device" not in on_gpu["args"]
    assert "skip" not in on_cpu and "--device" not in on_cpu["args"]
    assert "--seg-model" not in gpu.plan(False)[3]["args"]         # no models: the step says


def test_only_picks_steps_and_refuses_unknown_names(gpu):
    steps = gpu.plan(True)
    assert [s["name"] for s in gpu.select(steps, ["ch15-serving", "gpu-tests"])] == [
        "gpu-tests", "ch15-serving"]                                   # in the plan's order
    with pytest.raises(gpu.DataError, match="--only nope: no such step; the steps are gpu-tests"):
        gpu.select(steps, ["nope"])


def test_clean_tail_folds_progress_bars_and_keeps_the_last_lines(gpu):
    text = "a\r\nE1 trn:  10%|#  | 1/10\rE1 trn: 100%|###| 10/10\n\n  \nlast line\n"
    assert gpu.clean_tail(text) == "a\nE1 trn: 100%|###| 10/10\nlast line"
    assert gpu.clean_tail("\n".join(map(str, range(100))), lines=3) == "97\n98\n99"
    assert gpu.clean_tail("x" * 50, chars=10) == "x" * 10


def test_parse_junit_counts_and_names(gpu, tmp_path):
    (tmp_path / "r.xml").write_text(textwrap.dedent("""\
        <?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
        <testcase classname="tests.ch10.test_model" name="test_a" time="0.1"/>
        <testcase classname="tests.ch10.test_model" name="test_b" time="0.1">
          <failure message="AssertionError: 1 != 2">trace</failure></testcase>
        <testcase classname="tests.ch03.test_devices" name="test_c" time="0">
          <skipped type="pytest.skip" message="needs CUDA">x</skipped></testcase>
        <testcase classname="tests.ch01.test_models" name="test_d" time="0">
          <error message="fixture failed">trace</error></testcase>
        </testsuite></testsuites>"""))
    r = gpu.parse_junit(tmp_path / "r.xml")
    assert (r["tests"], r["skipped"]) == (4, 1) and r["skip_reasons"] == {"needs CUDA": 1}
    assert r["passed"] == ["tests.ch10.test_model::test_a"]
    assert [f["test"] for f in r["failed"]] == ["tests.ch10.test_model::test_b",
                                                "tests.ch01.test_models::test_d"]
    assert r["failed"][0]["message"] == "AssertionError: 1 != 2"


FAKE_STEPS = {
    "fake_ok.py": "def main(argv):\n    return {'rate': float(argv[0]), 'nan': float('nan'),"
                  " (1, 2): True}\n",
    "fake_bad.py": "from common.errors import DataError\n\ndef main(argv):\n"
                   "    print('working ...')\n"
                   "    raise DataError('--data-dir /x does not exist')\n",
    "fake_slow.py": "import subprocess, sys, time\n\ndef main(argv):\n"
                    "    child = subprocess.Popen([sys.executable, '-c', 'import time; "
                    "time.sleep(120)'])\n    open(argv[0], 'w').write(str(child.pid))\n"
                    "    time.sleep(120)\n",
}


def fake_plan(gpu, tmp_path):
    for name, text in FAKE_STEPS.items():
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}
    steps = [gpu.step("one", "fine", "fake_ok.py", ["1.5"], 60),
             gpu.step("two", "bad input", "fake_bad.py", [], 60),
             gpu.step("three", "too slow", "fake_slow.py", [tmp_path / "child.pid"], 5),
             gpu.step("four", "fine again", "fake_ok.py", ["2"], 60)]
    return steps, {"bench": env, "tests": env}


def gone(pid):
    """The process has ended (a zombie waiting for its reaper counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_failed_or_timed_out_step_is_recorded_and_the_next_runs(gpu, tmp_path):
    steps, envs = fake_plan(gpu, tmp_path)
    said, saved = [], []
    records = gpu.run_plan(steps, sys.executable, envs, 600, tmp_path, after_step=lambda r:
                           saved.append(len(r)), say=said.append)
    assert [r["status"] for r in records] == ["ok", "failed", "timeout", "ok"]
    assert saved == [1, 2, 3, 4]                                   # the summary after each step
    assert records[0]["figures"] == {"rate": 1.5, "nan": None, "(1, 2)": True}   # valid JSON
    assert records[3]["figures"]["rate"] == 2.0
    bad = records[1]
    assert bad["returncode"] == 2 and bad["figures"] is None
    assert bad["error"].startswith("exit status 2: working ...")
    assert "error: --data-dir /x does not exist" in bad["error"]
    assert records[2]["error"] == "stopped after 5 s (its timeout)"
    assert gone(int((tmp_path / "child.pid").read_text()))       # the step's child ended too
    assert set(records[0]) == set(records[2]) and records[0]["command"] == "python fake_ok.py 1.5"
    assert said[0].startswith("[1/4] one: python fake_ok.py 1.5")


def test_steps_beyond_the_budget_are_not_started_and_skips_are_kept(gpu, tmp_path):
    steps, envs = fake_plan(gpu, tmp_path)
    steps[0]["skip"] = "not today"
    records = gpu.run_plan(steps, sys.executable, envs, gpu.MIN_STEP_S - 1, tmp_path,
                           say=lambda _: None)
    assert [r["status"] for r in records] == ["skipped", "not run", "not run", "not run"]
    assert records[0]["error"] == "not today" and "budget left" in records[1]["error"]
    assert not (tmp_path / "child.pid").exists()


def test_without_cuda_the_script_refuses_in_one_line(tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"                   # as nvidia-smi says on no GPU
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(GPU_SH), "--out", str(tmp_path / "s.json")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: .ci/gpu: no CUDA GPU here (nvidia-smi finds none);"
                                     " --dry-run runs the same steps on the CPU")
    assert not (tmp_path / "s.json").exists()


def test_a_torch_that_sees_no_gpu_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}             # also on a machine with one
    result = subprocess.run([sys.executable, str(REPO_ROOT / ".ci" / "gpu.py"), "--out",
                             str(tmp_path / "s.json")], env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: .ci/gpu: no CUDA: ") and line.endswith(
        "sees no GPU; --dry-run runs the same steps on the CPU")
    assert f"torch {torch.__version__}" in line
    assert not (tmp_path / "s.json").exists() and not result.stdout


@pytest.mark.slow
def test_the_dry_run_runs_every_step_on_the_cpu_into_one_summary(gpu, tmp_path):
    """About 3 minutes on a busy 2-core machine: the benchmarks' smallest sizes."""
    out = tmp_path / "gpu" / "summary.json"
    result = subprocess.run(["bash", str(GPU_SH), "--dry-run", "--out", str(out)],
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                            text=True, timeout=900)
    assert result.stdout.strip().splitlines()[-1] == f"summary: {out}"
    summary = json.loads(out.read_text())
    assert list(tmp_path.iterdir()) == [out.parent] and os.listdir(out.parent) == [out.name]
    assert summary["kind"] == "dry-run" and summary["finished"] and summary["seconds"] > 0
    machine = summary["machine"]
    assert machine["torch"]["torch"] == torch.__version__
    assert machine["torch"]["cuda"] == torch.version.cuda and "nvidia_smi" in machine
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == STEP_NAMES
    models = gpu.find_book_models([data_root(), gpu.SHARED_DATA])
    expected = {name: "skipped" if name in COMPILED else "ok" for name in STEP_NAMES}
    if models is None:                           # without the book's checkpoints, it says so
        expected["ch13-analysis"] = "failed"
        assert "luna-models" in steps["ch13-analysis"]["error"]
    assert {n: s["status"] for n, s in steps.items()} == expected, result.stdout[-3000:]
    assert result.returncode == (0 if models else 1)
    assert summary["ok"] == (models is not None)
    for name, s in steps.items():
        if name in COMPILED:
            continue
        assert s["seconds"] > 0 and s["output_tail"], name
        assert "--device cpu" in s["command"] or name in ("gpu-tests", "ch15-latency")
        if s["status"] == "ok":
            assert s["figures"], name                              # what main returned
    tests = steps["gpu-tests"]["figures"]
    assert tests["tests"] == len(tests["passed"]) + tests["skipped"] > 0 and not tests["failed"]
    if not torch.cuda.is_available():
        assert tests["skipped"] == tests["tests"]                   # each skips: needs CUDA
    assert {"fp32", "amp"} <= set(steps["ch10-train"]["figures"])    # fp32 and --amp
    assert [row["clients"] for row in steps["ch15-serving"]["figures"]] == [1]
    assert set(steps["ch15-latency"]["figures"]["results"]) == {"cls", "unet"}
