"""Faults while chapter 10's scripts run: train_cls.py hit while it writes a checkpoint (SIGTERM,
Ctrl-C, kill -9: the exit status, the one line, no temporary file left, a resume that gives the
uninterrupted run's metrics), the synthetic sample killed or out of disk, and check_data on
broken CSVs."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from ch10_luna import check_data
from ch10_luna.dsets import find_luna, read_candidates
from ch10_luna.synthetic import generate_sample
from ch10_luna.train_cls import main
from common.data import REPO_ROOT
from common.errors import DataError
from tests.common.cli import run_in_subprocess
from tests.helpers import assert_same_rows, read_jsonl

SCRIPT = str(REPO_ROOT / "ch10_luna" / "train_cls.py")

# On PYTHONPATH as sitecustomize: the Nth os.replace onto a file named $SLOW_REPLACE_NAME
# writes the temporary's path to $SLOW_REPLACE_MARK (whole, by a rename: the test acts as soon
# as the mark exists) and waits a minute first, so the test can stop the process while the
# temporary exists. The product code has no such hook.
SLOW_REPLACE = textwrap.dedent("""
    import os, signal, time
    signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, even when the
                                                               # suite runs in the background
    name, nth = os.environ["SLOW_REPLACE_NAME"].rsplit(":", 1)
    replace, seen = os.replace, []

    def slow_replace(src, dst, **kwargs):
        if os.path.basename(dst) == name:
            seen.append(dst)
            if len(seen) == int(nth):
                mark = os.environ["SLOW_REPLACE_MARK"]
                with open(mark + ".part", "w") as f:
                    f.write(str(src))
                replace(mark + ".part", mark)
                time.sleep(60)
        return replace(src, dst, **kwargs)

    os.replace = slow_replace
""")
LAST = "cls_dlwpt.last.state"


def run_args(luna, run_dir):
    """One epoch of 4 batches, a checkpoint after batches 1, 2 and 3."""
    return ["--data-dir", str(luna), "--run-dir", str(run_dir), "--epochs", "1",
            "--epoch-size", "32", "--batch-size", "8", "--augmented", "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_luna, tmp_path_factory):
    """The metrics.jsonl rows of the run nothing stopped."""
    run = tmp_path_factory.mktemp("whole") / "run"
    main(run_args(tiny_luna, run))
    return read_jsonl(run / "metrics.jsonl")


def stopped_at_second_save(luna, run, tmp_path, sig):
    """train_cls.py stopped by `sig` while it replaces the checkpoint of batch 2 (the one of
    batch 1 on disk): (exit status, stderr, the temporary it was writing)."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SLOW_REPLACE)
    mark = tmp_path / "mark"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(REPO_ROOT)]),
           "SLOW_REPLACE_NAME": f"{LAST}:2", "SLOW_REPLACE_MARK": str(mark)}
    process = subprocess.Popen([sys.executable, SCRIPT, *run_args(luna, run)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not mark.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not mark.exists():
        process.kill()
        pytest.fail(f"no second checkpoint write seen: {process.communicate()[1][-2000:]}")
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err, mark.read_text()


def temporaries(run):
    return [p.name for p in run.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize("sig, status, said", [
    (signal.SIGTERM, 143, "interrupted (SIGTERM)"),
    (signal.SIGKILL, -9, None),
])
def test_stopped_mid_checkpoint_then_resumed_equals_the_uninterrupted_run(
        tiny_luna, tmp_path, uninterrupted, sig, status, said):
    run = tmp_path / "run"
    code, err, temporary = stopped_at_second_save(tiny_luna, run, tmp_path, sig)
    assert code == status, err[-2000:]
    assert "Traceback" not in err
    if said:                                                # and where to resume from
        assert err.splitlines()[-1] == (f"{said}; the last checkpoint is {run / LAST} (resume "
                                        f"with --resume {run / LAST})")
        assert temporaries(run) == []                       # removed on the way out
    else:
        assert temporaries(run) == [os.path.basename(temporary)]    # kill -9: no clean-up
    state = torch.load(run / LAST, weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 1)       # the previous checkpoint, whole
    assert not (run / "metrics.jsonl").exists()
    main(["--resume", str(run / LAST)])
    assert temporaries(run) == []                           # the next writer removed it
    assert_same_rows(uninterrupted, read_jsonl(run / "metrics.jsonl"))
    assert len(read_jsonl(run / "metrics.jsonl")) == len(uninterrupted) == 2


def test_ctrl_c_mid_checkpoint_is_exit_130_and_leaves_no_temporary(tiny_luna, tmp_path):
    run = tmp_path / "run"
    code, err, _ = stopped_at_second_save(tiny_luna, run, tmp_path, signal.SIGINT)
    assert code == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (f"interrupted; the last checkpoint is {run / LAST} (resume "
                                    f"with --resume {run / LAST})")
    assert temporaries(run) == []
    assert torch.load(run / LAST, weights_only=True)["batch"] == 1


# --------------------------------------------------------------------------- the synthetic sample
def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_next_generation_removes_the_folders_of_killed_runs(tmp_path):
    from common.files import _host

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        killed = tmp_path / f".luna.tmp-{dead_pid()}@{_host()}-0a0b0c"
        legacy = tmp_path / f".luna.tmp-{socket.gethostname()}-{dead_pid()}"   # its old name
        working = tmp_path / f".luna.tmp-{live.pid}@{_host()}-0d0e0f"
        for folder in (killed, legacy, working):
            (folder / "subset0").mkdir(parents=True)
            (folder / "subset0" / "x.raw").write_bytes(b"\0" * 1000)
        generate_sample(tmp_path / "luna", n_series=1, seed=3, negatives=(3, 5),
                        progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["luna", working.name])
    finally:
        live.kill()
        live.wait()


def test_sigterm_while_the_sample_is_generated_leaves_nothing(tmp_path):
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "ch10_luna" / "synthetic.py"),
                                "--out", str(tmp_path / "luna"), "--series", "30"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".luna.tmp-*/subset0/*.mhd")) and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert (process.returncode, err) == (143, "interrupted (SIGTERM)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_the_sample_is_generated_says_so(tmp_path):
    out = tmp_path / "luna"
    [(code, err)] = run_in_subprocess([("ch10_luna.synthetic", ["--out", out, "--series", "1"])],
                                      fsize=1_000_000)                # a CT's .raw is ~3 MB
    assert (code, err) == (2, f"error: cannot write the synthetic LUNA sample to {out}: the "
                              "disk is full or the file is over a size limit (File too "
                              "large)\n")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- check_data's CSVs
@pytest.fixture(scope="module")
def two_ct_sample(tmp_path_factory):
    return generate_sample(tmp_path_factory.mktemp("s") / "luna", n_series=2, seed=1,
                           n_subsets=2, negatives=(3, 5), progress=False)


def first_row(data, column, value):
    """CSV bytes with the first data row's `column` (0-based) replaced by `value`."""
    lines = data.split(b"\n")
    fields = lines[1].split(b",")
    lines[1] = b",".join([*fields[:column], value, *fields[column + 1:]])
    return b"\n".join(lines)


def edited(sample, tmp_path, name, edit):
    folder = tmp_path / "luna"
    shutil.copytree(sample, folder)
    (folder / name).write_bytes(edit((folder / name).read_bytes()))
    return folder


@pytest.mark.parametrize("name, edit, error", [
    ("annotations_with_malignancy.csv", lambda b: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
     "not UTF-8 text (byte 0x89 at offset 0"),
    ("annotations_with_malignancy.csv", lambda b: b[:200] + b"\xff\xfe" + b[200:],
     "not UTF-8 text (byte 0xff"),
    ("annotations_with_malignancy.csv", lambda b: b.replace(b",True,", b",yes,", 1),
     "mal_bool is 'yes', expected True or False"),
    ("annotations_with_malignancy.csv", lambda b: first_row(b, 1, b"nan"),
     "line 2: coordX is 'nan', not a finite number"),
    ("annotations_with_malignancy.csv", lambda b: first_row(b, 4, b"inf"),
     "line 2: diameter_mm is 'inf', not a finite number"),
], ids=["binary", "a-byte-not-utf8", "mal_bool", "nan", "inf"])
def test_check_data_reports_a_broken_chapter_14_csv(two_ct_sample, tmp_path, name, edit, error):
    folder = edited(two_ct_sample, tmp_path, name, edit)
    report = check_data.check_luna(folder)
    entry = report["csvs"][name]
    assert entry["status"] == "unreadable" and error in entry["error"], entry
    assert report["usable"]                                 # training does without it
    assert report["verdict"].endswith(f"; but {name} is UNREADABLE (see above; chapter 14 "
                                      "needs it): delete the folder to regenerate the sample")
    assert f"{name:32s} UNREADABLE: {folder / name}" in "\n".join(
        check_data.format_report(report))


def test_check_data_refuses_a_nan_coordinate_as_the_trainer_does(two_ct_sample, tmp_path):
    folder = edited(two_ct_sample, tmp_path, "candidates.csv", lambda b: first_row(b, 1, b"nan"))
    report = check_data.check_luna(folder)
    assert report["csvs"]["candidates.csv"]["error"].endswith(
        "candidates.csv, line 2: coordX is 'nan', not a finite number")
    assert not report["usable"]
    with pytest.raises(DataError, match="coordX is 'nan', not a finite number"):
        read_candidates(find_luna(folder))
