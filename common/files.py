"""Outputs written whole or not at all, and torch files read without running their code.

Every file a script writes goes through `atomic_path` or the helpers built on it: the bytes go
to a temporary file in the target folder, which is renamed onto the target only once complete
and removed on any failure, so a full disk, a crash or Ctrl-C never leaves half a file. A
temporary is named `.<stem>.tmp-<pid>@<host>-<random><suffix>`; one left by a process that was
killed outright (kill -9, a power cut) is removed by the next writer of the same target. A file
that several processes may all set out to make (a cache) is made under `one_writer`: one makes
it, the others wait, then read it. Every torch file a user hands a script is read by
`read_torch` (`weights_only=True`: tensors and plain containers, never pickled code).
"""
import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

from common.errors import DataError, one_line

try:                                               # POSIX; elsewhere one_writer locks nothing
    import fcntl
except ImportError:
    fcntl = None

RUNS_ROOT = Path(__file__).resolve().parent.parent / "runs"   # the repository's runs/, git-ignored
# Another machine's temporary (a shared disk) is removed only after this long without a change:
# its writer's pid means nothing here, and no write of ours takes an hour between two changes.
FOREIGN_STALE_S = 3600
# Why a write failed, where it is the disk (errno -> words): said plainly, not as "File too large".
FULL_DISK = {errno.ENOSPC: "the disk is full",
             errno.EFBIG: "the disk is full or the file is over a size limit",
             errno.EDQUOT: "the disk quota is used up"}


class CannotWrite(DataError):
    """A failed write (full disk, read-only folder) of `path`; `why` is write_failure's words,
    for a caller that says it in its own terms (the synthetic sample names its folder, not the
    temporary file that failed)."""

    def __init__(self, message, path, why):
        super().__init__(message)
        self.path, self.why = path, why


def write_failure(error):
    """The words after `cannot write` for a failed write: `: the disk is full (No space left on
    device)` for ENOSPC, EFBIG (a file-size limit, RLIMIT_FSIZE, fails the same way) and
    EDQUOT; else the reason in brackets, ` (Read-only file system)`."""
    reason = getattr(error, "strerror", None) or one_line(error, 120)
    full = FULL_DISK.get(getattr(error, "errno", None))
    return f": {full} ({reason})" if full else f" ({reason})"


def runs_dir(chapter):
    """Where a script writes by default: the repository's runs/<chapter>/, whatever the current
    folder (a `--out`/`--run-dir` flag overrides it)."""
    return RUNS_ROOT / chapter


def output_dir(path, what="output folder"):
    """Folder `path`, created with its parents; DataError naming `what` when it cannot be one."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataError(f"{what} {path}: a file is in the way, not a folder") from None
    except NotADirectoryError:
        raise DataError(f"{what} {path}: part of the path is a file, not a folder") from None
    except OSError as e:
        raise DataError(f"{what} {path}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):       # read-only mounts refuse root too
        raise DataError(f"{what} {path}: the folder is not writable")
    return path


def check_writable(path, what="output folder"):
    """Check, creating nothing, that folder `path` can be made or written: its nearest existing
    ancestor must be a writable folder. For scripts that check their outputs before the long
    work (a folder made then left empty by a refused run is litter)."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise DataError(f"{what} {path}: " + ("a file is in the way, not a folder" if
                                              probe == path else
                                              "part of the path is a file, not a folder"))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(f"{what} {path}: " + ("the folder is not writable" if probe == path
                                              else f"{probe} is not writable"))
    return path


def _remove(path):
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _host():
    """This machine's name as it goes into a temporary's name: letters, digits, `_` and `.`."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def temporary_path(path):
    """Where a writer of `path` puts its bytes first: `.<stem>.tmp-<pid>@<host>-<random><suffix>`
    beside it (the suffix kept for writers that pick a format by extension)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}@{_host()}-{secrets.token_hex(3)}"
                          f"{path.suffix}")


def _temporary_owner(name, path):
    """(pid, whether on this machine) of the writer whose temporary of `path` is called `name`;
    None when `name` is not one. Names from before the host was in them count too:
    `.<stem>.tmp-<pid>-<hex><suffix>` (taken as this machine's) and the synthetic sample's
    `.<name>.tmp-<host>-<pid>`."""
    stem, suffix = re.escape(path.stem), re.escape(path.suffix)
    found = re.fullmatch(rf"\.{stem}\.tmp-(\d+)@([A-Za-z0-9_.]+)-[0-9a-f]{{6}}{suffix}", name)
    if found:
        return int(found[1]), found[2] == _host()
    found = re.fullmatch(rf"\.{stem}\.tmp-(\d+)-[0-9a-f]{{6}}{suffix}", name)
    if found:
        return int(found[1]), True
    found = re.fullmatch(rf"\.{re.escape(path.name)}\.tmp-(.+)-(\d+)", name)
    return (int(found[2]), found[1] == socket.gethostname()) if found else None


def _alive(pid):
    """Whether a process `pid` runs on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path):
    """Remove the temporaries of `path` (files or folders) that no writer will finish: those of
    processes of this machine that are gone (killed before they could clean up), and another
    machine's unchanged for FOREIGN_STALE_S. A live writer's temporary is never touched.
    Returns the paths removed."""
    path = Path(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:                                    # no folder yet: nothing to remove
        return removed
    for entry in entries:
        if not entry.name.startswith(f".{path.stem}.tmp-"):
            continue
        owner = _temporary_owner(entry.name, path)
        if owner is None:
            continue
        pid, here = owner
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if (here and pid != os.getpid() and not _alive(pid)) or \
                (not here and age > FOREIGN_STALE_S):
            _remove(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def cannot_write(what, path, error):
    """The CannotWrite for a failed write of `path` (`what` names it): `checkpoint X: cannot
    write: the disk is full (No space left on device)`."""
    why = write_failure(error)
    return CannotWrite(f"{what} {path}: cannot write{why}", path, why)


@contextlib.contextmanager
def atomic_path(path, what="output", write_errors=()):
    """Yield a temporary path beside `path` to write (temporary_path); renamed onto `path` when
    the block ends normally, deleted when it raises (Ctrl-C and SIGTERM under run_cli too).
    Stale temporaries of `path` are removed first (remove_stale_temporaries). The temporary
    keeps `path`'s suffix, so writers that pick a format by extension (imageio, matplotlib,
    ONNX) work unchanged. An OSError while writing (full disk, read-only folder, file-size
    limit) becomes one CannotWrite naming `path`, as do `write_errors`: the types a library
    raises for a failed write (torch.jit.save's RuntimeError, for one)."""
    path = Path(path)
    output_dir(path.parent, f"{what} folder")
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, *write_errors) as e:
        _remove(tmp)
        raise cannot_write(what, path, e) from None
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def one_writer(path, what="output"):
    """Hold the writer's lock of `path` for the block: an exclusive `fcntl.flock` on
    `.<name>.lock` beside it, so that of several processes setting out to make `path` (a cache
    that ranks or runs share) one makes it while the others wait here; a waiter then finds
    `path` made and reads it instead. The lock file is removed on the way out; one left by a
    killed holder (the kernel releases its lock) is taken over and removed by the next writer.
    A waiter that finds the lock file replaced (removed by its holder, made anew by a third
    process) locks again, so two processes never hold it at once."""
    path = Path(path)
    output_dir(path.parent, f"{what} folder")
    if fcntl is None:
        yield
        return
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise cannot_write(what, path, e) from None
        fcntl.flock(fd, fcntl.LOCK_EX)                 # waits while another process holds it
        with contextlib.suppress(FileNotFoundError):
            now, held = os.stat(lock), os.fstat(fd)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                break                                  # the lock file is still this one
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)                            # before releasing it: see the loop
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path, mode="w", what="output", **open_kwargs):
    """`open(path, mode)` through atomic_path: the file appears only once it is closed whole."""
    with atomic_path(path, what) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def write_bytes(path, data, what="output"):
    with atomic_open(path, "wb", what) as f:
        f.write(data)
    return Path(path)


def write_text(path, text, what="output"):
    with atomic_open(path, "w", what, encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def to_json(obj, where, **dumps_kwargs):
    """json.dumps that refuses NaN and infinity (not JSON) with a DataError naming `where`."""
    try:
        return json.dumps(obj, allow_nan=False, **dumps_kwargs)
    except ValueError:
        raise DataError(f"{where}: not written: a value is NaN or infinite") from None


def write_json(path, obj, what="output", indent=1):
    """Valid JSON or nothing: NaN and infinity are refused, the file is written atomically."""
    return write_text(path, to_json(obj, f"{what} {path}", indent=indent) + "\n", what)


def append_jsonl(path, row, what="metrics"):
    """Add one JSON line to `path` by rewriting it whole (small files: a log of epochs), so a
    full disk leaves the previous lines intact rather than half a line."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text(path, old + to_json(row, f"{what} {path}") + "\n", what)
    return row


def save_torch(obj, path, what="checkpoint"):
    """torch.save through atomic_path: never half a checkpoint. Serialised in memory first,
    because torch's zip writer reports a full disk as a RuntimeError, not an OSError."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getbuffer(), what)


def read_torch(path, what="file", map_location="cpu"):
    """torch.load(path, weights_only=True): tensors, dicts, lists, numbers and strings, never
    code. Anything else (a missing file, a folder, a pickle with Python objects in it, a
    truncated or foreign file) is a DataError naming `what` (a flag, or what the file is for)."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path}: no such file")
    if path.is_dir():
        raise DataError(f"{what} {path}: a folder, not a file")
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise DataError(f"{what} {path}: holds Python objects, not only tensors ({found[1]}; "
                            "refused: loading them could run code)") from None
        raise DataError(f"{what} {path}: not a readable torch file (not a torch pickle)") \
            from None
    except Exception as e:                          # zip, EOF, storage and device errors alike
        raise DataError(f"{what} {path}: not a readable torch file ({type(e).__name__}: "
                        f"{one_line(e, 80)})") from None
