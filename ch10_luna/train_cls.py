"""Chapters 11-12: train the LUNA nodule-candidate classifier.

    python ch10_luna/train_cls.py --epochs 1                  # the built-in sample if no LUNA16
    python ch10_luna/train_cls.py --balanced --augmented --epochs 10 full-aug
    torchrun --nproc_per_node=2 ch10_luna/train_cls.py --epochs 1

Per epoch and phase it prints and logs (TensorBoard and metrics.jsonl in the run directory)
loss, percent correct, precision, recall and F1; checkpoints use the book's dict format, are
written atomically, and `--resume` continues a run exactly where its last checkpoint left it.
"""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ch10_luna.augment import (
    BOOK_AUGMENTATION,
    AugmentSpec,
    augment_batch,
    augment_parser,
    augment_spec,
)
from ch10_luna.checkpoints import (
    close_run,
    log_epoch,
    mid_epoch_saver,
    open_run,
    parse_run_args,
    resume_training,
    run_parser,
    save_epoch_end,
)
from ch10_luna.dsets import (
    LunaDataset,
    epoch_order,
    locate_luna,
    luna_parser,
    make_loader,
    rank_loader,
    read_candidates,
    split_by_series,
    validation_uids,
    warn,
)
from ch10_luna.model import LunaModel
from ch10_luna.runtime import (
    barrier,
    describe,
    distribute,
    gather_metrics,
    keep_freed_memory,
    memory_format,
    mixed_precision,
    optimizer_step,
    process_group,
    runtime_parser,
    to_input,
    unwrap,
)
from common.device import seed_everything
from common.errors import DataError, run_cli

NO_AUGMENTATION = AugmentSpec()
LABEL, PRED, LOSS = range(3)            # rows of the per-sample metrics tensor (book ch11)
BOOK_BALANCED_EPOCH = 200_000           # the book's chapter 12 epoch
SYNTHETIC_EPOCH = 4_800                 # 150 batches: about 2 minutes on 2 CPU cores
RESUME_KEEPS = ("epochs", "num_workers", "device", "data_dir", "resume", "checkpoint_every")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[run_parser("ch10"), luna_parser(), runtime_parser(batch_size=32),
                 augment_parser(BOOK_AUGMENTATION, "about the head-foot axis")])
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="sgd: the book's SGD, momentum 0.99; adam: Adam. Default: sgd on LUNA16, "
                        "adam on the synthetic sample (the book's SGD needs thousands of steps "
                        "to get going; Adam learns within the two-minute default run)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: %(default)s)")
    p.add_argument("--epoch-size", type=int, default=None,
                   help=f"training samples per epoch (default: the book's {BOOK_BALANCED_EPOCH:,} "
                        f"when balanced on LUNA16, every candidate when not; {SYNTHETIC_EPOCH:,} "
                        "on the synthetic sample)")
    p.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=True,
                   help="alternate nodules and non-nodules (book ch12; on by default so a short "
                        "run learns; --no-balanced shows chapter 11's all-negative classifier)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="also save a resumable checkpoint every N training batches (0: never)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data, model
def make_datasets(luna, val_stride=10, fold=None):
    """(training, validation) LunaDatasets, split by series (chapter 11) or by LUNA16's fold."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        candidates = read_candidates(luna)
    for w in caught:
        warn(w.message)
    train, val = split_by_series(candidates, val_uids=validation_uids(luna.series, val_stride,
                                                                       fold))
    if not train or not val:
        raise DataError(f"{len({c.series_uid for c in candidates})} series on disk: too few to "
                        "split with " + (f"--fold {fold}" if fold is not None else
                                         f"--val-stride {val_stride}"))
    return LunaDataset(train, luna.series), LunaDataset(val, luna.series)


def epoch_length(synthetic, balanced, n_candidates):
    """Samples per epoch: the book's 200,000 balanced on LUNA16, every candidate unbalanced,
    SYNTHETIC_EPOCH on the sample."""
    return SYNTHETIC_EPOCH if synthetic else BOOK_BALANCED_EPOCH if balanced else n_candidates


def make_optimizer(model, name, lr):
    """The book's SGD (chapter 11: momentum 0.99), or Adam."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.99)


# ----------------------------------------------------------------------------- the loops
def compute_batch_loss(model, x, label, amp_context):
    """The book's per-sample cross-entropy on label[:, 1] (one-hot -> class index): the (N,)
    loss and the (3, N) metrics rows (label, P(nodule), loss) of one batch."""
    with amp_context:
        logits, probs = model(x)
        loss = F.cross_entropy(logits.float(), label[:, 1], reduction="none")
    return loss, torch.stack([label[:, 1].float(), probs[:, 1].float(), loss])


def train_one_epoch(model, loader, optimizer, device, *, compute=compute_batch_loss, n_rows=3,
                    spec=NO_AUGMENTATION, augment_labels=False, amp=None, generator_seed=0,
                    metrics=None, start_batch=0, after_batch=None, desc="trn", quiet=False):
    """One pass; returns the (n_rows, N) metrics rows `compute` gives for every sample (chapter
    11's label, P(nodule) and loss by default; chapter 13 passes its segmentation loss).

    Each batch is augmented on the device by a generator seeded from (generator_seed, batch),
    so a resumed run draws the same transforms; `augment_labels` resamples the labels alongside
    (masks). `amp` is runtime.mixed_precision's Amp (None: fp32). `start_batch` and `metrics`
    continue a partial epoch (the loader then yields its remaining batches); `after_batch(done,
    total, metrics)` runs after every batch (checkpoints.mid_epoch_saver's).
    """
    model.train()
    device = torch.device(device)
    amp = amp or mixed_precision(device, False)
    total = start_batch + len(loader)
    if metrics is None:
        metrics = torch.zeros(n_rows, len(loader.sampler) + start_batch * loader.batch_size)
    metrics = metrics.to(device)                      # stays on the device: no syncs per batch
    generator = torch.Generator(device=device)
    bar = tqdm(loader, desc=desc, initial=start_batch, total=total, unit="batch",
               disable=quiet, mininterval=2.0, dynamic_ncols=True, leave=False)
    for i, (x, label, *_) in enumerate(bar, start=start_batch):
        fmt = memory_format(device, amp, x.dim() - 2)
        x, label = to_input(x, device, fmt), label.to(device, non_blocking=True)
        if spec.active:
            generator.manual_seed(generator_seed * 1_000_003 + i)
            if augment_labels:
                x, label = augment_batch(x, spec, generator, label=label)
            else:
                x = augment_batch(x, spec, generator)
            x = x.contiguous(memory_format=fmt)
        loss, rows = compute(model, x, label, amp.context)
        optimizer_step(loss.mean(), optimizer, amp.scaler)
        metrics[:, i * loader.batch_size:][:, :len(x)] = rows.detach()
        if after_batch is not None:
            after_batch(i + 1, total, metrics)
    return metrics.cpu()


def evaluate(model, loader, device, *, compute=compute_batch_loss, n_rows=3, amp=None,
             after_batch=None, desc="val", quiet=False):
    """The same loop without gradients or augmentation; the weights are not touched."""
    model.eval()
    device = torch.device(device)
    amp = amp or mixed_precision(device, False)
    metrics = torch.zeros(n_rows, len(loader.sampler), device=device)
    with torch.inference_mode():
        bar = tqdm(loader, desc=desc, unit="batch", disable=quiet, mininterval=2.0,
                   dynamic_ncols=True, leave=False)
        for i, (x, label, *_) in enumerate(bar):
            x = to_input(x, device, memory_format(device, amp, x.dim() - 2))
            _loss, rows = compute(model, x, label.to(device, non_blocking=True), amp.context)
            metrics[:, i * loader.batch_size:][:, :len(x)] = rows
            if after_batch is not None:
                after_batch(i + 1, len(loader), metrics)
    return metrics.cpu()


# ----------------------------------------------------------------------------- metrics
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


def log_metrics(run, epoch, phase, metrics, summary, samples_seen):
    """The book's logMetrics: a metrics.jsonl row and TensorBoard scalars, plus the PR curve
    and the histograms of P(nodule) (the confident ones left out, as the book does)."""
    log_epoch(run, epoch, phase, summary, samples_seen)
    writer = run.writers.get(phase)
    if writer is None:
        return
    label, pred = metrics[LABEL] > 0.5, metrics[PRED]
    writer.add_pr_curve("pr", label, pred, samples_seen)
    bins = np.linspace(0, 1, 51)
    for tag, values in (("is_neg", pred[~label & (pred > 0.01)]),
                        ("is_pos", pred[label & (pred < 0.99)])):
        if values.numel():
            writer.add_histogram(tag, values, samples_seen, bins=bins)
    writer.flush()


# ----------------------------------------------------------------------------- main
def do_training(model, loader, optimizer, proc, epoch, seed, **loop_kwargs):
    """The book's doTraining: one epoch on this rank's share, every rank's metrics gathered;
    (metrics, seconds)."""
    started = time.perf_counter()
    metrics = train_one_epoch(model, loader, optimizer, proc.device,
                              generator_seed=(seed * 10_007 + epoch) * 64 + proc.rank,
                              desc=f"E{epoch} trn", quiet=proc.rank > 0, **loop_kwargs)
    return gather_metrics(metrics), time.perf_counter() - started


def do_validation(model, loader, proc, epoch, **loop_kwargs):
    """The book's doValidation, on the bare module (no DDP collectives); (metrics, seconds)."""
    started = time.perf_counter()
    metrics = evaluate(unwrap(model), loader, proc.device, desc=f"E{epoch} val",
                       quiet=proc.rank > 0, **loop_kwargs)
    return gather_metrics(metrics), time.perf_counter() - started


def main(argv=None):
    args, saved, run_dir = parse_run_args(parse_args, argv, "LunaModel", RESUME_KEEPS)
    with process_group(args.device) as proc:
        seed_everything(args.seed)
        luna = locate_luna(args.data_dir, args.synthetic, announce=proc.say)
        train_ds, val_ds = make_datasets(luna, args.val_stride, args.fold)
        epoch_size = args.epoch_size or epoch_length(luna.synthetic, args.balanced,
                                                     len(train_ds))
        args.optimizer = args.optimizer or ("adam" if luna.synthetic else "sgd")
        spec, amp = augment_spec(BOOK_AUGMENTATION, args.augment), mixed_precision(
            proc.device, args.amp)
        proc.say(f"{len(train_ds):,} training candidates ({sum(train_ds.labels()):,} nodules), "
                 f"{len(val_ds):,} validation; {epoch_size:,} training samples per epoch "
                 f"{'balanced' if args.balanced else 'unbalanced'}; {describe(proc, amp)}; "
                 f"{args.optimizer} lr {args.lr:g}")
        model = LunaModel().to(proc.device, memory_format=memory_format(proc.device, amp))
        optimizer = make_optimizer(model, args.optimizer, args.lr)
        start = resume_training(model, optimizer, saved, args.resume, proc, "best_f1")
        model = distribute(model, proc)
        run = open_run(run_dir, "cls", args.comment, proc)
        args.run_dir = str(run.dir)
        val_dl = make_loader(val_ds, range(proc.rank, len(val_ds), proc.world), args.batch_size,
                             args.num_workers, proc.device)
        best, samples, history = start.best, start.samples, []
        for epoch in range(start.epoch, args.epochs + 1):
            first = start.batch if epoch == start.epoch else 0     # > 0: resumed mid-epoch
            order = epoch_order(train_ds.labels(), epoch_size, args.balanced, args.seed, epoch)
            order = order[:len(order) // proc.world * proc.world]  # equal batch counts (DDP)
            train_dl = rank_loader(train_ds, order, proc, args.batch_size, args.num_workers,
                                   first)
            saver = mid_epoch_saver(args.checkpoint_every, run.last, model, optimizer, vars(args),
                                    proc, epoch, samples, len(order), args.batch_size,
                                    best_f1=best)
            trn_metrics, trn_s = do_training(
                model, train_dl, optimizer, proc, epoch, args.seed, spec=spec, amp=amp,
                metrics=start.partial if first else None, start_batch=first, after_batch=saver)
            samples += len(order)
            val_metrics, val_s = do_validation(model, val_dl, proc, epoch, amp=amp)
            trn, val = summarize(trn_metrics), summarize(val_metrics)
            history.append({"epoch": epoch, "trn": trn, "val": val, "trn_samples_per_s":
                            len(order) / trn_s, "val_samples_per_s": len(val_ds) / val_s})
            proc.say(format_summary(epoch, "trn", trn) + f"  [{len(order) / trn_s:.1f}/s]")
            proc.say(format_summary(epoch, "val", val) + f"  [{len(val_ds) / val_s:.1f}/s]")
            if proc.rank == 0:
                log_metrics(run, epoch, "trn", trn_metrics, trn, samples)
                log_metrics(run, epoch, "val", val_metrics, val, samples)
                best = save_epoch_end(run, model, optimizer, vars(args), epoch, samples,
                                      val["pr/f1_score"], best, "best_f1")
            barrier()
        close_run(run)
        return unwrap(model), history


if __name__ == "__main__":
    keep_freed_memory()                 # glibc keeps freed blocks: see runtime.py
    run_cli(main)
