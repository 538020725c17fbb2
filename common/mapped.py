"""Memory-mapped files that shrink under a running reader: one line naming the file, not a crash.

A CT's `.raw` is read through np.memmap (common/ct.py). If the file is cut while mapped (rewritten
in place, truncated, its disk quota hit by a rewrite), a read past the new end makes the kernel
send SIGBUS, which kills the process with no word. Here a read checks the size first
(`check_mapped`: one fstat, a DataError naming the file), and a read that faults all the same
(the file cut between the check and the read, or a read that skips the check) meets a SIGBUS
handler installed through libc, which writes that line and exits with status 2. Python's own
signal handlers cannot do it: they run after the faulting read, which faults again. Linux and
macOS only.

    voxels = mapped(np.memmap(raw_path, ...))      # once, when the file is mapped
    check_mapped(voxels)                           # before each read
"""
import ctypes
import os
import signal
import sys

from common.errors import DataError

# The files this process has mapped (path -> bytes its arrays need) and the process whose SIGBUS
# handler is installed. Module state on purpose: a signal handler finds only what a module
# keeps, and the handler must outlive any one array.
_MAPPED = {}
_GUARD = {"pid": None, "handler": None}


def shrank(path, size, needed):
    """The one line for a mapped file that is now too short (`size` None: it is gone)."""
    now = "is gone" if size is None else f"has {size:,} bytes"
    return (f"{path}: the file shrank while in use (it {now}, the CT needs {needed:,}); was it "
            "truncated or rewritten? restore it and run again")


def _libc_signal(signum, handler):
    """libc's signal(2): `handler` a ctypes callback, or None for the default action."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
    return libc.signal(signum, None if handler is None else ctypes.cast(handler,
                                                                        ctypes.c_void_p))


def _on_sigbus(signum):
    """A read of a mapped file faulted: a file of ours that shrank gets its one line on stderr
    and the process exits 2 (no clean-up can run from here: the atomic writer's temporaries
    are removed by the next writer); none did, so the fault is not ours: the default action."""
    for path, needed in list(_MAPPED.items()):
        try:
            size = os.stat(path).st_size
        except OSError:
            size = None
        if size is None or size < needed:
            os.write(2, f"error: {shrank(path, size, needed)}\n".encode(errors="replace"))
            os._exit(2)
    _libc_signal(signum, None)                 # the faulting read runs again and dies of it


def guard_mapped_reads():
    """Install the SIGBUS handler in this process; again after a fork, where a DataLoader
    worker has put torch's own in its place."""
    if _GUARD["pid"] == os.getpid() or not sys.platform.startswith(("linux", "darwin")):
        return
    handler = _GUARD["handler"] or ctypes.CFUNCTYPE(None, ctypes.c_int)(_on_sigbus)
    _libc_signal(signal.SIGBUS, handler)
    _GUARD.update(pid=os.getpid(), handler=handler)         # kept: the callback must live


def mapped(voxels):
    """Register a np.memmap's file for the SIGBUS handler and install it; returns `voxels`."""
    _MAPPED[str(voxels.filename)] = voxels.offset + voxels.nbytes
    guard_mapped_reads()
    return voxels


def check_mapped(voxels):
    """Before a read of a np.memmap: a DataError naming the file when it is now shorter than
    the array needs (reading the lost part would fault); nothing for an in-memory array."""
    mm = getattr(voxels, "_mmap", None)
    if mm is None:
        return
    if _GUARD["pid"] != os.getpid():
        guard_mapped_reads()
    needed = voxels.offset + voxels.nbytes
    size = mm.size()                        # fstat of the mapped file itself, even if renamed
    if size < needed:
        raise DataError(shrank(voxels.filename, size, needed))
