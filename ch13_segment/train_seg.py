"""Chapter 13: train the U-Net that marks nodule voxels in CT slices.

    python ch13_segment/train_seg.py --epochs 1              # the built-in sample if no LUNA16
    python ch13_segment/train_seg.py --augmented --epochs 20 --tb-prefix p2ch13 final-seg
    torchrun --nproc_per_node=2 ch13_segment/train_seg.py --epochs 1

Training samples are 64 x 64 crops around annotated nodules (7 slices as channels), augmented
on the training device together with their labels; validation runs the whole slices that hold
nodule voxels, at epoch 1 and every --val-cadence-th epoch. The loss is the book's: soft Dice
plus 8 times the Dice of the label pixels alone (false negatives cost more). Per epoch it prints
and logs (TensorBoard and metrics.jsonl in the run directory) the Dice loss, true positives,
false negatives and false positives as percentages of the label pixels, precision, recall and
F1; at every validation it draws the book's overlays (TP green, FP red, FN orange) into
TensorBoard and as PNGs under images/. Checkpoints use the book's dict format, are written
atomically (last every epoch, best by validation recall) and `--resume` continues a run.
"""
import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch

from ch10_luna.augment import AugmentSpec, augment_parser, augment_spec
from ch10_luna.checkpoints import (
    close_run,
    log_epoch,
    open_run,
    parse_run_args,
    resume_training,
    run_parser,
    save_checkpoint,
)
from ch10_luna.dsets import locate_luna, luna_parser, make_loader
from ch10_luna.runtime import (
    barrier,
    describe,
    distribute,
    keep_freed_memory,
    memory_format,
    mixed_precision,
    process_group,
    runtime_parser,
    to_input,
    unwrap,
)
from ch10_luna.train_cls import do_training, do_validation
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
SYNTHETIC_EPOCH = 16_000               # 1,000 batches of 16: about 2-3 minutes on 2 CPU cores
RESUME_KEEPS = ("epochs", "num_workers", "device", "data_dir", "resume")


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


def compute_batch_loss(model, x, label, amp_context):
    """((N,) training loss, (5, N) metrics rows: Dice, loss, TP, FN, FP) for one batch; the
    loop itself is chapter 11's (train_cls.train_one_epoch with compute=this)."""
    with amp_context:
        pred = model(x)
    pred, label = pred.float(), label.float()
    loss = fn_weighted_loss(pred, label)
    dice = dice_loss(pred.detach(), label)
    counts = segmentation_counts(pred.detach(), label)
    return loss, torch.cat([torch.stack([dice, loss.detach()]), counts])


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


def log_images(model, dataset, series_uids, phase, epoch, samples_seen, out_dir, writer=None,
               *, device, amp=None, n_series=12, n_slices=6):
    """Predict whole slices of the first `n_series` series and draw them (TensorBoard + PNG).

    Returns the PNG paths. `dataset` supplies series_paths, masks, load_ct and context.
    """
    import imageio.v3 as iio

    model.eval()
    amp = amp or mixed_precision(device, False)
    out_dir = Path(out_dir) / "images" / phase
    written = []

    def draw(image, tag):
        if writer is not None:
            writer.add_image(f"{phase}/{tag}", image, samples_seen, dataformats="HWC")
        path = out_dir / f"e{epoch:03d}_{tag}.png"
        with atomic_path(path, "image") as tmp:
            iio.imwrite(tmp, np.round(image * 255).astype(np.uint8))
        written.append(path)

    for series_ndx, uid in enumerate(sorted(series_uids)[:n_series]):
        voxels = dataset.load_ct(dataset.series_paths[uid]).voxels
        mask = dataset.masks[uid]
        indexes = image_indexes(mask.shape[0], n_slices)
        x = torch.from_numpy(np.stack([context_slices(voxels, i, dataset.context)
                                       for i in indexes]))
        with torch.inference_mode(), amp.context:
            pred = model(to_input(x, device, memory_format(device, amp, 2)))
        pred = pred.float().cpu().numpy()[:, 0] > 0.5
        centre = x[:, dataset.context].numpy()
        for slice_ndx, index in enumerate(indexes):
            label = mask_slice(mask, index)
            draw(overlay(centre[slice_ndx], pred[slice_ndx], label),
                 f"{series_ndx}_prediction_{slice_ndx}")
            if epoch == 1:
                draw(label_overlay(centre[slice_ndx], label), f"{series_ndx}_label_{slice_ndx}")
    if writer is not None:
        writer.flush()
    return written


def sha1(path):
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args, saved, run_dir = parse_run_args(parse_args, argv, "UNetWrapper", RESUME_KEEPS)
    with process_group(args.device) as proc:
        seed_everything(args.seed)
        luna = locate_luna(args.data_dir, args.synthetic, announce=proc.say)
        epoch_size = args.epoch_size or (SYNTHETIC_EPOCH if luna.synthetic else BOOK_EPOCH)
        train_ds, val_ds, masks = make_seg_datasets(
            luna, mask_cache_dir(args.data_dir), args.val_stride, epoch_size, seed=args.seed,
            progress=proc.rank == 0, fold=args.fold)
        train_uids = sorted(set(masks) - set(val_ds.series_uids))
        spec, amp = augment_spec(SEG_AUGMENTATION, args.augment), mixed_precision(
            proc.device, args.amp)
        proc.say(f"{len(train_uids)} training series ({len(train_ds.nodules)} nodules), "
                 f"{epoch_size:,} training crops per epoch; {len(val_ds):,} validation slices "
                 f"of {len(val_ds.series_uids)} series; {describe(proc, amp)}; adam lr "
                 f"{args.lr:g}{'; augmented' if spec.active else ''}")

        model = UNetWrapper(**MODEL_KWARGS).to(proc.device,
                                               memory_format=memory_format(proc.device, amp, 2))
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        start = resume_training(model, optimizer, saved, args.resume, proc, "best_recall")
        model = distribute(model, proc)
        run = open_run(run_dir, "seg", args.comment, proc)
        args.run_dir = str(run.dir)
        val_loader = make_loader(val_ds, range(proc.rank, len(val_ds), proc.world),
                                 args.batch_size, args.num_workers, proc.device)
        best, samples, history = start.best, start.samples, []
        for epoch in range(start.epoch, args.epochs + 1):
            train_ds.set_epoch(epoch)
            order = np.arange(epoch_size // proc.world * proc.world)   # equal batch counts
            loader = make_loader(train_ds, order[proc.rank::proc.world], args.batch_size,
                                 args.num_workers, proc.device)
            trn_metrics, trn_s = do_training(model, loader, optimizer, proc, epoch, args.seed,
                                             compute=compute_batch_loss, n_rows=5, spec=spec,
                                             augment_labels=True, amp=amp)
            trn = summarize(trn_metrics)
            entry = {"epoch": epoch, "trn": trn, "val": None,
                     "trn_samples_per_s": len(order) / trn_s}
            samples += len(order)
            proc.say(format_summary(epoch, "trn", trn) + f"  [{entry['trn_samples_per_s']:.1f}/s]")
            if proc.rank == 0:
                log_epoch(run, epoch, "trn", trn, samples)
            if epoch == 1 or epoch % args.val_cadence == 0:
                entry["val"], entry["val_seconds_per_slice"] = validate(
                    unwrap(model), val_loader, train_ds, val_ds, train_uids, run, epoch,
                    samples, proc, amp, args.image_series, args.image_slices)
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


def validate(model, val_loader, train_ds, val_ds, train_uids, run, epoch, samples, proc, amp,
             image_series, image_slices):
    """Whole validation slices (every rank its share, gathered), then on rank 0 the log line,
    metrics.jsonl and the book's overlays of both phases; (summary, seconds per slice)."""
    metrics, seconds = do_validation(model, val_loader, proc, epoch,
                                     compute=compute_batch_loss, n_rows=5, amp=amp)
    val = summarize(metrics)
    proc.say(format_summary(epoch, "val", val) + f"  [{len(val_ds) / seconds:.1f}/s]")
    if proc.rank == 0:
        log_epoch(run, epoch, "val", val, samples)
        drawn = []
        for phase, dataset, uids in (("trn", train_ds, train_uids),
                                     ("val", val_ds, val_ds.series_uids)):
            drawn += log_images(model, dataset, uids, phase, epoch, samples, run.dir,
                                run.writers.get(phase), device=proc.device, amp=amp,
                                n_series=image_series, n_slices=image_slices)
        proc.say(f"{len(drawn)} images in {run.dir / 'images'}")
    return val, seconds / max(len(val_ds), 1)


if __name__ == "__main__":
    keep_freed_memory()                 # glibc keeps freed blocks: see runtime.py
    run_cli(main)
