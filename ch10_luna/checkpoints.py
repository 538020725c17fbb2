"""A training run's files: its folder, metrics.jsonl and TensorBoard writers, checkpoints in the
book's dict written atomically, and resuming them exactly, in the middle of an epoch too.
Chapters 11-14's trainers share it.

    run = open_run(run_directory(None, None, "ch10", "dlwpt"), "cls", "dlwpt", proc)
    save_checkpoint(run.last, model, optimizer, vars(args), epoch, samples_seen)
    state = load_resumable(path, "LunaModel"); start = resume_point(state, path, proc, "best_f1")

`--resume auto` (a requeued job) and a torchrun restart (--max-restarts, after a lost process or
node) continue from the run folder's last checkpoint: resume_from.
"""
import argparse
import contextlib
import datetime
import itertools
import json
import math
import re
import sys
from collections import namedtuple
from pathlib import Path

import torch

from ch01_intro.weights import state_mismatch
from ch10_luna.augment import AUGMENTATIONS
from ch10_luna.model import read_checkpoint
from ch10_luna.runtime import elastic, gather_objects, launched_rank, unwrap
from common.errors import DataError, Interrupted, one_line
from common.files import (
    check_writable,
    output_dir,
    read_torch,
    runs_dir,
    save_torch,
    to_json,
    write_text,
)

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
    p.add_argument("--resume", default=None,
                   help="checkpoint (.state) to continue from; auto: the last one in --run-dir "
                        "if there is one, else a new run (a job requeued with the same command)")
    return p


def parse_run_args(parse_args, argv, model_name, keeps, prefix, load=None):
    """A trainer's settings, the checkpoint it resumes (or None) and its run folder, checked
    before any work: (args, saved, run_dir). The checkpoint is --resume PATH, or the run
    folder's last one with --resume auto and on a torchrun restart (resume_from; `prefix` names
    the trainer's checkpoints there). A resumed run takes its saved settings but the `keeps`
    flags given again (restore_settings); `load` reads the checkpoint (default:
    load_resumable for `model_name`)."""
    args = parse_args(argv)
    path, why = resume_from(args.resume, args.run_dir, args.tb_prefix, args.comment, prefix)
    saved = None
    if path:
        saved = (load or (lambda path: load_resumable(path, model_name)))(path)
        args = argparse.Namespace(**restore_settings(vars(args), saved, vars(parse_args([])),
                                                     keeps, path))
        args.resume = str(path)
        if why:                          # found in the run folder: the run goes on there
            args.run_dir = str(Path(path).parent)
            say_first(f"{why}: continuing from {path} ({resume_place(saved)})")
    run_dir = run_directory(args.run_dir, args.resume, args.tb_prefix, args.comment)
    return args, saved, check_writable(run_dir, "--run-dir")


def resume_from(resume, run_dir, tb_prefix, comment, prefix):
    """(checkpoint to resume or None, why it was chosen or None), from the flags --resume,
    --run-dir, --tb-prefix and the comment. --resume PATH as given; with
    --resume auto (which needs --run-dir) the run folder's last checkpoint, or None when the run
    wrote none yet (said on rank 0). Under torchrun, a run folder whose last checkpoint this
    same job wrote (its run id) is a restarted job's: it continues from there too. (The restart
    count torchrun sets is each machine's own: a healthy node's processes restarted with the
    others may see 0.)"""
    job = elastic()
    if resume not in (None, "auto"):
        return resume, None                      # PATH, on every start of the job
    if resume == "auto" and not run_dir:
        raise DataError("--resume auto: give --run-dir too, the run folder whose last "
                        "checkpoint to continue (a requeued job names the same one)")
    if resume is None and job is None:
        return None, None
    folder = run_directory(run_dir, None, tb_prefix, comment)
    last = run_files(folder, prefix, comment)[0]
    if job is not None and last.exists() and read_torch(last, "the run's last checkpoint").get(
            "torchrun_run_id") == job.run_id:
        return last, f"torchrun restarted job {job.run_id}"
    if resume == "auto":
        if last.exists():
            return last, "--resume auto"
        say_first(f"--resume auto: no checkpoint in {folder} yet; starting the run from its "
                  "beginning")
        return None, None
    if job.restart > 0:
        say_first(f"torchrun restart {job.restart} of job {job.run_id}: no checkpoint of it in "
                  f"{folder} yet; starting the run from its beginning")
    return None, None


def resume_place(state):
    """Where a checkpoint resumes: 'after epoch 3' or 'epoch 2, after batch 5'."""
    if state.get("batch"):
        return f"epoch {state['epoch']}, after batch {state['batch']}"
    return f"after epoch {state['epoch']}"


def say_first(line):
    """Print `line` on the first process only (rank 0; before the process group is joined)."""
    if launched_rank() == 0:
        print(line, flush=True)


# ----------------------------------------------------------------------------- the folder
def run_directory(run_dir, resume, tb_prefix, comment):
    """--run-dir; else the resumed checkpoint's folder; else runs/<tb-prefix>/<time>-<comment>,
    or, when torchrun may restart the job (--max-restarts), runs/<tb-prefix>/<run id>-<comment>:
    a restarted process must find the folder again, and the time it starts at differs."""
    if run_dir:
        return Path(run_dir)
    if resume:
        return Path(resume).parent
    job = elastic()
    if job is not None and job.max_restarts > 0:
        if job.run_id in ("", "none"):                  # torchrun's default --rdzv-id
            raise DataError("--run-dir: torchrun --max-restarts may restart this run; give "
                            "--run-dir (or torchrun --rdzv-id JOB) so that a restart finds its "
                            "folder again")
        return runs_dir(tb_prefix) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', job.run_id)}-{comment}"
    return runs_dir(tb_prefix) / f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}-{comment}"


def run_files(directory, prefix, comment):
    """A run's checkpoints: (`<prefix>_<comment>.last.state`, `.best.state`) in `directory`."""
    return (Path(directory) / f"{prefix}_{comment}.last.state",
            Path(directory) / f"{prefix}_{comment}.best.state")


def open_run(directory, prefix, comment, proc):
    """The Run in `directory`: rank 0 creates it and opens the TensorBoard writers; the
    checkpoints are run_files'."""
    directory = Path(directory)
    writers = {}
    if proc.rank == 0:
        output_dir(directory, "--run-dir")
        from torch.utils.tensorboard import SummaryWriter  # TensorBoard: only when used

        writers = {phase: SummaryWriter(log_dir=str(directory / phase))
                   for phase in ("trn", "val")}
        proc.say(f"run directory {directory}")
    return Run(directory, writers, *run_files(directory, prefix, comment))


@contextlib.contextmanager
def say_where_to_resume(run):
    """Around a training loop: Ctrl-C or SIGTERM (run_cli turns it into a KeyboardInterrupt)
    ends the run saying where its last checkpoint is and how to resume from it."""
    try:
        yield
    except KeyboardInterrupt:
        if run.last.exists():
            raise Interrupted(f"the last checkpoint is {run.last} (resume with --resume "
                              f"{run.last})") from None
        raise Interrupted(f"no checkpoint was written yet in {run.dir}") from None


def close_run(run):
    for writer in run.writers.values():
        writer.close()


PHASES = ("trn", "val")                     # the order of an epoch's rows in metrics.jsonl


def log_epoch(run, epoch, phase, summary, samples_seen):
    """One line in metrics.jsonl (epoch, phase, samples seen and the summary) and the summary
    as TensorBoard scalars; the row. Rows from this epoch and phase on that the file already
    holds are dropped: a run killed after logging them but before its checkpoint logs them
    again once resumed. The file is rewritten whole (atomically: a full disk keeps it)."""
    path = run.dir / "metrics.jsonl"
    row = {"epoch": epoch, "phase": phase, "samples": samples_seen, **summary}
    line = to_json(row, f"metrics {path}") + "\n"
    old = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
    write_text(path, "".join(r for r in old if logged_before(r, epoch, phase)) + line, "metrics")
    writer = run.writers.get(phase)
    if writer is not None:
        for key, value in summary.items():
            writer.add_scalar(key, value, samples_seen)
        writer.flush()
    return row


def logged_before(line, epoch, phase):
    """Whether metrics.jsonl's `line` is a row of an earlier epoch, or of this one's earlier
    phase (a line that is not such a row is kept)."""
    try:
        row = json.loads(line)
        at = (row["epoch"], PHASES.index(row["phase"]) if row["phase"] in PHASES else -1)
        return at < (epoch, PHASES.index(phase) if phase in PHASES else len(PHASES))
    except (ValueError, TypeError, KeyError):
        return True


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, optimizer, settings, epoch, samples_seen, **extra):
    """The book's dict (plus the run's `settings` and `extra`, and under torchrun its run id:
    a restarted job knows its own checkpoints), written atomically."""
    module = unwrap(model)
    job = elastic()
    if job is not None:
        extra = {"torchrun_run_id": job.run_id, **extra}
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
    """A checkpoint dict for --resume, every field the resume reads checked (check_resumable);
    DataError when it is not a resumable `model_name` one."""
    state = read_checkpoint(path, "--resume")
    if state.get("model_name") != model_name:
        raise DataError(f"--resume {path}: holds a {state.get('model_name')!r}, "
                        f"this script trains a {model_name}")
    if not isinstance(state.get("args"), dict) or "epoch" not in state \
            or "optimizer_state" not in state:
        raise DataError(f"--resume {path}: has no training state to resume (a published or "
                        "exported model); train from scratch or fine-tune instead")
    return check_resumable(state, path)


def count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def finite_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def finite_tensors(value):
    """True when every tensor in a nest of dicts, lists and tuples is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(finite_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(finite_tensors(v) for v in value)
    return True


AUGMENT_NAMES = ("all", *AUGMENTATIONS)               # what --augmented/--augment-* save
# What resume_point and restore_state read, each with its check and what it should be.
RESUME_FIELDS = {
    "epoch": (count, "a whole number >= 0"),
    "totalTrainingSamples_count": (count, "a whole number >= 0"),
    "optimizer_state": (lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                        and isinstance(v.get("param_groups"), list), "an optimizer's state dict"),
    "best_f1": (finite_number, "a finite number"),
    "best_recall": (finite_number, "a finite number"),
    "best_auc": (finite_number, "a finite number"),
    "batch": (count, "a whole number >= 0"),
}
RESUME_REQUIRED = ("epoch", "totalTrainingSamples_count", "optimizer_state")
MID_EPOCH_FIELDS = {                       # read when `batch` > 0: a checkpoint of mid-epoch
    "epoch_start_samples": (count, "a whole number >= 0"),
    "trn_partial": (lambda v: isinstance(v, list) and v and all(
        isinstance(t, torch.Tensor) and t.dim() == 2 for t in v), "a list of (rows, n) tensors"),
}


def check_resumable(state, path):
    """`state`, when each field the resume reads is there (where it must be), of its type and
    finite; a DataError naming the file and the first field that is not."""
    mid_epoch = bool(state.get("batch"))
    fields = {**RESUME_FIELDS, **(MID_EPOCH_FIELDS if mid_epoch else {})}
    for field in RESUME_REQUIRED + (tuple(MID_EPOCH_FIELDS) if mid_epoch else ()):
        if field not in state:
            raise DataError(f"--resume {path}: field {field!r} is missing" + (
                " (it was saved in the middle of an epoch)" if mid_epoch else ""))
    for field, (ok, should) in fields.items():
        if field in state and not ok(state[field]):
            shown = one_line(repr(state[field]), 40)
            raise DataError(f"--resume {path}: field {field!r} is {shown}, not {should}")
    for field in ("optimizer_state", "trn_partial"):
        if not finite_tensors(state.get(field)):
            raise DataError(f"--resume {path}: field {field!r} holds NaN or Inf values")
    return state


def check_resume_point(state, path, epoch_size=None):
    """The resume point of a checked `state` (check_resumable) as a whole: its epoch, batch,
    sample counts and partial metrics agree with each other and with the saved batch size and
    epoch size (`epoch_size`: the run's samples per epoch now, before main's equal-shares trim,
    which the batch must fit; None: the saved --epoch-size). The sample counts of earlier epochs
    are checked against a saved --epoch-size only (left to the data, they may have differed).
    A DataError naming the file and what disagrees.

    What the trainers write: at the end of epoch e, samples seen after e epochs (none
    mid-epoch); in epoch e after batch b (1 <= b < the epoch's batches per process), each
    process's (3, b x batch size) metrics rows, the samples seen when the epoch began (0 in
    epoch 1) and those plus b batches of every process."""
    settings = state.get("args") or {}
    batch_size, saved_size = settings.get("batch_size"), settings.get("epoch_size")
    for key, value, least in (("batch_size", batch_size, 1), ("epoch_size", saved_size, 0)):
        if value is not None and not (count(value) and value >= least):
            raise DataError(f"--resume {path}: field 'args', setting {key!r} is "
                            f"{one_line(repr(value), 40)}, not a whole number >= {least}")
    epoch_size = epoch_size or saved_size or None
    epoch, seen, batch = state["epoch"], state["totalTrainingSamples_count"], state.get("batch")
    where = f"--resume {path}:"
    if not batch:
        if "trn_partial" in state:
            raise DataError(f"{where} field 'trn_partial' holds a partial epoch's metrics but "
                            f"field 'batch' is {batch!r}: a checkpoint saved at the end of an "
                            "epoch has none")
        if (epoch == 0) != (seen == 0):
            raise DataError(f"{where} field 'totalTrainingSamples_count' is {seen} after "
                            f"epoch {epoch}: " + ("none are seen before epoch 1" if epoch == 0
                                                  else "each epoch trains on some"))
        if saved_size and seen > epoch * saved_size:
            raise DataError(f"{where} field 'totalTrainingSamples_count' is {seen}, more than "
                            f"{epoch} epoch(s) of {saved_size} samples hold")
        return
    parts, start = state["trn_partial"], state["epoch_start_samples"]
    world = len(parts)
    if epoch < 1:
        raise DataError(f"{where} field 'epoch' is {epoch} but field 'batch' is {batch}: a "
                        "checkpoint saved in the middle of an epoch is in epoch 1 or later")
    for rank, part in enumerate(parts):
        if part.shape[0] != 3:
            raise DataError(f"{where} field 'trn_partial' holds {part.shape[0]} rows of metrics "
                            f"for rank {rank}, not 3 (label, prediction, loss)")
    if not count(batch_size):
        return                                     # missing: restore_settings names it
    share = epoch_size // world if epoch_size else None     # each process's samples per epoch
    if share is not None and batch >= -(-share // batch_size):
        raise DataError(
            f"{where} field 'batch' is {batch}, beyond the epoch: {world} process(es) with "
            f"{epoch_size} samples per epoch and batch size {batch_size} have "
            f"{-(-share // batch_size)} batch(es) each, and a checkpoint in the middle of the "
            "epoch follows one of the batches before the last")
    for rank, part in enumerate(parts):
        width = part.shape[1]                      # older files: the rank's whole epoch
        if width != batch * batch_size and (width != share if share is not None else
                                            width < batch * batch_size):
            raise DataError(f"{where} field 'trn_partial' holds {width} samples' metrics for "
                            f"rank {rank}, not {batch * batch_size} (field 'batch' {batch} x "
                            f"batch size {batch_size})")
    if seen != start + batch * batch_size * world:
        raise DataError(f"{where} field 'totalTrainingSamples_count' is {seen}, not "
                        f"{start + batch * batch_size * world} (field 'epoch_start_samples' "
                        f"{start} + batch {batch} x batch size {batch_size} x {world} "
                        "process(es))")
    if (epoch == 1) != (start == 0):
        raise DataError(f"{where} field 'epoch_start_samples' is {start} in epoch {epoch}: "
                        + ("epoch 1 starts at 0" if epoch == 1 else "earlier epochs saw some"))
    if saved_size and start > (epoch - 1) * saved_size:
        raise DataError(f"{where} field 'epoch_start_samples' is {start}, more than the "
                        f"{epoch - 1} epoch(s) before epoch {epoch} hold ({saved_size} samples "
                        "each)")


def restore_settings(given, state, defaults, keeps, path):
    """The settings dict of a resumed run: its saved settings, except the `keeps` flags given
    again now (how to run it: --epochs, --device, ...). `given` and `defaults` are this
    script's settings now and its parse_args([]), as dicts; comparing them tells which were
    given. A saved settings dict that lacks one of this script's flags comes from another
    script or version, and is refused."""
    saved = {**SETTINGS_ADDED_LATER, **state["args"]}
    lacking = sorted(set(defaults) - set(saved))
    if lacking:
        shown = ", ".join("--" + k.replace("_", "-") for k in lacking[:3])
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        raise DataError(f"--resume {path}: its saved settings lack {shown}{more} (saved by "
                        "another script or version); start a new run instead")
    for key, default in defaults.items():
        what = setting_kind(key, saved[key], default)
        if what is not None:
            raise DataError(f"--resume {path}: field 'args', setting {key!r} is "
                            f"{one_line(repr(saved[key]), 40)}, not {what}")
    saved.update({k: given[k] for k in keeps if k == "resume" or given[k] != defaults[k]})
    return saved


# Flags newer than some checkpoints: a saved run without them ran as their default does.
SETTINGS_ADDED_LATER = {"compile": False}
# The trainers' flags that default to None, and what a saved value of theirs must be.
OPTIONAL_SETTINGS = {"epoch_size": "count", "fold": "count", "lr": "number", "optimizer": "text",
                     "run_dir": "text", "resume": "text", "finetune": "text", "data_dir": "text",
                     "augment": "names"}


def setting_kind(key, value, default):
    """None when a saved setting fits its flag (whose default is `default`), else what it
    should be: true or false for a switch, a whole number, a finite number, text, or for a
    flag without a default nothing or OPTIONAL_SETTINGS' kind (augment: a list of names)."""
    kind = ("switch" if isinstance(default, bool) else "count" if isinstance(default, int) else
            "number" if isinstance(default, float) else "text" if isinstance(default, str) else
            OPTIONAL_SETTINGS.get(key, "any"))
    if default is None and value is None:
        return None
    ok = {"switch": isinstance(value, bool),
          "count": isinstance(value, int) and not isinstance(value, bool),
          "number": finite_number(value), "text": isinstance(value, str),
          "names": isinstance(value, list) and all(v in AUGMENT_NAMES for v in value),
          "any": value is None or isinstance(value, str) or finite_number(value)}[kind]
    return None if ok else {"switch": "true or false", "count": "a whole number",
                            "number": "a finite number", "text": "text",
                            "names": f"a list of {', '.join(AUGMENT_NAMES)}",
                            "any": "text or a finite number"}[kind]


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


def resume_training(model, optimizer, state, path, proc, best_key, epoch_size=None):
    """Restore a --resume checkpoint's weights and optimizer (none: a fresh run) and return
    where training starts (resume_point; `epoch_size` for a trainer that resumes mid-epoch).
    Every process must have read the same checkpoint (same_checkpoint)."""
    same_checkpoint(state, path, proc)
    if state is not None:
        restore_state(model, optimizer, state, path, f"{type(model).__name__}/"
                      f"{type(optimizer).__name__}")
    return resume_point(state, path, proc, best_key, epoch_size)


def same_checkpoint(state, path, proc):
    """Refuse a resume where the processes read different checkpoints (or some none): on
    machines that do not share the run folder one would start over while another resumes."""
    if proc.world == 1:
        return
    mine = None if state is None else (state["epoch"], state.get("batch", 0),
                                       state["totalTrainingSamples_count"], state.get("time"))
    found = gather_objects(mine)
    other = next((rank for rank, point in enumerate(found) if point != found[0]), None)
    if other is not None:
        shown = [f"rank {r}: " + ("none" if found[r] is None else
                                  resume_place({"epoch": found[r][0], "batch": found[r][1]}))
                 for r in (0, other)]
        raise DataError(f"--resume {path}: the processes found different checkpoints "
                        f"({'; '.join(shown)}): every machine must see the same run folder "
                        "(--run-dir on a shared filesystem)")


def resume_point(state, path, proc, best_key, epoch_size=None):
    """Start of a resumed run. A checkpoint saved at the end of epoch e starts at e + 1; one
    saved mid-epoch (`batch` > 0) at that batch, with each rank's partial metrics. Those parts
    fit only the number of processes that wrote them: another count is refused. `epoch_size`:
    this run's samples per epoch where the trainer resumes mid-epoch (checked against the
    checkpoint: check_resume_point); None: the trainer resumes only at the end of an epoch."""
    if state is None:
        return FRESH
    batch, parts = state.get("batch", 0), state.get("trn_partial")
    best = state.get(best_key, -1.0)
    if batch and epoch_size is None:
        raise DataError(f"--resume {path}: saved in the middle of epoch {state['epoch']} (field "
                        "'batch'), but this script saves and resumes at the end of an epoch only")
    if batch and (not parts or len(parts) != proc.world):
        saved = len(parts) if parts else "?"
        raise DataError(f"--resume {path}: saved in the middle of epoch {state['epoch']} by "
                        f"{saved} process(es); resume it with {saved} (each holds part of the "
                        f"epoch), not {proc.world}")
    check_resume_point(state, path, epoch_size)
    if not batch:
        return Start(state["epoch"] + 1, 0, None, state["totalTrainingSamples_count"], best)
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
