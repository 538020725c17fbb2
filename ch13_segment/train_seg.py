"""Chapter 13: train the U-Net that marks nodule voxels in CT slices.

    python ch13_segment/train_seg.py --epochs 1              # the built-in sample if no LUNA16
    python ch13_segment/train_seg.py --augmented --epochs 20 --tb-prefix p2ch13 final-seg
    torchrun --nproc_per_node=2 ch13_segment/train_seg.py --epochs 1

The book's p2ch13 doTraining, doValidation and logImages are train_one_epoch, evaluate and
draw_images with log_images. Training samples are 64 x 64 crops around annotated nodules (7
slices as channels), augmented together with their labels; validation runs the whole slices
that hold nodule voxels, at epoch 1 and every --val-cadence-th epoch. The loss is the book's:
soft Dice plus 8 times the Dice of the label pixels alone. Per epoch it prints and logs the Dice
loss, TP/FN/FP as percentages of the label pixels, precision, recall and F1; at each validation
it draws the book's overlays (TP green, FP red, FN orange) as PNGs under images/. Checkpoints
are the book's dict (last every epoch, best by validation recall); `--resume` continues a run.
"""
import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from ch10_luna.augment import AugmentSpec, augment_parser, augment_spec, batch_augmenter
from ch10_luna.checkpoints import (
    close_run,
    log_epoch,
    open_run,
    parse_run_args,
    resume_training,
    run_parser,
    save_checkpoint,
    say_where_to_resume,
)
from ch10_luna.dsets import locate_luna, luna_parser, make_loader
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
from ch13_segment.dsets import (
    BOOK_EPOCH,
    context_slices,
    make_seg_datasets,
    mask_cache_dir,
    mask_slice,
)
from ch13_segment.model import UNetWrapper
from common.device import seed_everything
from common.errors import run_cli
from common.figures import FP_COLOR, LABEL_COLOR, MISSED_COLOR, TP_COLOR, lung_gray
from common.files import atomic_path

# The book's chapter 13 magnitudes (offset 0.03 of the half-width, where chapter 12 used 0.1).
SEG_AUGMENTATION = AugmentSpec(flip=True, offset=0.03, scale=0.2, rotate=True, noise=25.0)
MODEL_KWARGS = dict(in_channels=7, n_classes=1, depth=3, wf=4, padding=True, batch_norm=True,
                    up_mode="upconv")
DICE, LOSS, TP, FN, FP = range(5)      # rows of the per-sample metrics tensor
FN_WEIGHT = 8                          # the book's weight on the false-negative Dice
SYNTHETIC_EPOCH = 16_000               # 1,000 batches of 16
RESUME_KEEPS = ("epochs", "num_workers", "device", "data_dir", "resume", "compile")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[run_parser("ch13"), luna_parser(), runtime_parser(batch_size=16),
                 augment_parser(SEG_AUGMENTATION, "any angle in the slice plane")])
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (its default)")
    p.add_argument("--epoch-size", type=int, default=None,
                   help=f"training crops per epoch (default: the book's {BOOK_EPOCH:,} on "
                        f"LUNA16, {SYNTHETIC_EPOCH:,} on the synthetic sample)")
    p.add_argument("--val-cadence", type=int, default=5,
                   help="validate (and draw images) at epoch 1 and every N-th epoch")
    p.add_argument("--image-series", type=int, default=12,
                   help="series per phase drawn at each validation (the book's 12)")
    p.add_argument("--image-slices", type=int, default=6,
                   help="equidistant slices per drawn series (the book's 6)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- loss, metrics
def dice_loss(pred, label, epsilon=1.0):
    """Soft Dice loss per sample: 1 - (2 sum(p l) + eps) / (sum(p) + sum(l) + eps)."""
    dims = tuple(range(1, pred.dim()))
    overlap = (pred * label).sum(dim=dims)
    return 1 - (2 * overlap + epsilon) / (pred.sum(dim=dims) + label.sum(dim=dims) + epsilon)


def fn_weighted_loss(pred, label, fn_weight=FN_WEIGHT):
    """The book's training loss per sample: Dice + fn_weight * Dice of the label pixels alone.

    The second term sees only the prediction inside the label, so it measures what was missed;
    its mean is the book's dice.mean() + 8 * dice(pred * label, label).mean().
    """
    return dice_loss(pred, label) + fn_weight * dice_loss(pred * label, label)


def segmentation_counts(pred, label, threshold=0.5):
    """(3, N) true positive, false negative and false positive pixels per sample."""
    dims = tuple(range(1, pred.dim()))
    predicted, label = pred > threshold, label > 0.5
    return torch.stack([(predicted & label).sum(dim=dims), (~predicted & label).sum(dim=dims),
                        (predicted & ~label).sum(dim=dims)]).float()


def batch_rows(pred, label, loss):
    """(5, N) metrics rows of one batch: Dice loss, the training loss, TP, FN, FP pixels."""
    pred = pred.detach()
    return torch.cat([torch.stack([dice_loss(pred, label), loss.detach()]),
                      segmentation_counts(pred, label)])


# ----------------------------------------------------------------------------- the loops
def train_one_epoch(model, loader, optimizer, amp, augment=None):
    """The book's chapter 13 doTraining: one pass over the training crops; the (5, N) metrics
    rows (batch_rows) of every crop. `amp`: runtime.mixed_precision's; `augment(x, label)`:
    chapter 13's augmentation of crops and masks together (augment.batch_augmenter)."""
    model.train()
    device = next(model.parameters()).device
    rows = []                                         # stay on the device: no syncs per batch
    for x, label, *_ in loader:
        x, label = x.to(device, non_blocking=True), label.to(device, non_blocking=True)
        if augment is not None:
            x, label = augment(x, label)
        optimizer.zero_grad()
        with amp.context:                             # autocast, or nothing in fp32
            pred = model(x)
        pred, label = pred.float(), label.float()
        loss = fn_weighted_loss(pred, label)          # (N,): Dice + 8 x the missed Dice
        amp.scaler.scale(loss.mean()).backward()      # loss.mean().backward() unless fp16
        amp.scaler.step(optimizer)                    # optimizer.step()
        amp.scaler.update()
        rows.append(batch_rows(pred, label, loss))
    return torch.cat(rows, dim=1).cpu()


def evaluate(model, loader, amp):
    """The book's chapter 13 doValidation: whole slices, no gradients, no augmentation."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    with torch.inference_mode():
        for x, label, *_ in loader:
            x, label = x.to(device, non_blocking=True), label.to(device, non_blocking=True)
            with amp.context:
                pred = model(x)
            pred, label = pred.float(), label.float()
            rows.append(batch_rows(pred, label, fn_weighted_loss(pred, label)))
    return torch.cat(rows, dim=1).cpu()


def summarize(metrics):
    """Per-sample (5, N) metrics -> the book's numbers (percentages of the label pixels)."""
    total = metrics.double().sum(dim=1)
    tp, fn, fp = (float(total[row]) for row in (TP, FN, FP))
    ratio = lambda a, b: a / b if b else 0.0  # noqa: E731
    n = metrics.shape[1]
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "loss/all": ratio(float(total[DICE]), n), "loss/fn_weighted": ratio(float(total[LOSS]), n),
        "percent_all/tp": 100 * ratio(tp, tp + fn), "percent_all/fn": 100 * ratio(fn, tp + fn),
        "percent_all/fp": 100 * ratio(fp, tp + fn),
        "pr/precision": precision, "pr/recall": recall,
        "pr/f1_score": ratio(2 * precision * recall, precision + recall),
        "count/tp": int(tp), "count/fn": int(fn), "count/fp": int(fp), "count/samples": n,
    }


def format_summary(epoch, phase, s):
    return (f"E{epoch} {phase} dice loss {s['loss/all']:.4f} (fn-weighted "
            f"{s['loss/fn_weighted']:.3f})  of the label pixels: tp {s['percent_all/tp']:5.1f}% "
            f"fn {s['percent_all/fn']:5.1f}% fp {s['percent_all/fp']:6.1f}%  precision "
            f"{s['pr/precision']:.3f}  recall {s['pr/recall']:.3f}  f1 {s['pr/f1_score']:.3f}")


# ----------------------------------------------------------------------------- images
def gray(ct_slice):
    """(H, W) HU -> (H, W, 3) gray in [0, 1], in the lung window the three CT views share."""
    return lung_gray(ct_slice)


def overlay(ct_slice, predicted, label):
    """The book's picture: the slice at half brightness, TP green, FP red, FN orange."""
    predicted, label = np.asarray(predicted, dtype=bool), np.asarray(label, dtype=bool)
    image = gray(ct_slice)
    for color, where in ((TP_COLOR, predicted & label), (FP_COLOR, predicted & ~label),
                         (MISSED_COLOR, ~predicted & label)):
        image += where[:, :, None] * np.asarray(color, dtype=np.float32)
    return np.clip(image * 0.5, 0, 1)


def label_overlay(ct_slice, label):
    """The label alone (drawn once, at epoch 1), in the shared label colour (the book: green,
    which the overlay uses for true positives)."""
    image = gray(ct_slice)
    image += np.asarray(label, dtype=bool)[:, :, None] * np.asarray(LABEL_COLOR, dtype=np.float32)
    return np.clip(image * 0.5, 0, 1)


def image_indexes(n_slices, count):
    """`count` equidistant slice indexes from the first to the last (the book's choice)."""
    return [k * (n_slices - 1) // max(count - 1, 1) for k in range(count)]


def image_picks(dataset, n_series=12, n_slices=6):
    """[(uid, slice indexes)]: the first `n_series` series of a dataset, `n_slices` slices each
    (the book's 12 and 6), drawn at every validation."""
    return [(uid, image_indexes(dataset.masks[uid].shape[0], n_slices))
            for uid in dataset.series_uids[:n_series]]


def draw_images(model, dataset, picks, amp, with_labels=False):
    """The book's logImages: predict the picked whole slices and draw them; [(tag, (H, W, 3)
    image in [0, 1])], the labels alone too `with_labels` (the first epoch)."""
    model.eval()
    device = next(model.parameters()).device
    images = []
    for series_ndx, (uid, indexes) in enumerate(picks):
        voxels = dataset.load_ct(dataset.series_paths[uid]).voxels
        x = torch.from_numpy(np.stack([context_slices(voxels, i, dataset.context)
                                       for i in indexes]))         # (S, 7, H, W) HU
        with torch.inference_mode(), amp.context:
            pred = model(x.to(device)).float().cpu().numpy()[:, 0] > 0.5
        for slice_ndx, index in enumerate(indexes):
            ct_slice, label = x[slice_ndx, dataset.context].numpy(), mask_slice(
                dataset.masks[uid], index)
            images.append((f"{series_ndx}_prediction_{slice_ndx}",
                           overlay(ct_slice, pred[slice_ndx], label)))
            if with_labels:
                images.append((f"{series_ndx}_label_{slice_ndx}", label_overlay(ct_slice, label)))
    return images


def log_images(run, phase, epoch, samples_seen, images):
    """Each (tag, image) into TensorBoard and as images/<phase>/e<epoch>_<tag>.png; the paths."""
    import imageio.v3 as iio

    writer, written = run.writers.get(phase), []
    for tag, image in images:
        if writer is not None:
            writer.add_image(f"{phase}/{tag}", image, samples_seen, dataformats="HWC")
        path = run.dir / "images" / phase / f"e{epoch:03d}_{tag}.png"
        with atomic_path(path, "image") as tmp:
            iio.imwrite(tmp, np.round(image * 255).astype(np.uint8))
        written.append(path)
    if writer is not None:
        writer.flush()
    return written


def sha1(path):
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args, saved, run_dir = parse_run_args(parse_args, argv, "UNetWrapper", RESUME_KEEPS, "seg")
    with process_group(args.device) as proc:                # torchrun's ranks, or one process
        seed_everything(args.seed)
        luna = locate_luna(args.data_dir, args.synthetic, announce=proc.say)
        epoch_size = args.epoch_size or (SYNTHETIC_EPOCH if luna.synthetic else BOOK_EPOCH)
        train_ds, val_ds, _masks = make_seg_datasets(
            luna, mask_cache_dir(args.data_dir), args.val_stride, epoch_size, seed=args.seed,
            progress=proc.rank == 0, fold=args.fold)
        spec, amp = augment_spec(SEG_AUGMENTATION, args.augment), mixed_precision(
            proc.device, args.amp)
        proc.say(f"{len(train_ds.series_uids)} training series ({len(train_ds.nodules)} "
                 f"nodules), {epoch_size:,} training crops per epoch; {len(val_ds):,} validation "
                 f"slices of {len(val_ds.series_uids)} series; {describe(proc, amp)}; adam lr "
                 f"{args.lr:g}{'; augmented' if spec.active else ''}")
        model = use_memory_format(UNetWrapper(**MODEL_KWARGS).to(proc.device),
                                  memory_format(proc.device, amp, 2))  # channels-last on CPU
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        start = resume_training(model, optimizer, saved, args.resume, proc, "best_recall")
        if args.compile:
            model.compile()                                 # torch.compile, names kept
        model = distribute(model, proc)                     # DDP when there are several
        run = open_run(run_dir, "seg", args.comment, proc)
        args.run_dir = str(run.dir)
        val_dl = make_loader(val_ds, range(proc.rank, len(val_ds), proc.world), args.batch_size,
                             args.num_workers, proc.device)
        picks = {phase: (ds, image_picks(ds, args.image_series, args.image_slices))
                 for phase, ds in (("trn", train_ds), ("val", val_ds))}
        best, samples, history = start.best, start.samples, []
        with say_where_to_resume(run):                      # Ctrl-C, SIGTERM: says where
            for epoch in range(start.epoch, args.epochs + 1):
                train_ds.set_epoch(epoch)
                order = np.arange(epoch_size // proc.world * proc.world)   # equal shares (DDP)
                train_dl = progress(make_loader(train_ds, order[proc.rank::proc.world],
                                                args.batch_size, args.num_workers, proc.device),
                                    f"E{epoch} trn", proc)
                started = time.perf_counter()
                trn = summarize(gather_metrics(train_one_epoch(model, train_dl, optimizer, amp,
                                                               batch_augmenter(spec, args.seed,
                                                                               epoch, proc.rank))))
                entry = {"epoch": epoch, "trn": trn, "val": None,
                         "trn_samples_per_s": len(order) / (time.perf_counter() - started)}
                samples += len(order)
                proc.say(format_summary(epoch, "trn", trn)
                         + f"  [{entry['trn_samples_per_s']:.1f}/s]")
                if proc.rank == 0:
                    log_epoch(run, epoch, "trn", trn, samples)
                if epoch == 1 or epoch % args.val_cadence == 0:
                    started = time.perf_counter()
                    entry["val"] = val = summarize(gather_metrics(evaluate(unwrap(
                        model), progress(val_dl, f"E{epoch} val", proc), amp)))
                    entry["val_seconds_per_slice"] = (time.perf_counter() - started) / len(val_ds)
                    proc.say(format_summary(epoch, "val", val)
                             + f"  [{1 / entry['val_seconds_per_slice']:.1f}/s]")
                    if proc.rank == 0:
                        log_epoch(run, epoch, "val", val, samples)
                        drawn = [path for phase, (ds, picked) in picks.items()
                                 for path in log_images(run, phase, epoch, samples, draw_images(
                                     unwrap(model), ds, picked, amp, with_labels=epoch == 1))]
                        proc.say(f"{len(drawn)} images in {run.dir / 'images'}")
                history.append(entry)
                if proc.rank == 0:
                    if entry["val"] is not None and entry["val"]["pr/recall"] > best:
                        best = entry["val"]["pr/recall"]
                        save_checkpoint(run.best, model, optimizer, vars(args), epoch, samples,
                                        best_recall=best)
                        proc.say(f"best recall so far: {run.best.name} (SHA1 {sha1(run.best)})")
                    save_checkpoint(run.last, model, optimizer, vars(args), epoch, samples,
                                    best_recall=best)
                barrier()
        close_run(run)
        return unwrap(model), history


if __name__ == "__main__":
    keep_freed_memory()                 # glibc keeps freed blocks: see runtime.py
    run_cli(main)
