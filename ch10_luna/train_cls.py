"""Chapters 11-12: train the LUNA nodule-candidate classifier.

    python ch10_luna/train_cls.py --epochs 1                  # the built-in sample if no LUNA16
    python ch10_luna/train_cls.py --augmented --epochs 10 full-aug
    python ch10_luna/train_cls.py --resume runs/ch10/<run>/cls_full-aug.last.state --epochs 20
    torchrun --nproc_per_node=2 ch10_luna/train_cls.py --epochs 1

The book's doTraining and doValidation are train_one_epoch and evaluate, its logMetrics
metrics.py's summarize and log_metrics; main sets up the run around them (processes, mixed
precision, memory layout, checkpoints and resume, augmentation). Per epoch and phase it prints
and logs (TensorBoard and metrics.jsonl in the run directory) loss, percent correct, precision,
recall and F1; checkpoints use the book's dict format, are written atomically, and `--resume`
continues a run exactly where its last checkpoint left it, mid-epoch too.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from ch10_luna.augment import BOOK_AUGMENTATION, augment_parser, augment_spec, batch_augmenter
from ch10_luna.checkpoints import (
    close_run,
    mid_epoch_saver,
    open_run,
    parse_run_args,
    resume_training,
    run_parser,
    save_epoch_end,
    say_where_to_resume,
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
from ch10_luna.metrics import (  # noqa: F401 (LABEL, PRED, LOSS: the rows the loops fill)
    LABEL,
    LOSS,
    PRED,
    format_summary,
    log_metrics,
    summarize,
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
    process_group,
    progress,
    runtime_parser,
    unwrap,
    use_memory_format,
)
from common.device import seed_everything
from common.errors import DataError, run_cli

BOOK_BALANCED_EPOCH = 200_000           # the book's chapter 12 epoch
SYNTHETIC_EPOCH = 4_800                 # 150 batches of 32: enough to learn on the sample
RESUME_KEEPS = ("epochs", "num_workers", "device", "data_dir", "resume", "compile",
                "checkpoint_every")


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
def train_one_epoch(model, loader, optimizer, amp, augment=None, after_batch=None):
    """The book's doTraining: one pass over `loader`; returns the (3, N) metrics rows
    (label, P(nodule), loss) of every sample it trained on.

    `amp` is runtime.mixed_precision's (autocast context, grad scaler); `augment(x)` is
    chapter 12's augmentation (augment.batch_augmenter), `after_batch(rows)` runs after each
    step (main's mid-epoch checkpoints).
    """
    model.train()
    device = next(model.parameters()).device
    rows = []                                         # stay on the device: no syncs per batch
    for x, label, *_ in loader:
        x, y = x.to(device, non_blocking=True), label[:, 1].to(device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        optimizer.zero_grad()
        with amp.context:                             # autocast, or nothing in fp32
            logits, probs = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="none")
        amp.scaler.scale(loss.mean()).backward()      # loss.mean().backward() unless fp16
        amp.scaler.step(optimizer)                    # optimizer.step()
        amp.scaler.update()
        rows.append(torch.stack([y.float(), probs[:, 1].float(), loss]).detach())
        if after_batch is not None:
            after_batch(rows[-1])
    return torch.cat(rows, dim=1).cpu()


def evaluate(model, loader, amp):
    """The book's doValidation: the same pass without gradients or augmentation; the (3, N)
    metrics rows. The weights are not touched."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    with torch.inference_mode():
        for x, label, *_ in loader:
            x, y = x.to(device, non_blocking=True), label[:, 1].to(device, non_blocking=True)
            with amp.context:
                logits, probs = model(x)
                loss = F.cross_entropy(logits.float(), y, reduction="none")
            rows.append(torch.stack([y.float(), probs[:, 1].float(), loss]))
    return torch.cat(rows, dim=1).cpu()


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args, saved, run_dir = parse_run_args(parse_args, argv, "LunaModel", RESUME_KEEPS)
    with process_group(args.device) as proc:                # torchrun's ranks, or one process
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
        model = use_memory_format(LunaModel().to(proc.device), memory_format(proc.device, amp))
        optimizer = make_optimizer(model, args.optimizer, args.lr)
        start = resume_training(model, optimizer, saved, args.resume, proc, "best_f1")
        if args.compile:
            model.compile()                                 # torch.compile, names kept
        model = distribute(model, proc)                     # DDP when there are several
        run = open_run(run_dir, "cls", args.comment, proc)
        args.run_dir = str(run.dir)
        val_dl = make_loader(val_ds, range(proc.rank, len(val_ds), proc.world), args.batch_size,
                             args.num_workers, proc.device)
        best, samples, history = start.best, start.samples, []
        with say_where_to_resume(run):                      # Ctrl-C, SIGTERM: says where
            for epoch in range(start.epoch, args.epochs + 1):
                first = start.batch if epoch == start.epoch else 0     # > 0: resumed mid-epoch
                done = start.partial if first else torch.zeros(3, 0)  # their metrics rows
                order = epoch_order(train_ds.labels(), epoch_size, args.balanced, args.seed, epoch)
                order = order[:len(order) // proc.world * proc.world]  # equal shares (DDP)
                train_dl = progress(rank_loader(train_ds, order, proc, args.batch_size,
                                                args.num_workers, first), f"E{epoch} trn", proc,
                                    first)
                saver = mid_epoch_saver(args.checkpoint_every, run.last, model, optimizer,
                                        vars(args), proc, epoch, samples, len(order),
                                        args.batch_size, done, best_f1=best)
                started = time.perf_counter()
                trn_metrics = train_one_epoch(model, train_dl, optimizer, amp, batch_augmenter(
                    spec, args.seed, epoch, proc.rank, first), saver)
                trn_metrics = gather_metrics(torch.cat([done, trn_metrics], dim=1))
                trn_s, started = time.perf_counter() - started, time.perf_counter()
                val_metrics = gather_metrics(evaluate(unwrap(model), progress(
                    val_dl, f"E{epoch} val", proc), amp))        # the bare module: no collectives
                val_s = time.perf_counter() - started
                samples += len(order)
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
