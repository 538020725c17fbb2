"""A training run's files: its folder, metrics.jsonl and TensorBoard writers, checkpoints in the
book's dict written atomically, and resuming them exactly, in the middle of an epoch too.
Chapters 11-14's trainers share it.

    run = open_run(run_directory(None, None, "ch10", "dlwpt"), "cls", "dlwpt", proc)
    save_checkpoint(run.last, model, optimizer, vars(args), epoch, samples_seen)
    state = load_resumable(path, "LunaModel"); start = resume_point(state, path, proc)
"""
import argparse
import datetime
import itertools
import sys
from collections import namedtuple
from pathlib import Path

import torch

from ch01_intro.weights import state_mismatch
from ch10_luna.model import read_checkpoint
from ch10_luna.runtime import gather_objects, unwrap
from common.errors import DataError, one_line
from common.files import append_jsonl, check_writable, output_dir, runs_dir, save_torch

# A run's folder, its TensorBoard writers by phase ({} off rank 0) and its checkpoint paths.
Run = namedtuple("Run", ["dir", "writers", "last", "best"])
# Where a (resumed) run starts: epoch, batch within it, this rank's metrics of the batches
# already done (None: a fresh epoch), samples seen when that epoch began, best score so far.
Start = namedtuple("Start", ["epoch", "batch", "partial", "samples", "best"])
FRESH = Start(1, 0, None, 0, -1.0)


def run_parser(tb_prefix):
    """A run's name, length and files: the comment, --epochs, --seed, --run-dir, --tb-prefix,
    --resume (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("comment", nargs="?", default="dlwpt", help="suffix of the run directory")
    p.add_argument("--epochs", type=int, default=1, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="seeds everything (default: %(default)s)")
    p.add_argument("--run-dir", default=None, help="default: runs/<tb-prefix>/<time>-<comment>")
    p.add_argument("--tb-prefix", default=tb_prefix, help="the book's TensorBoard folder name")
    p.add_argument("--resume", default=None, help="checkpoint (.state) to continue from")
    return p


def parse_run_args(parse_args, argv, model_name, keeps, load=None):
    """A trainer's settings, its --resume checkpoint (or None) and its run folder, checked
    before any work: (args, saved, run_dir). A resumed run takes its saved settings but the
    `keeps` flags given again (restore_settings); `load` reads the checkpoint (default:
    load_resumable for `model_name`)."""
    args = parse_args(argv)
    saved = None
    if args.resume:
        saved = (load or (lambda path: load_resumable(path, model_name)))(args.resume)
        args = argparse.Namespace(**restore_settings(vars(args), saved, vars(parse_args([])),
                                                     keeps, args.resume))
    run_dir = run_directory(args.run_dir, args.resume, args.tb_prefix, args.comment)
    return args, saved, check_writable(run_dir, "--run-dir")


# ----------------------------------------------------------------------------- the folder
def run_directory(run_dir, resume, tb_prefix, comment):
    """--run-dir; else the resumed checkpoint's folder; else runs/<tb-prefix>/<time>-<comment>."""
    if run_dir:
        return Path(run_dir)
    if resume:
        return Path(resume).parent
    return runs_dir(tb_prefix) / f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}-{comment}"


def open_run(directory, prefix, comment, proc):
    """The Run in `directory`: rank 0 creates it and opens the TensorBoard writers; the
    checkpoints are `<prefix>_<comment>.last.state` and `.best.state`."""
    directory = Path(directory)
    writers = {}
    if proc.rank == 0:
        output_dir(directory, "--run-dir")
        from torch.utils.tensorboard import SummaryWriter  # TensorBoard: only when used

        writers = {phase: SummaryWriter(log_dir=str(directory / phase))
                   for phase in ("trn", "val")}
        proc.say(f"run directory {directory}")
    return Run(directory, writers, directory / f"{prefix}_{comment}.last.state",
               directory / f"{prefix}_{comment}.best.state")


def close_run(run):
    for writer in run.writers.values():
        writer.close()


def log_epoch(run, epoch, phase, summary, samples_seen):
    """One line in metrics.jsonl (epoch, phase, samples seen and the summary) and the summary
    as TensorBoard scalars; the row."""
    row = append_jsonl(run.dir / "metrics.jsonl",
                       {"epoch": epoch, "phase": phase, "samples": samples_seen, **summary})
    writer = run.writers.get(phase)
    if writer is not None:
        for key, value in summary.items():
            writer.add_scalar(key, value, samples_seen)
        writer.flush()
    return row


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, optimizer, settings, epoch, samples_seen, **extra):
    """The book's dict (plus the run's `settings` and `extra`), written atomically."""
    module = unwrap(model)
    return save_torch({
        "model_state": module.state_dict(), "optimizer_state": optimizer.state_dict(),
        "model_name": type(module).__name__, "optimizer_name": type(optimizer).__name__,
        "epoch": epoch, "totalTrainingSamples_count": samples_seen, "sys_argv": sys.argv,
        "time": str(datetime.datetime.now()), "args": dict(settings), **extra,
    }, path)


def save_epoch_end(run, model, optimizer, settings, epoch, samples_seen, score, best, key):
    """At the end of an epoch: `.best.state` when `score` beats `best`, then `.last.state`,
    both holding the best score under `key`; returns the new best."""
    if score > best:
        best = score
        save_checkpoint(run.best, model, optimizer, settings, epoch, samples_seen, **{key: best})
    save_checkpoint(run.last, model, optimizer, settings, epoch, samples_seen, **{key: best})
    return best


def load_resumable(path, model_name):
    """A checkpoint dict for --resume; DataError when it is not a resumable `model_name` one."""
    state = read_checkpoint(path, "--resume")
    if state.get("model_name") != model_name:
        raise DataError(f"--resume {path}: holds a {state.get('model_name')!r}, "
                        f"this script trains a {model_name}")
    if not isinstance(state.get("args"), dict) or "epoch" not in state \
            or "optimizer_state" not in state:
        raise DataError(f"--resume {path}: has no training state to resume (a published or "
                        "exported model); train from scratch or fine-tune instead")
    return state


def restore_settings(given, state, defaults, keeps, path):
    """The settings dict of a resumed run: its saved settings, except the `keeps` flags given
    again now (how to run it: --epochs, --device, ...). `given` and `defaults` are this
    script's settings now and its parse_args([]), as dicts; comparing them tells which were
    given. A saved settings dict that lacks one of this script's flags comes from another
    script or version, and is refused."""
    saved = dict(state["args"])
    lacking = sorted(set(defaults) - set(saved))
    if lacking:
        shown = ", ".join("--" + k.replace("_", "-") for k in lacking[:3])
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        raise DataError(f"--resume {path}: its saved settings lack {shown}{more} (saved by "
                        "another script or version); start a new run instead")
    saved.update({k: given[k] for k in keeps if k == "resume" or given[k] != defaults[k]})
    return saved


def restore_state(model, optimizer, state, path, what):
    """Load a --resume checkpoint's model and optimizer state; DataError when they do not fit.

    `what` names the model and optimizer in the message, e.g. 'LunaModel/sgd'.
    """
    why = state_mismatch(model, state["model_state"])
    if why:
        raise DataError(one_line(f"--resume {path}: does not fit {what}: {why}"))
    model.load_state_dict(state["model_state"])
    try:
        optimizer.load_state_dict(state["optimizer_state"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise DataError(one_line(f"--resume {path}: its optimizer state does not fit {what} "
                                 f"({e})")) from None


def resume_training(model, optimizer, state, path, proc, best_key):
    """Restore a --resume checkpoint's weights and optimizer (none: a fresh run) and return
    where training starts (resume_point)."""
    if state is not None:
        restore_state(model, optimizer, state, path, f"{type(model).__name__}/"
                      f"{type(optimizer).__name__}")
    return resume_point(state, path, proc, best_key)


def resume_point(state, path, proc, best_key):
    """Start of a resumed run. A checkpoint saved at the end of epoch e starts at e + 1; one
    saved mid-epoch (`batch` > 0) at that batch, with each rank's partial metrics. Those parts
    fit only the number of processes that wrote them: another count is refused."""
    if state is None:
        return FRESH
    batch, parts = state.get("batch", 0), state.get("trn_partial")
    best = state.get(best_key, -1.0)
    if not batch:
        return Start(state["epoch"] + 1, 0, None, state["totalTrainingSamples_count"], best)
    if not parts or len(parts) != proc.world:
        saved = len(parts) if parts else "?"
        raise DataError(f"--resume {path}: saved in the middle of epoch {state['epoch']} by "
                        f"{saved} process(es); resume it with {saved} (each holds part of the "
                        f"epoch), not {proc.world}")
    done = parts[proc.rank][:, :batch * state["args"]["batch_size"]]   # older files: full width
    return Start(state["epoch"], batch, done, state["epoch_start_samples"], best)


def mid_epoch_saver(every, path, model, optimizer, settings, proc, epoch, epoch_start_samples,
                    epoch_len, batch_size, done=None, **extra):
    """`after_batch(rows)` for a training loop: it keeps this rank's metrics rows (after
    `done`, the rows of the batches a resumed epoch already has) and after every `every`-th
    batch but the last gathers every rank's and, on rank 0, writes the checkpoint that
    resume_point reads back (`batch`, `trn_partial`, `epoch_start_samples` beside the book's
    keys and `extra`). None when `every` is 0."""
    if not every:
        return None
    total = -(-(epoch_len // proc.world) // batch_size)      # this rank's batches in the epoch
    kept = [torch.zeros(3, 0) if done is None else done.cpu()]
    count = itertools.count(kept[0].shape[1] // batch_size + 1)

    def after_batch(rows):
        kept.append(rows)
        batches = next(count)
        if batches % every or batches == total:
            return
        kept[:] = [torch.cat([r.cpu() for r in kept], dim=1)]
        parts = gather_objects(kept[0])
        if proc.rank == 0:
            seen = epoch_start_samples + min(batches * batch_size * proc.world, epoch_len)
            save_checkpoint(path, model, optimizer, settings, epoch, seen, batch=batches,
                            trn_partial=parts, epoch_start_samples=epoch_start_samples, **extra)
    return after_batch
