"""The project's error for bad input, and the wrapper that turns it into one line and exit 2.

    if __name__ == "__main__":
        run_cli(main)

run_cli also ends an interrupted run in one line: Ctrl-C exits 130 and SIGTERM (what a job
scheduler, `kill` and `docker stop` send) exits 143, whether the signal reaches the main process,
its process group or one DataLoader worker. Both reach `main` as a KeyboardInterrupt raised in
the main thread, so `with` blocks and the atomic writer clean up on the way out. A `main` that
can say more (where its last checkpoint is) catches KeyboardInterrupt and raises `Interrupted`
with that detail. A reader that stops reading stdout (`script | head -1`) does not stop the
run: the files its flags ask for are still written.
"""
import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import time

MAX_MESSAGE = 300                   # characters: one readable line, however long the cause
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}     # 128 + the signal, as shells report it
RETRY_S = 0.01                      # seconds between tries to raise a signal held back
STILL_TRIES = 20                    # tries at one place in a row: the thread waits there


class DataError(Exception):
    """Missing or malformed input: a script prints it as one line and exits with status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while run_cli runs. A KeyboardInterrupt, so every
    `except KeyboardInterrupt` and `finally` treats it as Ctrl-C, DataLoader workers included."""


class Interrupted(KeyboardInterrupt):
    """Raised by a `main` that caught an interruption and can say more; run_cli prints
    `interrupted; <detail>` (`interrupted (SIGTERM); <detail>` after SIGTERM) and exits 130
    (143). For example, around a training loop:

        except KeyboardInterrupt:           # Ctrl-C, or SIGTERM through run_cli
            raise Interrupted(f"the last checkpoint is {path} (resume with --resume {path})")
    """


def one_line(text, limit=MAX_MESSAGE):
    """`text` as a single line of at most `limit` characters: line breaks and tabs folded into
    one space (other spaces kept: file names may hold two in a row), the end cut."""
    text = re.sub(r"\s*[\r\n\t]+\s*", " ", str(text)).strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


def require_at_least(flag, value, least):
    """`value` unless it is below `least` (NaN too): then a DataError naming the flag,
    `--epochs 0: must be at least 1`. None (an optional flag left unset) passes."""
    if value is not None and not value >= least:
        raise DataError(f"{flag} {value}: must be at least {least}")
    return value


@contextlib.contextmanager
def one_line_flag_errors():
    """argparse's own refusals (an unknown flag, a value of the wrong type) as DataErrors: one
    line naming the script and the flag, instead of its usage block and then the error."""
    def error(parser, message):
        raise DataError(f"{parser.prog}: {message} (see --help)")

    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def _ignore(signum, frame):
    """A signal handler that does nothing."""


# Where an exception raised by a signal handler can leave a lock taken for good: Python's
# threading and multiprocessing code. `with condition:` takes the lock in Condition.__enter__;
# a signal handled just after (still in threading.py) raises before the `with` has begun, so
# nothing releases it, and the next put() on that queue (a DataLoader's shutdown) waits forever.
_LOCK_CODE = (threading.__file__,
              os.path.join(os.path.dirname(threading.__file__), "multiprocessing", ""))


def _in_lock_code(frame):
    """Whether `frame` (where the main thread was when a signal came) runs Python's own lock
    plumbing."""
    return frame is not None and frame.f_code.co_filename.startswith(_LOCK_CODE)


@contextlib.contextmanager
def sigterm_as_interrupt(received, ending=()):
    """While the block runs, SIGTERM raises Terminated in the main thread and Ctrl-C (SIGINT,
    unless it is ignored, as in a `nohup ... &` run) KeyboardInterrupt; the signal's number is
    added to the list `received`. Only the first raises: a later one is only added, so the
    run's own clean-up (a DataLoader joining its workers) is not cut short. Once the list
    `ending` holds anything (the run is saying how it ended), none raises: a torchrun agent's
    SIGTERM that arrives while a process says it lost its peer must not cut that line short
    into a traceback. A process forked meanwhile (a DataLoader worker) that receives SIGINT
    dies of it, so its parent learns at once which signal ended it (for SIGTERM torch puts its
    own handler in its workers, to the same effect). Nothing changes off the main thread, where
    Python cannot set a handler.

    A signal that comes while the main thread is in Python's threading or multiprocessing code
    is raised as soon as it has left it (tried again every RETRY_S on SIGALRM, the program's own
    alarm put back afterwards): raised there, it could leave a lock taken that the DataLoader's
    shutdown then waits for forever. A thread found at the same place STILL_TRIES times in a row
    is waiting there (a join), not half-way through taking a lock, and gets it then. A run
    that ends meanwhile ends as it would have.

    The block gets a function that sets torch's SIGCHLD handler aside until the block ends
    (the first signal calls it too): from then on the DataLoader workers that die (of the same
    signal, or of the end of the run) are not reported as an error in the middle of the
    clean-up. It is replaced by a no-op, not SIG_DFL, which Python would report as a race."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    pid, set_aside = os.getpid(), {}

    def quiet_workers():
        if signal.SIGCHLD not in set_aside and callable(signal.getsignal(signal.SIGCHLD)):
            set_aside[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _ignore)

    def on_signal(signum, frame):
        if os.getpid() != pid:                  # a forked child: die of it, as without Python
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        received.append(signum)
        if len(received) > 1 or ending:
            return
        quiet_workers()
        raise_when_safe(frame)

    def raise_when_safe(frame, where=None, still=0):
        """Raise the first signal's exception now, or try again in RETRY_S if `frame` is in
        lock code (`where`: the place of the last try, `still`: how many tries in a row found
        it there). The place is kept by the frame's id, not the frame: a frame kept would keep
        what it holds (a DataLoader iterator) alive past the end of the run."""
        place = (id(frame), frame.f_code, frame.f_lasti) if frame is not None else None
        still = still + 1 if place == where else 0
        if _in_lock_code(frame) and still < STILL_TRIES:
            if not retrying:
                retrying.append((signal.getsignal(signal.SIGALRM),
                                 signal.getitimer(signal.ITIMER_REAL), time.monotonic()))
            signal.signal(signal.SIGALRM, lambda signum, now: stop_retrying() if ending or closing
                          else raise_when_safe(now, place, still))
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        stop_retrying()
        raise Terminated("SIGTERM") if received[0] == signal.SIGTERM else KeyboardInterrupt

    def stop_retrying():
        """SIGALRM's handler and timer as they were before the first try (the time the timer
        had left, less the time since)."""
        if retrying:
            handler, (left_s, interval_s), since = retrying.pop()
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, handler)
            if left_s > 0:
                signal.setitimer(signal.ITIMER_REAL,
                                 max(left_s - (time.monotonic() - since), 1e-6), interval_s)

    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signals.append(signal.SIGINT)
    retrying, closing = [], []
    previous = {s: signal.signal(s, on_signal) for s in signals}
    try:
        yield quiet_workers
    finally:
        closing.append(True)
        stop_retrying()
        for s, handler in {**previous, **set_aside}.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _quiet_dropped_handovers():
    """Inside the block, and in the processes forked meanwhile (DataLoader workers inherit the
    hook), a hand-over of a file descriptor that its receiver dropped is not reported. A worker
    sends each batch's tensors to the main process as file descriptors, served one connection
    at a time by multiprocessing's resource-sharer thread; a main process interrupted during one
    closes that connection, and the worker's thread would print the broken connection as a
    traceback (`_serve ... deliver_challenge ... Connection reset by peer`) after the run's one
    line. Any other exception, and any from elsewhere, is printed as before."""
    from multiprocessing import resource_sharer

    serve = resource_sharer._ResourceSharer._serve.__code__
    previous = sys.excepthook

    def hook(kind, value, tb):
        if not (issubclass(kind, (ConnectionError, EOFError)) and tb is not None
                and tb.tb_frame.f_code is serve):
            previous(kind, value, tb)

    sys.excepthook = hook
    try:
        yield
    finally:
        sys.excepthook = previous


def _to_devnull(stream):
    """Point `stream`'s file descriptor at os.devnull: what is buffered and what comes later
    goes nowhere instead of raising BrokenPipeError again."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)


class _ClosedPipeSafe:
    """sys.stdout for the length of a run: the first BrokenPipeError (the reader went away)
    points the descriptor at os.devnull and the run goes on, so the files it was asked for are
    still written. Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _to_devnull(self._stream)
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            _to_devnull(self._stream)
            with contextlib.suppress(BrokenPipeError):
                self._stream.flush()           # the buffer, now emptied into os.devnull

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _original_message(error):
    """A DataError's own message; a DataLoader worker's, re-raised in the main process with the
    worker's traceback ("Caught DataError in DataLoader worker process 0. Original Traceback
    ... DataError: <message>"), is cut back to that message."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def _failed_worker(wait_s):
    """The RuntimeError torch's DataLoader raises for a worker process of this one that has
    died, or None (none has within `wait_s`, or torch is not loaded). The wait: a dying
    process's connections close before its parent can see that it has ended."""
    torch = sys.modules.get("torch")
    deadline = time.monotonic() + wait_s
    while True:
        try:                                # torch's SIGCHLD handler may raise it meanwhile
            torch.utils.data._utils.signal_handling._error_if_any_worker_fails()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        except RuntimeError as e:
            return e
        except AttributeError:              # no torch, or one without the DataLoader's check
            return None


def _reaped_fates(error, pids):
    """In torch's words ("killed by signal: Terminated", "exited unexpectedly with exit code
    2"), what became of the DataLoader workers `pids` that the loader found dead and reaped
    before it could ask how they ended (a worker killed while it handed over a batch): their
    exit codes, from the loader whose frame is in `error`'s traceback."""
    fates, tb = {}, error.__traceback__
    while tb is not None:
        for worker in getattr(tb.tb_frame.f_locals.get("self"), "_workers", None) or ():
            with contextlib.suppress(AttributeError, ValueError):
                code = worker.exitcode if worker.pid in pids else None
                if code is not None and code < 0:
                    fates[worker.pid] = f"killed by signal: {signal.strsignal(-code)}"
                elif code:
                    fates[worker.pid] = f"exited unexpectedly with exit code {code}"
        tb = tb.tb_next
    return " ".join(fates.values())


def _worker_death(error, received):
    """For an error that came of a DataLoader worker process's death: the exit status to end
    with quietly (the interruption's; 2 when the worker printed its own error line and exited
    2, as common.ct's mapped-file guard does), else None. The loader says it as a RuntimeError,
    its details sometimes only in the cause, or not at all (then _reaped_fates); a worker that
    dies while handing over a batch shows as an EOFError or a ConnectionError instead, and its
    fate is asked of torch."""
    handover = isinstance(error, (EOFError, ConnectionError))
    first, texts = error, []
    while error is not None:
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    unsaid = re.match(r"DataLoader worker \(pid\(s\) ([\d, ]+)\) exited unexpectedly$", texts[0])
    if unsaid:
        texts.append(_reaped_fates(first, {int(pid) for pid in unsaid[1].split(", ")}))
    if not texts[0].startswith("DataLoader worker"):
        failed = _failed_worker(1.0 if handover else 0.0)
        if failed is None:
            return None
        texts = [str(failed)]
    text = " ".join(texts)
    if received or re.search(r"killed by signal: (Terminated|Interrupt)", text):
        return STATUS[received[0] if received else signal.SIGTERM if "Terminated" in text
                      else signal.SIGINT]
    if re.search(r"exited unexpectedly with exit code 2\b", text):
        return 2
    return None


@contextlib.contextmanager
def _quiet_worker_deaths(now=lambda: True):
    """Inside the block, while `now()`, a DataLoader's complaint that a worker died is not
    printed. After a SIGTERM sent to the whole process group (a scheduler, `docker stop`),
    workers die of it (torch's own handler), and the loader's shutdown, as the run unwinds,
    would print that as 'Exception ignored in ... __del__' with a traceback."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (now() and isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value).startswith("DataLoader worker")):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _let_go(error):
    """Free now the frames `error` and the exceptions behind it hold, and with them what they
    kept alive: a DataLoader iterator, whose shutdown joins its workers (quietly, even where
    they died of the signal that ended the run)."""
    with _quiet_worker_deaths():
        while error is not None:
            error.__traceback__ = None
            error = error.__context__


def _say(line):
    """`line` on stderr in one write: the processes of a torchrun job, stopped together, print
    theirs at the same moment, and print()'s two writes (the text, then the newline) would
    interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _ending(error, received):
    """The exit status a run ended by `error` ends with, its one line said and what the error
    held let go; None when the error is not one of ours (a bug: its traceback is the report)."""
    if isinstance(error, DataError):
        _say(f"error: {one_line(_original_message(error), 2 * MAX_MESSAGE)}")
        status = 2
    elif isinstance(error, KeyboardInterrupt):
        said = "interrupted" + (" (SIGTERM)" if received[:1] == [signal.SIGTERM] else "")
        detail = str(error) if isinstance(error, Interrupted) else ""
        _say(said + (f"; {one_line(detail)}" if detail else ""))
        status = STATUS[received[0] if received else signal.SIGINT]
    else:
        status = _worker_death(error, received)
        if status is None:
            return None
        if status != 2:                    # the worker said nothing: the interruption's line
            _say("interrupted" + (" (SIGTERM)" if status == 143 else ""))
    _let_go(error)
    return status


def run_cli(main, argv=None):
    """main(argv) as a command. DataError -> `error: ...` on stderr and exit 2 (argparse's
    refusals and DataLoader workers' DataErrors too). Ctrl-C -> `interrupted`, exit 130;
    SIGTERM -> `interrupted (SIGTERM)`, exit 143; `Interrupted(detail)` adds `; detail`. A
    reader that stops reading stdout (`script | head`) does not stop the run; nothing more is
    printed to it."""
    received, ending = [], []
    stdout = sys.stdout
    sys.stdout = safe = _ClosedPipeSafe(stdout)
    try:                       # the signals stay handled until the interruption's clean-up ends
        with sigterm_as_interrupt(received, ending) as quiet_workers, \
                _quiet_worker_deaths(lambda: bool(received)), _quiet_dropped_handovers():
            try:
                try:
                    with one_line_flag_errors():
                        result = main(argv)
                    ending.append(True)        # done: a signal now is only noted
                    return result
                except (DataError, KeyboardInterrupt, RuntimeError, EOFError,
                        ConnectionError) as e:
                    error = e
                    ending.append(True)        # from here a signal is noted, never raised
            except KeyboardInterrupt as e:     # the first signal came as the error was caught
                error = e
                ending.append(True)
            while True:      # torch's SIGCHLD handler can report a worker's death at any call
                try:         # until quiet_workers() has set it aside: such a report is dropped
                    quiet_workers()
                    status = _ending(error, received)
                    break
                except RuntimeError as late:
                    if not str(late).startswith("DataLoader worker"):
                        raise
            if status is None:
                raise error
            raise SystemExit(status) from None
    finally:
        with contextlib.suppress(ValueError):          # main closed it: nothing to flush
            safe.flush()
        sys.stdout = stdout
