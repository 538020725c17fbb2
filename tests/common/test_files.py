"""common/files.py and common/errors.py: atomic outputs, code-free torch reads, one-line errors."""
import errno
import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from common.errors import DataError, one_line, run_cli
from common.files import (
    append_jsonl,
    atomic_open,
    atomic_path,
    check_writable,
    output_dir,
    read_torch,
    remove_stale_temporaries,
    save_torch,
    write_bytes,
    write_failure,
    write_json,
    write_text,
)


class Marker:
    """Unpickling this creates `path`: the test of code run from a data file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("new, half")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_the_temporary_keeps_the_suffix_and_lands_in_the_target_folder(tmp_path):
    with atomic_path(tmp_path / "sub" / "fig.png") as tmp:
        assert tmp.parent == tmp_path / "sub" and tmp.suffix == ".png"
        tmp.write_bytes(b"png")
    assert (tmp_path / "sub" / "fig.png").read_bytes() == b"png"


def test_an_output_folder_that_is_a_file_is_one_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match="a file is in the way"):
        output_dir(tmp_path / "f")
    with pytest.raises(DataError, match="part of the path is a file"):
        write_text(tmp_path / "f" / "sub" / "x.txt", "x")


def test_json_is_valid_or_not_written(tmp_path):
    with pytest.raises(DataError, match="NaN or infinite"):
        write_json(tmp_path / "a.json", {"p": float("nan")})
    assert not list(tmp_path.iterdir())
    assert json.loads(write_json(tmp_path / "b.json", {"p": 0.5}).read_text()) == {"p": 0.5}


def test_append_jsonl_keeps_every_row(tmp_path):
    for epoch in (1, 2, 3):
        append_jsonl(tmp_path / "m.jsonl", {"epoch": epoch})
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rows == [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]


def test_read_torch_round_trip_and_every_bad_file(tmp_path):
    path = save_torch({"w": torch.arange(3)}, tmp_path / "ok.pt")
    assert torch.equal(read_torch(path)["w"], torch.arange(3))
    marker = tmp_path / "marker"
    torch.save({"x": Marker(str(marker))}, tmp_path / "evil.pt")
    (tmp_path / "text.pt").write_text("<html>not found</html>")
    (tmp_path / "short.pt").write_bytes(path.read_bytes()[:100])
    (tmp_path / "folder.pt").mkdir()
    for name, message in (("evil.pt", "holds Python objects"), ("text.pt", "not a readable"),
                          ("short.pt", "not a readable"), ("folder.pt", "a folder"),
                          ("missing.pt", "no such file")):
        with pytest.raises(DataError, match=message) as caught:
            read_torch(tmp_path / name, "--load")
        assert str(caught.value).startswith(f"--load {tmp_path / name}:")
        assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_plain_pickle_would_have_run_the_code(tmp_path):
    """The marker test above can fail: unpickling the same object does create the file."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Marker(str(marker)))).close()
    assert marker.exists()


def test_one_line_folds_and_cuts():
    assert one_line("a\n  b\tc") == "a b c"
    assert one_line("2-LUNG 3.0  B70f-04083") == "2-LUNG 3.0  B70f-04083"   # a book folder
    assert len(one_line("x" * 1000)) == 300 and one_line("x" * 1000).endswith("...")


def test_run_cli_prints_one_line_and_exits_2(capsys):
    def main(argv):
        raise DataError("first line\nsecond line")
    with pytest.raises(SystemExit) as caught:
        run_cli(main, [])
    assert caught.value.code == 2
    assert capsys.readouterr().err == "error: first line second line\n"


def test_a_full_disk_leaves_no_file_and_one_line(tmp_path):
    """RLIMIT_FSIZE makes writes past 4 KiB fail (EFBIG), as a full disk does (ENOSPC)."""
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        from common.errors import run_cli
        from common.files import save_torch
        import torch
        run_cli(lambda argv: save_torch({{"w": torch.zeros(10_000)}}, {str(tmp_path / "c.pt")!r}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr == (f"error: checkpoint {tmp_path / 'c.pt'}: cannot write: the disk is "
                             "full or the file is over a size limit (File too large)\n")
    assert not list(tmp_path.iterdir())



def test_check_writable_creates_nothing_and_names_the_obstacle(tmp_path):
    assert check_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match="a file is in the way"):
        check_writable(tmp_path / "f", "--run-dir")
    with pytest.raises(DataError, match=r"^--out .*: part of the path is a file"):
        check_writable(tmp_path / "f" / "x", "--out")


def test_a_reader_that_stops_reading_gets_no_traceback():
    script = ("from common.errors import run_cli\n"
              "def main(argv):\n"
              "    for i in range(200_000):\n"
              "        print('line', i)\n"
              "run_cli(main)\n")
    result = subprocess.run(f"{sys.executable} -c \"{script}\" | head -1", shell=True,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == "line 0\n"
    assert result.stderr == ""


def test_a_bad_flag_is_one_line_naming_the_script_and_the_flag(capsys):
    import argparse

    def main(argv):
        p = argparse.ArgumentParser(prog="demo.py")
        p.add_argument("--epochs", type=int, default=1)
        return p.parse_args(argv)

    with pytest.raises(SystemExit) as caught:
        run_cli(main, ["--epochs", "x"])
    assert caught.value.code == 2
    assert capsys.readouterr().err == ("error: demo.py: argument --epochs: invalid int value: "
                                       "'x' (see --help)\n")
    assert main(["--epochs", "3"]).epochs == 3                   # argparse itself is restored
    with pytest.raises(SystemExit):
        main(["--epochs", "x"])                                  # outside run_cli: its usage


# --------------------------------------------------------------------------- stale temporaries
def dead_pid():
    """The pid of a process that has ended (and is reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("name, age_s, removed", [
    (".c.tmp-{dead}@{host}-a1b2c3.state", 0, True),      # killed here: gone
    (".c.tmp-{live}@{host}-a1b2c3.state", 0, False),     # a writer still at work
    (".c.tmp-{me}@{host}-a1b2c3.state", 0, False),       # this process's own
    (".c.tmp-{dead}@elsewhere-a1b2c3.state", 0, False),  # another machine's: its pid means
    (".c.tmp-{dead}@elsewhere-a1b2c3.state", 7200, True),  # nothing here, but not for ever
    (".c.tmp-{dead}-a1b2c3.state", 0, True),             # named before the host was in it
    (".d.tmp-{dead}@{host}-a1b2c3.state", 0, False),     # another target's
    (".c.tmp-{dead}@{host}-a1b2c3.pt", 0, False),        # another suffix: another target
    (".c.tmp-{dead}@{host}-a1b2c3", 0, False),
    ("c.tmp-{dead}@{host}-a1b2c3.state", 0, False),      # not hidden: not one of ours
])
def test_the_next_writer_removes_only_stale_temporaries(tmp_path, name, age_s, removed):
    from common.files import _host

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stray = tmp_path / name.format(dead=dead_pid(), live=live.pid, me=os.getpid(),
                                       host=_host())
        stray.write_bytes(b"half a checkpoint")
        os.utime(stray, (time.time() - age_s, time.time() - age_s))
        write_bytes(tmp_path / "c.state", b"whole")
        assert stray.exists() != removed
        assert (tmp_path / "c.state").read_bytes() == b"whole"
    finally:
        live.kill()
        live.wait()


def test_a_stale_temporary_folder_goes_too(tmp_path):
    stray = tmp_path / f".luna.tmp-{dead_pid()}@{socket.gethostname()}-00ff00"
    (stray / "subset0").mkdir(parents=True)
    legacy = tmp_path / f".luna.tmp-{socket.gethostname()}-{dead_pid()}"    # the sample's old name
    legacy.mkdir()
    assert sorted(remove_stale_temporaries(tmp_path / "luna")) == sorted([stray, legacy])
    assert not list(tmp_path.iterdir())


def test_kill_9_mid_write_leaves_a_temporary_the_next_writer_removes(tmp_path):
    code = textwrap.dedent(f"""
        import time
        from common.files import atomic_open
        with atomic_open({str(tmp_path / "m.jsonl")!r}) as f:
            f.write("half")
            f.flush()
            print("ready", flush=True)
            time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    process.kill()                                               # SIGKILL: no clean-up runs
    process.wait(timeout=60)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".m.tmp-{process.pid}@")
    append_jsonl(tmp_path / "m.jsonl", {"epoch": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, ": the disk is full (No space left on device)"),
    (errno.EFBIG, ": the disk is full or the file is over a size limit (File too large)"),
    (errno.EDQUOT, ": the disk quota is used up (Disk quota exceeded)"),
    (errno.EROFS, " (Read-only file system)"),
])
def test_a_failed_write_says_when_the_disk_is_the_cause(code, words):
    assert write_failure(OSError(code, os.strerror(code))) == words
