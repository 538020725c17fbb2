"""run_cli under signals and a closed stdout: SIGTERM handled like Ctrl-C (one line, exit 143 or
130, the atomic writer's temporary removed), DataLoader workers quiet whichever process the signal
reaches, `Interrupted` details.

The children reset SIGINT to Python's default first: a test run started in the background
(`pytest &` in a script) hands them SIGINT ignored, as it would to a trainer started so."""
import contextlib
import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest

from common import errors
from common.data import REPO_ROOT
from common.errors import DataError, Interrupted, Terminated, run_cli, sigterm_as_interrupt

# Writes half of out.txt through the atomic writer, says "ready" and waits to be stopped; with
# "detail", the way a trainer says where its last checkpoint is.
WRITER = textwrap.dedent("""
    import signal, sys, time
    from common.errors import Interrupted, run_cli
    from common.files import atomic_open

    def main(argv):
        folder, mode = argv
        try:
            with atomic_open(folder + "/out.txt") as f:
                f.write("half")
                f.flush()
                print("ready", flush=True)
                time.sleep(60)
        except KeyboardInterrupt:
            if mode == "detail":
                raise Interrupted("the last checkpoint is c.state (resume with --resume "
                                  "c.state)") from None
            raise

    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_cli(main, sys.argv[1:])
""")

# A DataLoader with two workers (or none) fetching slowly; "ready PID" once batches flow, PID
# the process that made the third batch (a worker's, or the main process'). With "broken", item
# 5 raises a DataError inside a worker instead.
LOADER = textwrap.dedent("""
    import faulthandler, os, signal, sys, time
    import torch
    from torch.utils.data import DataLoader, Dataset

    faulthandler.register(signal.SIGUSR1, all_threads=True)     # finish() asks on a hang
    from common.errors import DataError, run_cli

    class Slow(Dataset):
        def __init__(self, broken):
            self.broken = broken

        def __len__(self):
            return 10_000

        def __getitem__(self, i):
            if self.broken and i == 5:
                raise DataError(f"item {i}: broken on purpose")
            time.sleep(0.02)
            return torch.full((3,), os.getpid())

    def main(argv):
        workers, mode = int(argv[0]), argv[1]
        for i, batch in enumerate(DataLoader(Slow(mode == "broken"), batch_size=2,
                                             num_workers=workers)):
            if i == 2:
                print("ready", int(batch[0, 0]), flush=True)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_cli(main, sys.argv[1:])
""")


def start(tmp_path, code, *args):
    """The script `code` running in its own process group (a scheduler's job, a terminal's
    foreground job), once it has said "ready" (and what follows it on that line)."""
    script = tmp_path / "child.py"
    script.write_text(code)
    process = subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    line = process.stdout.readline()
    if line.split()[:1] != ["ready"]:
        process.kill()
        pytest.fail(f"the child did not start: {line!r} {process.communicate()[1][-2000:]}")
    process.said = line.split()[1:]
    return process


def finish(process):
    """(exit status, stderr) once it has ended; it must end within a minute. One that has not
    fails the test with the Python stacks of its group's processes (a child that registered
    faulthandler for SIGUSR1 prints them), so that a hang says where it hangs."""
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGUSR1)
        try:
            _, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            _, err = process.communicate()
        pytest.fail(f"the child did not end within 60 s; its stacks:\n{err[-6000:]}")
    return process.returncode, err


@pytest.mark.parametrize("sig, mode, status, line", [
    (signal.SIGTERM, "plain", 143, "interrupted (SIGTERM)"),
    (signal.SIGINT, "plain", 130, "interrupted"),
    (signal.SIGTERM, "detail", 143, "interrupted (SIGTERM); the last checkpoint is c.state "
                                    "(resume with --resume c.state)"),
    (signal.SIGINT, "detail", 130, "interrupted; the last checkpoint is c.state (resume with "
                                   "--resume c.state)"),
])
def test_a_signal_mid_write_is_one_line_and_leaves_no_temporary(tmp_path, sig, mode, status,
                                                                 line):
    process = start(tmp_path, WRITER, tmp_path, mode)
    os.kill(process.pid, sig)
    assert finish(process) == (status, line + "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py"]   # no out.txt, no .tmp


@pytest.mark.parametrize("workers, sig, to, status, line", [
    (2, signal.SIGTERM, "group", 143, "interrupted (SIGTERM)"),    # docker stop, a scheduler
    (2, signal.SIGTERM, "parent", 143, "interrupted (SIGTERM)"),   # kill PID
    (2, signal.SIGTERM, "worker", 143, "interrupted (SIGTERM)"),   # kill a worker's PID
    (2, signal.SIGINT, "group", 130, "interrupted"),               # Ctrl-C in a terminal
    (2, signal.SIGINT, "parent", 130, "interrupted"),              # kill -INT PID
    (2, signal.SIGINT, "worker", 130, "interrupted"),              # kill -INT a worker's PID
    (0, signal.SIGTERM, "group", 143, "interrupted (SIGTERM)"),
], ids=["sigterm-group", "sigterm-parent", "sigterm-worker", "ctrl-c", "sigint-parent",
        "sigint-worker", "no-workers"])
def test_dataloader_workers_add_no_traceback(tmp_path, workers, sig, to, status, line):
    process = start(tmp_path, LOADER, workers, "plain")
    (worker,) = map(int, process.said)
    assert (worker != process.pid) == (workers > 0)       # a batch made by a worker process
    if to == "group":
        os.killpg(process.pid, sig)
    else:
        os.kill(worker if to == "worker" else process.pid, sig)
    assert finish(process) == (status, line + "\n")


class Loader:
    """A stand-in for torch's loader iterator, whose frame is in its error's traceback: it
    found its worker dead and reaped it, and says only that it "exited unexpectedly" (what
    torch raises when a worker dies while it hands over a batch)."""

    def __init__(self, pid, exitcode):
        self._workers = [types.SimpleNamespace(pid=pid, exitcode=exitcode)]

    def next(self):
        raise RuntimeError(f"DataLoader worker (pid(s) {self._workers[0].pid}) exited "
                           "unexpectedly") from ConnectionResetError(104, "Connection reset")


@pytest.mark.parametrize("exitcode, status, line", [
    (-signal.SIGTERM, 143, "interrupted (SIGTERM)\n"),
    (-signal.SIGINT, 130, "interrupted\n"),
    (2, 2, ""),                          # the worker said its own line (common.ct's SIGBUS guard)
])
def test_a_worker_that_died_mid_handover_is_told_by_its_exit_code(capsys, exitcode, status,
                                                                  line):
    with pytest.raises(SystemExit) as caught:
        run_cli(lambda argv: Loader(4242, exitcode).next(), [])
    assert (caught.value.code, capsys.readouterr().err) == (status, line)


def test_a_worker_that_died_otherwise_is_not_hidden():
    with pytest.raises(RuntimeError, match=r"\(pid\(s\) 4242\) exited unexpectedly"):
        run_cli(lambda argv: Loader(4242, -signal.SIGKILL).next(), [])


def test_a_worker_death_reported_while_the_run_ends_adds_nothing(monkeypatch, capsys):
    """torch's SIGCHLD handler raises its report at whatever call comes next; one that comes
    while run_cli ends the run (a worker killed while it handed over a batch: the main process
    meets the broken connection first, the worker's death a moment later) is dropped, and the
    handler is back afterwards."""
    def report(signum, frame):                      # what torch's handler raises
        raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. ")

    def the_death_comes_now(wait_s):                # while run_cli asks what became of it
        os.kill(os.getpid(), signal.SIGCHLD)
        return RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. ")

    def main(argv):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(errors, "_failed_worker", the_death_comes_now)
    previous = signal.signal(signal.SIGCHLD, report)
    try:
        with pytest.raises(SystemExit) as caught:
            run_cli(main, [])
        assert signal.getsignal(signal.SIGCHLD) is report
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert (caught.value.code, capsys.readouterr().err) == (143, "interrupted (SIGTERM)\n")


class LostPeer(DataError):
    """A DataError whose message, read as run_cli says it, brings the SIGTERM a torchrun agent
    sends the survivor of a killed process: the signal lands in the middle of the ending."""

    def __str__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return "rank 0: lost another process of the run (Connection closed by peer)"


def test_a_sigterm_while_the_run_says_how_it_ended_adds_no_traceback(capsys):
    def main(argv):
        raise LostPeer()

    before, ended = signal.getsignal(signal.SIGTERM), None
    try:
        run_cli(main, [])
    except BaseException as e:          # a Terminated escaping run_cli must fail, not abort
        ended = e
    assert type(ended) is SystemExit and ended.code == 2
    assert capsys.readouterr().err == (
        "error: rank 0: lost another process of the run (Connection closed by peer)\n")
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_that_comes_as_a_condition_takes_its_lock_waits_for_the_with_block():
    """The hang a SIGTERM once caused: handled in Condition.__enter__ (threading.py) just as it
    took its lock, the raise left the lock taken, and the DataLoader's shutdown then waited for
    it forever. The signal is raised once the `with` has begun, so its exit releases the lock."""
    released = []
    condition, before = signal_on_taking(released), signal.getsignal(signal.SIGALRM)
    with pytest.raises(Terminated):
        with sigterm_as_interrupt([]):
            with condition:
                for _ in range(6000):
                    time.sleep(0.01)                 # where the deferred signal is raised
    assert released == [Terminated]
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def signal_on_taking(released):
    """A threading.Condition whose lock, as it is taken, sends this process SIGTERM: handled in
    Condition.__enter__, in threading.py. `released` gets the exception type its exit saw."""
    lock = types.SimpleNamespace(acquire=None, release=None,
                                 __enter__=functools.partial(signal.raise_signal, signal.SIGTERM),
                                 __exit__=lambda *exc: released.append(exc[0]))
    return threading.Condition(lock)


# Lock code that is slow to take its lock: a function compiled as threading.py's, so that
# run_cli takes a signal handled in it for one in Python's lock plumbing.
SLOW_TAKING = compile(textwrap.dedent("""
    import signal, time

    def take():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0.1)                 # about 10 tries at this one place, fewer than a wait's
"""), threading.__file__, "exec")


def test_a_few_tries_at_one_place_are_not_yet_a_wait():
    """Tries that find the thread at the same place a few times (a slow moment, two handlers
    in one pass) do not raise there: only a thread that stays put for STILL_TRIES is waiting."""
    scope, released = {}, []
    exec(SLOW_TAKING, scope)
    lock = types.SimpleNamespace(acquire=None, release=None, __enter__=scope["take"],
                                 __exit__=lambda *exc: released.append(exc[0]))
    with pytest.raises(Terminated):
        with sigterm_as_interrupt([]):
            with threading.Condition(lock):
                for _ in range(6000):
                    time.sleep(0.01)
    assert released == [Terminated]


def test_a_run_that_ends_while_a_signal_is_held_back_ends_as_it_would_have(monkeypatch):
    """The signal came in lock code and the block ended before the next try: nothing raised,
    and SIGALRM's handler and the program's own alarm are as they were (less the time gone)."""
    monkeypatch.setattr(errors, "RETRY_S", 600.0)       # the next try would come after the end
    released, received = [], []

    def own_alarm(signum, frame):                      # the program's: never due in the test
        raise AssertionError("the program's alarm went off")

    before = signal.signal(signal.SIGALRM, own_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 500.0)
        with sigterm_as_interrupt(received):
            with signal_on_taking(released):
                pass
        left_s, interval_s = signal.getitimer(signal.ITIMER_REAL)
        assert received == [signal.SIGTERM] and released == [None]
        assert signal.getsignal(signal.SIGALRM) is own_alarm
        assert 400.0 < left_s <= 500.0 and interval_s == 0.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_a_signal_that_comes_while_the_main_thread_waits_in_lock_code_is_raised_there():
    """A main thread blocked in threading.py (a join, a wait) is not at a lock half taken: it
    does not move between two tries, and the signal is raised there instead of at the end of
    the wait."""
    main = threading.main_thread().ident

    def send_once_waiting():
        while sys._current_frames()[main].f_code is not threading.Condition.wait.__code__:
            time.sleep(0.001)
        signal.pthread_kill(main, signal.SIGTERM)

    sender, waited = threading.Thread(target=send_once_waiting), None
    with pytest.raises(Terminated):
        with sigterm_as_interrupt([]):
            sender.start()
            waited = threading.Event().wait(60)
    sender.join()
    assert waited is None


def test_a_dataerror_in_a_dataloader_worker_is_its_own_one_line(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(LOADER)
    result = subprocess.run([sys.executable, str(script), "2", "broken"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert (result.returncode, result.stderr) == (2, "error: item 5: broken on purpose\n")


def test_run_cli_puts_back_the_sigterm_handler_and_stdout(capsys):
    before_handler, before_stdout = signal.getsignal(signal.SIGTERM), sys.stdout
    seen = []

    def main(argv):
        seen.append(signal.getsignal(signal.SIGTERM))
        os.kill(os.getpid(), signal.SIGTERM)
        seen.append("not reached")          # the handler raises at the next bytecode

    with pytest.raises(SystemExit) as caught:
        run_cli(main, [])
    assert caught.value.code == 143 and capsys.readouterr().err == "interrupted (SIGTERM)\n"
    assert len(seen) == 1 and seen[0] is not before_handler
    assert signal.getsignal(signal.SIGTERM) is before_handler and sys.stdout is before_stdout


def test_interruptions_are_keyboard_interrupts_and_dataerrors_are_not():
    assert issubclass(Terminated, KeyboardInterrupt) and issubclass(Interrupted,
                                                                     KeyboardInterrupt)
    assert not issubclass(DataError, KeyboardInterrupt)


def test_files_asked_for_are_written_after_stdout_closes(tmp_path):
    """The reader goes away after one line: the rest of the run still writes its file."""
    code = textwrap.dedent(f"""
        import sys
        from common.errors import run_cli
        from common.files import write_text

        def main(argv):
            print("first", flush=True)
            sys.stdin.readline()                  # until the reader has closed the pipe
            for i in range(10_000):
                print("more", i, flush=True)      # each one meets the closed pipe
            write_text({str(tmp_path / "result.txt")!r}, "done")

        run_cli(main, [])
    """)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert process.stdout.readline() == "first\n"
    process.stdout.close()
    process.stdin.write("go\n")
    process.stdin.close()
    assert (process.wait(timeout=60), process.stderr.read()) == (0, "")
    assert (tmp_path / "result.txt").read_text() == "done"
