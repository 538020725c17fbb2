"""Bad input at every ch15 entry point: exit status 2, one line naming the file or flag, no
traceback, nothing left behind, no code run from a file (issue 10, classes 1, 4, 7 and 8; the
servers' and the client's answers to bad requests, class 6, are in their own test files)."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from ch10_luna.model import LunaModel
from ch15_deploy import (
    batching_server,
    benchmark,
    cls_client,
    export_aoti,
    export_jit,
    export_mobile,
    export_onnx,
    flask_server,
    jit_intro,
    latency,
    load_test,
)
from common.data import REPO_ROOT
from common.errors import run_cli

pytestmark = [pytest.mark.filterwarnings(r"ignore:.*torch\.jit.* is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")]


class Evil:
    """Unpickling this makes a folder: proof that a file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def run_entry(main, argv, capsys):
    """(exit status, stderr) of run_cli(main, argv): how a user's shell sees the script."""
    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(a) for a in argv])
    return e.value.code, capsys.readouterr().err


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def assert_one_line(status, err, *words):
    lines = err.strip().splitlines()
    assert status == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: ") and len(lines[0]) < 320, lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def files(tmp_path):
    """Bad input files made in a temporary folder, and the marker an evil pickle would make."""
    marker = tmp_path / "ran-code"
    evil = tmp_path / "evil.pt"
    torch.save({"model_state": Evil(marker), "model_name": "LunaModel"}, evil)
    text = tmp_path / "text.pt"
    text.write_text("not a torch file")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        luna = LunaModel()
    luna_ckpt = tmp_path / "luna.state"
    torch.save({"model_state": luna.state_dict(), "model_name": "LunaModel"}, luna_ckpt)
    narrow = tmp_path / "narrow.state"                        # another LunaModel width
    torch.save({"model_state": LunaModel(conv_channels=4).state_dict(),
                "model_name": "LunaModel"}, narrow)
    example = tmp_path / "data" / "p3ch15" / "cls_val_example.pt"
    example.parent.mkdir(parents=True)
    torch.save((Evil(marker), torch.tensor([1, 0]), "uid", torch.zeros(3)), example)
    out = tmp_path / "out"
    out.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("in the way")
    return {"tmp": tmp_path, "marker": marker, "evil": evil, "text": text, "luna": luna_ckpt,
            "narrow": narrow, "data": tmp_path / "data", "out": out, "a_file": a_file}


# class 1: torch files that are code; class 7: state_dicts that do not fit, in one short line
FILE_CASES = {   # name: (main, argv from the files fixture, words in the one line)
    "flask --model evil": (flask_server.main, lambda f: ["--model", f["evil"]],
                           ["--model", "evil.pt", "not a readable"]),
    "flask --model narrower LunaModel": (
        flask_server.main, lambda f: ["--model", f["narrow"]],
        ["--model", "narrow.state", "does not fit LunaModel", "of another shape"]),
    "batching --cls-model evil": (batching_server.main,
                                  lambda f: ["--cls-model", f["evil"], "--no-image"],
                                  ["--cls-model", "evil.pt"]),
    "batching --cyclegan-weights evil": (
        batching_server.main, lambda f: ["--random-weights", "--cyclegan-weights", f["evil"]],
        ["--cyclegan-weights", "evil.pt", "not a readable"]),
    "batching --cyclegan-weights a LunaModel checkpoint": (
        batching_server.main, lambda f: ["--random-weights", "--cyclegan-weights", f["luna"]],
        ["--cyclegan-weights", "does not fit ResNetGenerator", "none of its 48 tensors",
         "holds 23 others (tail_batchnorm.weight, tail_batchnorm.bias, "
         "tail_batchnorm.running_mean and 20 more)"]),
    "batching --exported text": (batching_server.main,
                                 lambda f: ["--exported", f["text"], "--no-image"],
                                 ["--exported", "text.pt", "not a torch.export .pt2 file"]),
    "batching --jit text": (batching_server.main, lambda f: ["--jit", f["text"], "--no-image"],
                            ["--jit", "text.pt", "not a TorchScript file"]),
    "batching --cyclegan-exported a folder": (
        batching_server.main, lambda f: ["--random-weights", "--cyclegan-exported", f["out"]],
        ["--cyclegan-exported", "a folder"]),
    "jit_intro --model evil": (jit_intro.main,
                               lambda f: ["--model", f["evil"], "--out", f["out"] / "sub"],
                               ["--model", "evil.pt"]),
    "export_onnx --model text": (export_onnx.main,
                                 lambda f: ["--model", f["text"], "--out", f["out"] / "sub"],
                                 ["--model", "text.pt", "not a readable"]),
    "export_aoti --model narrower": (export_aoti.main,
                                     lambda f: ["--model", f["narrow"], "--out", f["out"] / "sub"],
                                     ["does not fit LunaModel"]),
    "export_jit --weights evil": (export_jit.main,
                                  lambda f: ["--weights", f["evil"], "--out", f["out"] / "sub"],
                                  ["--weights", "evil.pt", "not a readable"]),
    "export_jit --weights a LunaModel checkpoint": (
        export_jit.main, lambda f: ["--weights", f["luna"], "--out", f["out"] / "sub"],
        ["does not fit ResNetGenerator", "none of its 48 tensors"]),
    "export_mobile --cls-model evil": (
        export_mobile.main, lambda f: ["--cls-model", f["evil"], "--out", f["out"] / "sub"],
        ["--cls-model", "evil.pt"]),
    "latency --cls-model evil": (latency.main, lambda f: ["--cls-model", f["evil"]],
                                 ["--cls-model", "evil.pt"]),
    "latency --seg-model a classifier": (latency.main, lambda f: ["--seg-model", f["luna"]],
                                         ["--seg-model", "LunaModel"]),
    "cls_client, an evil example": (cls_client.main, lambda f: ["--data-dir", f["data"]],
                                    ["cls_val_example.pt", "not a readable"]),
    "jit_intro, an evil example": (jit_intro.main,
                                   lambda f: ["--random-weights", "--data-dir", f["data"],
                                              "--out", f["out"] / "sub"],
                                   ["cls_val_example.pt", "not a readable"]),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_model_files_are_one_line_and_run_no_code(case, files, capsys):
    main, argv, words = FILE_CASES[case]
    status, err = run_entry(main, argv(files), capsys)
    assert_one_line(status, err, *words)
    assert not files["marker"].exists()                 # the pickle's code never ran
    assert files_under(files["out"]) == []              # and nothing was written
    assert not (files["out"] / "sub").exists()


# class 4: the output folder is a file
OUT_CASES = {   # name: (main, argv given the path of a file)
    "jit_intro": (jit_intro.main, lambda p: ["--random-weights", "--out", p]),
    "export_onnx": (export_onnx.main, lambda p: ["--random-weights", "--out", p]),
    "export_aoti": (export_aoti.main, lambda p: ["--random-weights", "--out", p]),
    "export_jit": (export_jit.main, lambda p: ["--out", p]),
    "export_mobile": (export_mobile.main, lambda p: ["--out", p]),
    "export_jit, a folder under a file": (export_jit.main, lambda p: ["--out", p / "sub"]),
    "latency --out": (latency.main, lambda p: ["--out", p]),
    "latency --json": (latency.main, lambda p: ["--json", p / "lat.json"]),
}


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_an_output_folder_that_is_a_file_is_one_line_before_any_work(case, files, capsys,
                                                                     monkeypatch):
    main, argv = OUT_CASES[case]
    for module, name in ((export_aoti, "export_and_compile"), (latency, "run_all"),
                         (jit_intro, "trace_vs_script"), (export_onnx, "export_luna"),
                         (export_jit, "export_generator"), (export_mobile, "compare_executorch"),
                         (export_mobile, "save_lite")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("work before the check"))
    before = files_under(files["tmp"])
    status, err = run_entry(main, argv(files["a_file"]), capsys)
    assert_one_line(status, err, "a-file")
    assert files_under(files["tmp"]) == before and files["a_file"].read_text() == "in the way"


# class 8: flags checked before the long work
FLAG_CASES = {   # name: (main, argv, words on the last stderr line)
    "flask --port 70000": (flask_server.main, ["--random-weights", "--port", "70000"],
                           "--port: 70000 is not a port number"),
    "flask --max-bytes 0": (flask_server.main, ["--random-weights", "--max-bytes", "0"],
                            "--max-bytes"),
    "batching --image-size 30": (batching_server.main, ["--image-size", "30"],
                                 "--image-size 30: must be a multiple of 4"),
    "batching --timeout-s 0": (batching_server.main, ["--timeout-s", "0"], "--timeout-s"),
    "batching --max-wait-ms nan": (batching_server.main, ["--max-wait-ms", "nan"],
                                   "--max-wait-ms"),
    "benchmark --clients 1,x": (benchmark.main, ["--clients", "1,x"], "--clients"),
    "benchmark --clients 0": (benchmark.main, ["--clients", "0"], "--clients"),
    "load_test --requests 0": (load_test.main, ["--requests", "0"], "--requests"),
    "load_test --seconds -1": (load_test.main, ["--seconds", "-1"], "--seconds"),
    "latency --threads 0": (latency.main, ["--threads", "0"], "--threads"),
    "export_jit --ngf 0": (export_jit.main, ["--ngf", "0"], "--ngf"),
    "cls_client --timeout -1": (cls_client.main, ["--timeout", "-1"], "--timeout"),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_bad_flags_exit_2_with_the_flag_named(case, capsys):
    main, argv, words = FLAG_CASES[case]
    status, err = run_entry(main, argv, capsys)
    assert status == 2 and "Traceback" not in err
    assert words in err.strip().splitlines()[-1], err


LATE_CASES = {   # name: (main, argv from the files fixture, what must not have started, words)
    "benchmark, a device that is absent": (benchmark.main, lambda f: ["--device", "cuda:7"],
                                           (benchmark, "start_server"), "cuda:7"),
    "batching, bad generator weights": (
        batching_server.main, lambda f: ["--random-weights", "--cyclegan-weights", f["text"]],
        (batching_server, "serve"), "--cyclegan-weights"),
    "load_test --image a folder": (load_test.main,
                                   lambda f: ["--url", "http://127.0.0.1:1/image", "--image",
                                              f["out"]],
                                   (load_test, "run_load"), "--image"),
    "latency, a bad second checkpoint": (latency.main,
                                         lambda f: ["--seg-model", f["text"]],
                                         (latency, "run_all"), "--seg-model"),
}


@pytest.mark.parametrize("case", list(LATE_CASES))
def test_inputs_are_checked_before_the_long_work(case, files, capsys, monkeypatch):
    main, argv, (module, name), words = LATE_CASES[case]
    monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail(f"{name} before the check"))
    status, err = run_entry(main, argv(files), capsys)
    assert_one_line(status, err, words)


FULL_DISK = {   # name: (argv, the file it would write)
    "jit_intro": (["-m", "ch15_deploy.jit_intro", "--random-weights"], "luna_traced.pt"),
    "export_onnx": (["-m", "ch15_deploy.export_onnx", "--random-weights"], "luna.onnx"),
}


@pytest.mark.parametrize("case", list(FULL_DISK))
def test_a_full_disk_leaves_nothing_behind(case, tmp_path):
    """A file-size limit of 64 KiB stands in for a full disk (SIGXFSZ ignored: EFBIG)."""
    argv, name = FULL_DISK[case]
    limit = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, "
             "signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "
             "sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__')")
    module = argv[1]
    done = subprocess.run([sys.executable, "-c", limit, module, *argv[2:], "--out",
                           str(tmp_path), "--data-dir", str(tmp_path / "no-data")],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(tmp_path / name) in last and "cannot write" in last
    assert files_under(tmp_path) == []                  # no half file, no temporary


def test_a_bad_exported_file_gets_no_library_traceback_in_a_real_process(tmp_path):
    """torch.export.load logs a traceback through torch's own logging handler (which in-process
    capture would not see) before it raises: the server keeps that logger quiet."""
    fake = tmp_path / "fake.pt2"
    with zipfile.ZipFile(fake, "w") as z:                   # a zip, but not a torch archive
        z.writestr("archive/x", "y")
    done = subprocess.run([sys.executable, "-m", "ch15_deploy.batching_server", "--exported",
                           str(fake), "--no-image"], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: --exported {fake}: not a torch.export .pt2 file " \
                          "(RuntimeError)\n"
