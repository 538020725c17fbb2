"""Chapters 11-12: train the LUNA nodule-candidate classifier.

    python ch10_luna/train_cls.py --epochs 1                  # the built-in sample if no LUNA16
    python ch10_luna/train_cls.py --balanced --augmented --epochs 10 full-aug
    torchrun --nproc_per_node=2 ch10_luna/train_cls.py --epochs 1

Per epoch and phase it prints and logs (TensorBoard and metrics.jsonl in the run directory)
loss, percent correct, precision, recall and F1; checkpoints use the book's dict format, are
written atomically, and `--resume` continues a run exactly where its last checkpoint left it.
"""
import argparse
import datetime
import json
import os
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ch10_luna.augment import BOOK_AUGMENTATION, AugmentSpec, augment_batch
from ch10_luna.dsets import (
    LunaDataset,
    epoch_order,
    find_luna,
    luna_dir,
    read_candidates,
    split_by_series,
)
from ch10_luna.model import LunaModel, read_checkpoint
from ch10_luna.synthetic import MARKER, generate_sample
from common.data import REPO_ROOT, add_data_dir_argument, data_root
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import DataError, run_cli

NO_AUGMENTATION = AugmentSpec()
LABEL, PRED, LOSS = range(3)            # rows of the per-sample metrics tensor (book ch11)
BOOK_BALANCED_EPOCH = 200_000           # the book's chapter 12 epoch
SYNTHETIC_EPOCH = 4_800                 # 150 batches: about 2 minutes on 2 CPU cores
RESUME_KEEPS = ("epochs", "num_workers", "device", "data_dir", "resume", "checkpoint_every")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("comment", nargs="?", default="dlwpt", help="suffix of the run directory")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes (0: load in the training process; crops "
                        "are memory-mapped reads, cheap next to the model)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="sgd: the book's SGD, momentum 0.99; adam: Adam. Default: sgd on LUNA16, "
                        "adam on the synthetic sample (the book's SGD needs thousands of steps "
                        "to get going; Adam learns within the two-minute default run)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: %(default)s)")
    add_device_argument(p)
    p.add_argument("--seed", type=int, default=0)
    add_data_dir_argument(p)
    p.add_argument("--synthetic", action="store_true",
                   help="train on the built-in synthetic sample even if LUNA16 is present")
    p.add_argument("--epoch-size", type=int, default=None,
                   help=f"training samples per epoch (default: the book's {BOOK_BALANCED_EPOCH:,} "
                        f"when balanced on LUNA16, every candidate when not; {SYNTHETIC_EPOCH:,} "
                        "on the synthetic sample)")
    p.add_argument("--val-stride", type=int, default=10, help="every N-th series validates")
    p.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=True,
                   help="alternate nodules and non-nodules (book ch12; on by default so a short "
                        "run learns; --no-balanced shows chapter 11's all-negative classifier)")
    add_augment_arguments(p, BOOK_AUGMENTATION, rotate_help="about the head-foot axis")
    add_run_arguments(p, tb_prefix="ch10")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="also save a resumable checkpoint every N training batches (0: never)")
    return p.parse_args(argv)


def add_augment_arguments(parser, magnitudes, rotate_help):
    """--augmented and the five --augment-* flags, with `magnitudes` in their help."""
    m = magnitudes
    parser.add_argument("--augmented", action="store_true", help="every augmentation below")
    parser.add_argument("--augment-flip", action="store_true")
    parser.add_argument("--augment-offset", action="store_true",
                        help=f"+-{m.offset:g} of the half-width")
    parser.add_argument("--augment-scale", action="store_true", help=f"+-{m.scale:.0%}%")
    parser.add_argument("--augment-rotate", action="store_true", help=rotate_help)
    parser.add_argument("--augment-noise", action="store_true",
                        help=f"Gaussian, std {m.noise:g} HU")


def add_run_arguments(parser, tb_prefix):
    """--amp, --run-dir, --tb-prefix and --resume: how every training script runs and saves."""
    parser.add_argument("--amp", action="store_true",
                        help="bfloat16 autocast (float16 with a grad scaler where bf16 is missing)")
    parser.add_argument("--run-dir", default=None,
                        help="default: runs/<tb-prefix>/<time>-<comment>")
    parser.add_argument("--tb-prefix", default=tb_prefix,
                        help="the book's TensorBoard folder name")
    parser.add_argument("--resume", default=None, help="checkpoint (.state) to continue from")


def augment_spec(args, magnitudes=BOOK_AUGMENTATION):
    """The flags -> magnitudes; `--augmented` turns on all of them at the book's values.

    `magnitudes` holds the values a flag turns on: chapter 12's by default; chapter 13's
    segmentation passes its own (offset 0.03).
    """
    on = lambda flag: args.augmented or flag  # noqa: E731
    m = magnitudes
    return AugmentSpec(flip=on(args.augment_flip), offset=m.offset if on(args.augment_offset)
                       else 0.0, scale=m.scale if on(args.augment_scale) else 0.0,
                       rotate=on(args.augment_rotate),
                       noise=m.noise if on(args.augment_noise) else 0.0)


# ----------------------------------------------------------------------------- data
def locate_luna(args, announce=print):
    """LunaFiles for the run: LUNA16 when present, else the synthetic sample (generated once)."""
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise DataError(f"--data-dir {args.data_dir} does not exist")
    real = luna_dir(args.data_dir)
    if not args.synthetic and real.is_dir():
        return find_luna(real)                        # a LUNA folder that is there must be usable
    sample = data_root(args.data_dir) / "synthetic" / "luna"
    if is_main_process() and not (sample / MARKER).exists():
        announce(f"generating the synthetic LUNA sample in {sample} (once) ...")
        generate_sample(sample)
    barrier()
    announce("=" * 78 + "\n SYNTHETIC DATA: " + ("--synthetic given" if args.synthetic else
             f"no LUNA16 found under {real}") + f".\n Training on the built-in sample in {sample}"
             " (generated CTs in LUNA16's format).\n For the real data: python -m common.data "
             "download luna-csv luna-subset0  (then more subsets)\n" + "=" * 78)
    luna = find_luna(sample)
    luna.synthetic = True
    return luna


def make_datasets(luna, val_stride):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        candidates = read_candidates(luna)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    train, val = split_by_series(candidates, val_stride)
    if not train or not val:
        raise DataError(f"{len({c.series_uid for c in candidates})} series on disk: too few to "
                        f"split with --val-stride {val_stride}")
    return LunaDataset(train, luna.series), LunaDataset(val, luna.series)


def make_loader(dataset, order, batch_size, num_workers, device):
    """Batches in exactly `order` (a plain list of indices is a valid sampler)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=list(map(int, order)),
                      num_workers=num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=False)


# ----------------------------------------------------------------------------- distributed
def is_main_process():
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def setup_distributed(device_name):
    """Under torchrun: join the process group (gloo on CPU, nccl on CUDA); returns the device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return pick_device(device_name)
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def run_distributed(train_fn, args, state=None):
    """`train_fn(args, device, state)` inside the process group torchrun asks for (if any)."""
    device = setup_distributed(args.device)
    try:
        return train_fn(args, device, state)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def process_roles():
    """(rank, world size, say): `say` prints on rank 0 only."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return rank, world, print if rank == 0 else (lambda *a, **k: None)


def gather_metrics(metrics):
    """All ranks' (3, n) metrics concatenated (on every rank); the tensor itself when alone."""
    if not dist.is_initialized():
        return metrics
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, metrics)
    return torch.cat(parts, dim=1)


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


# ----------------------------------------------------------------------------- training
def make_optimizer(model, name, lr):
    """The book's SGD (chapter 11: momentum 0.99), or Adam."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.99)


def amp_context(device, enabled):
    """bf16 autocast where the device has it, else fp16; (context, needs_grad_scaler)."""
    if not enabled:
        return nullcontext(), False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16), True
    return torch.autocast(device.type, dtype=torch.bfloat16), False


def channels_last(device, amp):
    """Channels-last 3-D layout: on CPU oneDNN's Conv3d backward is many times faster in it
    (measured in benchmark.py); on CUDA it pays off with the tensor cores of --amp."""
    return device.type == "cpu" or (device.type == "cuda" and amp)


def to_input(x, device, memory_last):
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last_3d) if memory_last else x


def compute_batch_loss(model, x, label, amp_ctx):
    """Per-sample cross-entropy on label[:, 1] (one-hot -> class index); (loss, P(nodule))."""
    with amp_ctx:
        logits, probs = model(x)
        loss = F.cross_entropy(logits.float(), label[:, 1], reduction="none")
    return loss, probs[:, 1].float()


def optimizer_step(loss, optimizer, scaler=None):
    """zero_grad, backward and step; through the GradScaler when fp16 autocast needs one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def train_one_epoch(model, loader, optimizer, device, *, spec=NO_AUGMENTATION, amp=False,
                    scaler=None, generator_seed=0, metrics=None, start_batch=0, after_batch=None,
                    desc="trn", quiet=False):
    """One pass; returns (3, N) metrics: label, P(nodule) and loss for every sample.

    `start_batch` and `metrics` continue a partial epoch (the loader then yields its remaining
    batches); `after_batch(i, metrics)` is called after every batch (for checkpoints).
    """
    model.train()
    device = torch.device(device)
    n = len(loader.sampler) + start_batch * loader.batch_size
    if metrics is None:
        metrics = torch.zeros(3, n)
    metrics = metrics.to(device)                      # stays on the device: no syncs per batch
    amp_ctx, _ = amp_context(device, amp)
    memory_last = channels_last(device, amp)
    generator = torch.Generator(device=device)
    bar = tqdm(loader, desc=desc, initial=start_batch, total=start_batch + len(loader),
               unit="batch", disable=quiet, mininterval=2.0, dynamic_ncols=True, leave=False)
    for i, (x, label, _uid, _irc) in enumerate(bar, start=start_batch):
        x, label = to_input(x, device, memory_last), label.to(device, non_blocking=True)
        if spec.active:
            generator.manual_seed(generator_seed * 1_000_003 + i)  # same draws after a resume
            x = augment_batch(x, spec, generator)
        loss, prob = compute_batch_loss(model, x, label, amp_ctx)
        optimizer_step(loss.mean(), optimizer, scaler)
        start = i * loader.batch_size
        metrics[:, start:start + len(label)] = torch.stack(
            [label[:, 1].float(), prob, loss]).detach()
        if after_batch is not None:
            after_batch(i + 1, metrics)
    return metrics.cpu()


def evaluate(model, loader, device, *, amp=False, desc="val", quiet=False):
    """The same loop without gradients: (3, N) metrics; the weights are not touched."""
    model.eval()
    device = torch.device(device)
    metrics = torch.zeros(3, len(loader.sampler), device=device)
    amp_ctx, _ = amp_context(device, amp)
    memory_last = channels_last(device, amp)
    with torch.inference_mode():
        bar = tqdm(loader, desc=desc, unit="batch", disable=quiet, mininterval=2.0,
                   dynamic_ncols=True, leave=False)
        for i, (x, label, _uid, _irc) in enumerate(bar):
            x, label = to_input(x, device, memory_last), label.to(device, non_blocking=True)
            loss, prob = compute_batch_loss(model, x, label, amp_ctx)
            start = i * loader.batch_size
            metrics[:, start:start + len(label)] = torch.stack([label[:, 1].float(), prob, loss])
    return metrics.cpu()


def summarize(metrics, threshold=0.5):
    """Per-sample (3, N) metrics -> the book's numbers; no NaN when a class is absent."""
    label = metrics[LABEL] > 0.5
    predicted = metrics[PRED] > threshold
    neg, pos = int((~label).sum()), int(label.sum())
    tp = int((label & predicted).sum())
    tn = int((~label & ~predicted).sum())
    fp, fn = neg - tn, pos - tp
    ratio = lambda a, b: a / b if b else 0.0  # noqa: E731
    mean = lambda t: float(t.mean()) if t.numel() else 0.0  # noqa: E731
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "loss/all": mean(metrics[LOSS]), "loss/neg": mean(metrics[LOSS][~label]),
        "loss/pos": mean(metrics[LOSS][label]),
        "correct/all": 100 * ratio(tp + tn, neg + pos), "correct/neg": 100 * ratio(tn, neg),
        "correct/pos": 100 * ratio(tp, pos),
        "pr/precision": precision, "pr/recall": recall,
        "pr/f1_score": ratio(2 * precision * recall, precision + recall),
        "count/tp": tp, "count/fp": fp, "count/fn": fn, "count/tn": tn,
        "count/neg": neg, "count/pos": pos,
    }


def format_summary(epoch, phase, s):
    return (f"E{epoch} {phase} loss {s['loss/all']:.4f}  correct {s['correct/all']:5.1f}% "
            f"(neg {s['correct/neg']:5.1f}% of {s['count/neg']}, pos {s['correct/pos']:5.1f}% of "
            f"{s['count/pos']})  precision {s['pr/precision']:.3f}  recall {s['pr/recall']:.3f}"
            f"  f1 {s['pr/f1_score']:.3f}")


# ----------------------------------------------------------------------------- logging
def append_metrics_row(run_dir, epoch, phase, summary, samples_seen):
    """One JSON line in `run_dir`/metrics.jsonl: epoch, phase, samples seen and the summary."""
    row = {"epoch": epoch, "phase": phase, "samples": samples_seen, **summary}
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def log_epoch(run_dir, writers, epoch, phase, metrics, summary, samples_seen):
    """One JSON line in metrics.jsonl and the book's TensorBoard scalars, PR curve, histograms."""
    append_metrics_row(run_dir, epoch, phase, summary, samples_seen)
    writer = writers.get(phase)
    if writer is None:
        return
    for key, value in summary.items():
        writer.add_scalar(key, value, samples_seen)
    label, pred = metrics[LABEL] > 0.5, metrics[PRED]
    writer.add_pr_curve("pr", label, pred, samples_seen)
    bins = np.linspace(0, 1, 51)
    negatives = pred[~label & (pred > 0.01)]        # the book skips the confident ones
    positives = pred[label & (pred < 0.99)]
    if negatives.numel():
        writer.add_histogram("is_neg", negatives, samples_seen, bins=bins)
    if positives.numel():
        writer.add_histogram("is_pos", positives, samples_seen, bins=bins)
    writer.flush()


def open_writers(run_dir):
    from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard: only when used
    return {phase: SummaryWriter(log_dir=str(run_dir / phase)) for phase in ("trn", "val")}


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, optimizer, args, epoch, samples_seen, **extra):
    """The book's dict, written to a temporary file and renamed: never half a checkpoint."""
    module = model.module if hasattr(model, "module") else model
    state = {
        "model_state": module.state_dict(), "optimizer_state": optimizer.state_dict(),
        "model_name": type(module).__name__, "optimizer_name": type(optimizer).__name__,
        "epoch": epoch, "totalTrainingSamples_count": samples_seen, "sys_argv": sys.argv,
        "time": str(datetime.datetime.now()), "args": vars(args), **extra,
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path, model_name="LunaModel"):
    """A checkpoint dict for --resume; DataError when it is not a resumable `model_name` one."""
    state = read_checkpoint(path, "--resume")
    if state.get("model_name") != model_name:
        raise DataError(f"--resume {path}: holds a {state.get('model_name')!r}, "
                        f"this script trains a {model_name}")
    if "args" not in state:
        raise DataError(f"--resume {path}: has no training state to resume (a published or "
                        "exported model); train from scratch or fine-tune instead")
    return state


def start_run(args, main_proc, say, prefix):
    """The run directory and its checkpoint paths: (run_dir, writers, last_path, best_path).

    Rank 0 makes the folder and opens the TensorBoard writers ({} on other ranks); the
    checkpoints are `<prefix>_<comment>.last.state` and `.best.state`.
    """
    run_dir = run_directory(args)
    args.run_dir = str(run_dir)
    writers = {}
    if main_proc:
        run_dir.mkdir(parents=True, exist_ok=True)
        writers = open_writers(run_dir)
        say(f"run directory {run_dir}")
    return (run_dir, writers, run_dir / f"{prefix}_{args.comment}.last.state",
            run_dir / f"{prefix}_{args.comment}.best.state")


def restore_state(model, optimizer, state, path, what):
    """Load a --resume checkpoint's model and optimizer state; DataError when they do not fit.

    `what` names the model and optimizer in the message, e.g. 'LunaModel/sgd'.
    """
    try:
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise DataError(f"--resume {path}: does not fit {what} "
                        f"({str(e).splitlines()[0][:160]})") from None


def restore_args(args, state, defaults=None, keeps=RESUME_KEEPS):
    """The resumed run keeps its own settings, except how to run it now, where given again.

    `defaults` (a dict; this script's parse_args([]) when None) tells which of the `keeps`
    flags were given on the command line.
    """
    saved = dict(state["args"])
    defaults = vars(parse_args([])) if defaults is None else defaults
    saved.update({k: getattr(args, k) for k in keeps
                  if k == "resume" or getattr(args, k) != defaults[k]})
    return argparse.Namespace(**saved)


def run_directory(args):
    """--run-dir; else the resumed checkpoint's folder; else runs/<tb-prefix>/<time>-<comment>."""
    return Path(args.run_dir) if args.run_dir else (
        Path(args.resume).parent if args.resume else REPO_ROOT / "runs" / args.tb_prefix /
        f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}-{args.comment}")


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    state = None
    if args.resume:
        state = load_checkpoint(args.resume)
        args = restore_args(args, state)
    return run_distributed(train, args, state)


def train(args, device, state=None):
    rank, world, say = process_roles()
    main_proc = rank == 0
    seed_everything(args.seed)

    luna = locate_luna(args, announce=say)
    train_ds, val_ds = make_datasets(luna, args.val_stride)
    epoch_size = args.epoch_size or (SYNTHETIC_EPOCH if luna.synthetic else
                                     BOOK_BALANCED_EPOCH if args.balanced else len(train_ds))
    spec = augment_spec(args)
    say(f"{len(train_ds):,} training candidates ({sum(train_ds.labels()):,} nodules), "
        f"{len(val_ds):,} validation; {epoch_size:,} training samples per epoch "
        f"{'balanced' if args.balanced else 'unbalanced'}; device {device}"
        f"{f' x {world} processes' if world > 1 else ''}{'; amp' if args.amp else ''}; "
        f"{args.optimizer or ('adam' if luna.synthetic else 'sgd')} lr {args.lr:g}")

    model = LunaModel().to(device)
    if channels_last(device, args.amp):
        model = model.to(memory_format=torch.channels_last_3d)
    args.optimizer = args.optimizer or ("adam" if luna.synthetic else "sgd")
    optimizer = make_optimizer(model, args.optimizer, args.lr)
    start_epoch, start_batch, partial, best_f1, samples_seen = 1, 0, None, -1.0, 0
    if state is not None:
        restore_state(model, optimizer, state, args.resume, f"LunaModel/{args.optimizer}")
        start_epoch, start_batch = state["epoch"], state.get("batch", 0)
        samples_seen, best_f1 = state["totalTrainingSamples_count"], state.get("best_f1", -1.0)
        samples_seen = state.get("epoch_start_samples", samples_seen)   # mid-epoch: its start
        parts = state.get("trn_partial")
        partial = parts[rank] if parts and start_batch else None
        if start_batch == 0:                          # saved at the end of an epoch
            start_epoch += 1
        say(f"resuming {args.resume}: epoch {start_epoch}, batch {start_batch}, "
            f"{state['totalTrainingSamples_count']:,} samples seen")
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    scaler = torch.amp.GradScaler(device.type) if amp_context(device, args.amp)[1] else None

    run_dir, writers, last_path, best_path = start_run(args, main_proc, say, "cls")

    val_order = np.arange(len(val_ds))[rank::world]
    val_loader = make_loader(val_ds, val_order, args.batch_size, args.num_workers, device)
    history = []
    for epoch in range(start_epoch, args.epochs + 1):
        order = epoch_order(train_ds.labels(), epoch_size, args.balanced, args.seed, epoch)
        order = order[:len(order) // world * world]   # equal batch counts on every rank (DDP)
        my_order = rank_share(order, rank, world, args.batch_size)
        first = start_batch if epoch == start_epoch else 0
        loader = make_loader(train_ds, my_order[first * args.batch_size:], args.batch_size,
                             args.num_workers, device)
        epoch_start_samples = samples_seen

        len_batches = -(-len(my_order) // args.batch_size)

        def after_batch(done, metrics, epoch=epoch, base=epoch_start_samples,
                        len_batches=len_batches, epoch_len=len(order),  # noqa: B008
                        best_f1=best_f1):
            if not args.checkpoint_every or done % args.checkpoint_every or done == len_batches:
                return
            parts = [metrics.cpu()] if world == 1 else None
            if world > 1:
                parts = [None] * world
                dist.all_gather_object(parts, metrics.cpu())
            if main_proc:
                seen = base + min(done * args.batch_size * world, epoch_len)
                save_checkpoint(last_path, model, optimizer, args, epoch, seen, batch=done,
                                trn_partial=parts, best_f1=best_f1, epoch_start_samples=base)

        started = time.perf_counter()
        trn_metrics = train_one_epoch(
            model, loader, optimizer, device, spec=spec, amp=args.amp, scaler=scaler,
            generator_seed=(args.seed * 10_007 + epoch) * 64 + rank, metrics=partial if
            epoch == start_epoch else None, start_batch=first, after_batch=after_batch,
            desc=f"E{epoch} trn", quiet=not main_proc)
        trn_seconds = time.perf_counter() - started
        samples_seen = epoch_start_samples + len(order)
        trn_metrics = gather_metrics(trn_metrics)
        started = time.perf_counter()
        module = model.module if world > 1 else model      # no DDP collectives in validation
        val_metrics = gather_metrics(evaluate(module, val_loader, device, amp=args.amp,
                                              desc=f"E{epoch} val", quiet=not main_proc))
        val_seconds = time.perf_counter() - started
        trn, val = summarize(trn_metrics), summarize(val_metrics)
        history.append({"epoch": epoch, "trn": trn, "val": val,
                        "trn_samples_per_s": len(order) / trn_seconds,
                        "val_samples_per_s": len(val_ds) / val_seconds})
        if main_proc:
            say(format_summary(epoch, "trn", trn) + f"  [{len(order) / trn_seconds:.1f}/s]")
            say(format_summary(epoch, "val", val) + f"  [{len(val_ds) / val_seconds:.1f}/s]")
            log_epoch(run_dir, writers, epoch, "trn", trn_metrics, trn, samples_seen)
            log_epoch(run_dir, writers, epoch, "val", val_metrics, val, samples_seen)
            if val["pr/f1_score"] > best_f1:
                best_f1 = val["pr/f1_score"]
                save_checkpoint(best_path, model, optimizer, args, epoch, samples_seen,
                                best_f1=best_f1)
            save_checkpoint(last_path, model, optimizer, args, epoch, samples_seen,
                            best_f1=best_f1)
        barrier()
    for writer in writers.values():
        writer.close()
    module = model.module if hasattr(model, "module") else model
    return module, history


if __name__ == "__main__":
    run_cli(main)
