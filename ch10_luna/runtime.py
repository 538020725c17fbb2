"""How a training process runs on its hardware: the process group and its ranks, each rank's
share of an epoch, gathered metrics, progress bars, mixed precision (autocast with its grad
scaler) and memory layouts. Chapters 11-14's trainers set these up in `main`; their loops only
see the results (a loader, an `amp`, a model that takes plain batches).

    with process_group("auto") as proc:         # torchrun's ranks, or one process
        amp = mixed_precision(proc.device, enabled=True)
        model = use_memory_format(LunaModel().to(proc.device), memory_format(proc.device, amp))
"""
import argparse
import contextlib
import ctypes
import datetime
import os
import platform
import re
import socket
import time
from collections import namedtuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from common.device import add_device_argument, pick_device
from common.errors import DataError

# One process of a run: its device, rank and the number of processes; `say` prints on rank 0.
Proc = namedtuple("Proc", ["device", "rank", "world", "say"])
# How torchrun started this process: its run id (--rdzv-id; a fresh one per --standalone
# launch), which start of the job this is (0: the first, 1: the first restart, ...) and how many
# restarts --max-restarts allows. None for a process not started by torchrun.
Elastic = namedtuple("Elastic", ["run_id", "restart", "max_restarts"])
# Mixed precision: the autocast context to run the model in, and the GradScaler (enabled only
# for float16, which needs it; a disabled one passes the loss and the step straight through);
# `dtype` is what the autocast computes in.
Amp = namedtuple("Amp", ["context", "scaler", "dtype"])


def runtime_parser(batch_size=32):
    """--device, --amp, --batch-size, --num-workers and --compile: how a trainer runs (a parent
    parser)."""
    p = argparse.ArgumentParser(add_help=False)
    add_device_argument(p)
    p.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast (float16 with a grad scaler where bf16 is missing)")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help="per process (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes (0: load in the training process)")
    p.add_argument("--compile", action="store_true",
                   help="train the model through torch.compile (off by default: on this "
                        "project's CPU compiled training measured slower, see ch13_segment/"
                        "benchmark.py --networks; on a GPU it usually wins)")
    return p


# ----------------------------------------------------------------------------- processes
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4       # glibc's mallopt parameters (malloc.h)


def keep_freed_memory():
    """Have glibc keep the memory torch frees for the next batch instead of handing it back.

    By default glibc serves every block over 32 MiB (a 512 x 512 slice's activations, a
    batch of 3-D crops') with its own mmap and unmaps it when freed, so the next batch's
    tensors page-fault in afresh: that kernel work was most of the U-Net's time on a real CT
    and a third of LunaModel's training step (figures in ch13_segment/NOTES.md). With mmap
    off and no trimming the process keeps its peak heap (a few GB) and reuses it. Only the
    scripts' `__main__` guards call this (it changes the whole process: not for a notebook or a
    test run that imports the functions); a no-op where the C library is not glibc. Returns
    whether it applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def is_main_process():
    return not dist.is_initialized() or dist.get_rank() == 0


def is_node_leader():
    """Local rank 0: the one process of each node (machine) that prepares node-local files."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def launched_rank():
    """This process's rank as torchrun set it, before the process group is joined (0 alone)."""
    return int(os.environ.get("RANK", "0"))


def elastic():
    """torchrun's Elastic for this process (restarts after a lost process or node); None when
    torchrun did not start it."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    return Elastic(os.environ["TORCHELASTIC_RUN_ID"],
                   int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
                   int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")))


def barrier():
    if dist.is_initialized():
        dist.barrier()


def _quiet(*_args, **_kwargs):
    pass


@contextlib.contextmanager
def process_group(device_name="auto", timeout=None):
    """Yield this process's Proc; under torchrun join its process group (gloo on CPU, nccl on
    CUDA, one GPU per local rank) and leave it on the way out, whatever happens. `timeout`
    (a timedelta): how long a collective waits for the slowest rank (None: torch's default)."""
    device = pick_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Proc(device, 0, 1, print)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend, job = "nccl" if device.type == "cuda" else "gloo", elastic()
    if job is not None and job.max_restarts > 0 and \
            os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        rank, world = launched_rank(), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend, store=fresh_store(rank, world), rank=rank,
                                world_size=world, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)
    try:
        rank = dist.get_rank()
        yield Proc(device, rank, dist.get_world_size(), print if rank == 0 else _quiet)
    except RuntimeError as e:
        lost = LOST_PEER.search(str(e))
        if lost is None:
            raise
        raise DataError(f"rank {rank}: lost another process of the run ({lost.group(0)}); a "
                        "torchrun job with --max-restarts starts again from its last "
                        "checkpoint") from None
    finally:
        dist.destroy_process_group()


# What gloo and nccl say when another process of the group died (collectives fail, not hang).
LOST_PEER = re.compile(r"Connection (reset|closed) by peer|Broken pipe|NCCL communicator was "
                       r"aborted|remote process exited")
STORE_TIMEOUT = datetime.timedelta(minutes=30)           # torch's default for collectives


def fresh_store(rank, world):
    """A key-value store of this start's own for the process group of a torchrun job that may
    restart. torchrun hands every start of a job the same store, where the keys of the start
    before are still there: a restarted process may read a dead peer's address and fail to
    connect (pytorch issue 135712). Rank 0 hosts a new store and announces its port in
    torchrun's; the others connect to the announced port, reading it again while it is a dead
    process's (refused)."""
    host, announce = os.environ["MASTER_ADDR"], f"dlwpt/store/{os.environ['TORCHELASTIC_RUN_ID']}"
    agent = dist.TCPStore(host, int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=STORE_TIMEOUT)
    if rank == 0:
        store = dist.TCPStore(host, 0, world, is_master=True, timeout=STORE_TIMEOUT,
                              wait_for_workers=False)
        agent.set(announce, str(store.port))
        return store
    deadline = time.monotonic() + STORE_TIMEOUT.total_seconds()
    while True:
        port = int(agent.get(announce))
        try:            # a plain probe: a TCPStore refused retries and logs C++ stack frames
            socket.create_connection((host, port), timeout=5).close()
        except OSError:                        # refused: a dead process's port
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        store = dist.TCPStore(host, port, world, is_master=False, timeout=STORE_TIMEOUT)
        return store


def describe(proc, amp):
    """'device cpu x 2 processes; amp (bfloat16)' for a run's first line."""
    text = f"device {proc.device}"
    if proc.world > 1:
        text += f" x {proc.world} processes"
    if amp.dtype != torch.float32:
        text += f"; amp ({str(amp.dtype).split('.')[-1]})"
    return text


def progress(loader, desc, proc, first_batch=0):
    """`loader` behind a progress bar with its ETA on rank 0 (the others stay quiet); a run
    resumed at `first_batch` shows the batches already done as done."""
    return tqdm(loader, desc=desc, initial=first_batch, total=first_batch + len(loader),
                unit="batch", disable=proc.rank > 0, mininterval=2.0, dynamic_ncols=True,
                leave=False)


def rank_share(order, rank, world, batch_size):
    """This process's part of an epoch's `order`: from each run of `world` batches, the
    `rank`-th (the last, short run split evenly), so step k of all processes together covers
    order[k * batch_size * world:][:batch_size * world], as one process with world times the
    batch would.

    Taking every `world`-th sample instead would hand rank 0 only the even items of a
    balanced epoch (chapter 12's positive, negative, ...; chapter 14's benign / non-nodule vs
    malignant) and rank 1 only the odd ones: class-pure batches, each normalised alone by the
    model's BatchNorm tail. `order` must divide by `world`.
    """
    order = np.asarray(order)
    full = len(order) // (batch_size * world) * batch_size * world
    return np.concatenate([order[:full].reshape(-1, world, batch_size)[:, rank].reshape(-1),
                           order[full:].reshape(world, -1)[rank]])


def gather_metrics(metrics):
    """All ranks' (K, n) metrics concatenated (on every rank); the tensor itself when alone."""
    return torch.cat(gather_objects(metrics), dim=1) if dist.is_initialized() else metrics


def gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] when alone."""
    if not dist.is_initialized():
        return [obj]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


# ----------------------------------------------------------------------------- the model
def mixed_precision(device, enabled):
    """Amp for `device`: bf16 autocast where the device has it, else fp16 with an enabled
    GradScaler; a no-op context (fp32) when not enabled. The scaler is disabled except for
    fp16, so `scaler.scale(loss).backward()` and `scaler.step(optimizer)` are then plain
    `loss.backward()` and `optimizer.step()`."""
    device = torch.device(device)
    off = torch.amp.GradScaler(device.type, enabled=False)
    if not enabled:
        return Amp(contextlib.nullcontext(), off, torch.float32)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return Amp(torch.autocast("cuda", dtype=torch.float16),
                   torch.amp.GradScaler("cuda"), torch.float16)
    return Amp(torch.autocast(device.type, dtype=torch.bfloat16), off, torch.bfloat16)


def memory_format(device, amp, spatial_dims=3):
    """Channels-last on CPU (oneDNN's native layout: LunaModel's Conv3d backward is many times
    faster in it, the U-Net's convolutions faster too; benchmark.py measures both) and on CUDA
    under reduced precision (tensor cores); the default layout otherwise. `amp` is an Amp or a
    bool."""
    device = torch.device(device)
    reduced = amp.dtype != torch.float32 if isinstance(amp, Amp) else bool(amp)
    if device.type == "cpu" or (device.type == "cuda" and reduced):
        return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    return torch.contiguous_format


def use_memory_format(model, fmt):
    """`model` with its weights in layout `fmt` and every 4-D/5-D input it is called with
    turned into that layout first (a forward pre-hook), so a loop passes plain batches; the
    state_dict keeps its names. The model, changed in place."""
    model.to(memory_format=fmt)
    rank = {torch.channels_last: 4, torch.channels_last_3d: 5}.get(fmt)
    if rank is not None:
        def to_layout(_module, inputs):
            return tuple(a.contiguous(memory_format=fmt)
                         if isinstance(a, torch.Tensor) and a.dim() == rank else a
                         for a in inputs)
        model.register_forward_pre_hook(to_layout)
    return model


def distribute(model, proc):
    """The model wrapped in DistributedDataParallel when there are several processes (after
    its weights are restored, so that every rank starts from the same ones); frozen
    parameters get no gradient hooks."""
    return torch.nn.parallel.DistributedDataParallel(model) if proc.world > 1 else model


def unwrap(model):
    """The bare module of a DistributedDataParallel model (validation runs it: no collectives)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
