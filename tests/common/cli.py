"""Running an entry point the way a user does, for the bad-input tests of every chapter.

`run_main(main, argv, capsys)` calls `run_cli(main, argv)` in-process and returns
(exit status, stderr); `assert_one_error_line` checks the project's rule for bad input: exit 2,
exactly one line on stderr that names what is wrong, no traceback. `run_in_subprocess` runs a
table of calls in one child process under a file-size limit (a full disk) or inside a
read-only bind mount (root ignores chmod), since neither can be set up in pytest's process.
"""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common.data import REPO_ROOT
from common.errors import run_cli


def run_main(main, argv, capsys):
    """(exit status, stderr) of `run_cli(main, argv)`: 0 when main returned."""
    capsys.readouterr()
    try:
        run_cli(main, [str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_one_error_line(code, err, *words):
    """Exit 2 and one `error: ...` line holding every one of `words`; never a traceback."""
    assert code == 2, f"exit {code}, stderr {err[-500:]!r}"
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-500:]
    for word in words:
        assert str(word) in errors[0], f"{word!r} not in {errors[0]!r}"
    return errors[0]


def files_under(folder):
    """Every file and folder below `folder` (relative, sorted); [] when it does not exist."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


CHILD = textwrap.dedent("""
    import contextlib, importlib, io, json, resource, sys
    from common.errors import run_cli
    fsize, cases = json.loads(sys.argv[1])
    if fsize:                   # writes past this many bytes fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.getrlimit(
            resource.RLIMIT_FSIZE)[1]))
    results = []
    for module, argv in cases:
        err = io.StringIO()
        code = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                run_cli(importlib.import_module(module).main, argv)
            except SystemExit as e:
                code = e.code
            except BaseException as e:      # reported, so the test shows what escaped
                code = f"{type(e).__name__}: {e}"
        results.append([code, err.getvalue()])
    print("RESULTS" + json.dumps(results))
""")


def run_in_subprocess(cases, fsize=None, read_only=None, timeout=300):
    """[(exit status, stderr)] of each (module, argv) run in one child process, with writes
    limited to `fsize` bytes, or with the folder `read_only` bind-mounted read-only."""
    payload = json.dumps([fsize, [[m, [str(a) for a in argv]] for m, argv in cases]])
    command = [sys.executable, "-c", CHILD, payload]
    if read_only is not None:
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare(1) for a read-only mount (root ignores chmod)")
        folder = str(read_only)
        command = ["unshare", "-rm", "sh", "-c",
                   'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"',
                   folder, *command]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=timeout)
    if read_only is not None and "RESULTS" not in result.stdout and "mount" in result.stderr:
        pytest.skip(f"cannot make a read-only mount here: {result.stderr.strip()[:200]}")
    assert "RESULTS" in result.stdout, result.stderr[-2000:]
    return [tuple(r) for r in json.loads(result.stdout.split("RESULTS", 1)[1])]
