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
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ch10_luna.augment import AugmentSpec, augment_batch
from ch10_luna.train_cls import (
    add_augment_arguments,
    add_run_arguments,
    amp_context,
    append_metrics_row,
    augment_spec,
    barrier,
    gather_metrics,
    load_checkpoint,
    locate_luna,
    make_loader,
    optimizer_step,
    process_roles,
    restore_args,
    restore_state,
    run_distributed,
    save_checkpoint,
    start_run,
)
from ch13_segment.dsets import (
    BOOK_EPOCH,
    context_slices,
    make_seg_datasets,
    mask_cache_dir,
    mask_slice,
)
from ch13_segment.model import UNetWrapper
from common.data import add_data_dir_argument
from common.device import add_device_argument, seed_everything
from common.errors import run_cli

# The book's chapter 13 magnitudes (offset 0.03 of the half-width, where chapter 12 used 0.1).
NO_AUGMENTATION = AugmentSpec()
SEG_AUGMENTATION = AugmentSpec(flip=True, offset=0.03, scale=0.2, rotate=True, noise=25.0)
MODEL_KWARGS = dict(in_channels=7, n_classes=1, depth=3, wf=4, padding=True, batch_norm=True,
                    up_mode="upconv")
DICE, LOSS, TP, FN, FP = range(5)      # rows of the per-sample metrics tensor
FN_WEIGHT = 8                          # the book's weight on the false-negative Dice
SYNTHETIC_EPOCH = 16_000               # 1,000 batches of 16: about 2-3 minutes on 2 CPU cores
RESUME_KEEPS = ("epochs", "num_workers", "device", "data_dir", "resume")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("comment", nargs="?", default="dlwpt", help="suffix of the run directory")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16, help="per process (the book's 16)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes (0: load in the training process)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (its default)")
    add_device_argument(p)
    p.add_argument("--seed", type=int, default=0)
    add_data_dir_argument(p)
    p.add_argument("--synthetic", action="store_true",
                   help="train on the built-in synthetic sample even if LUNA16 is present")
    p.add_argument("--epoch-size", type=int, default=None,
                   help=f"training crops per epoch (default: the book's {BOOK_EPOCH:,} on "
                        f"LUNA16, {SYNTHETIC_EPOCH:,} on the synthetic sample)")
    p.add_argument("--val-stride", type=int, default=10, help="every N-th series validates")
    p.add_argument("--val-cadence", type=int, default=5,
                   help="validate (and draw images) at epoch 1 and every N-th epoch")
    add_augment_arguments(p, SEG_AUGMENTATION, rotate_help="any angle in the slice plane")
    add_run_arguments(p, tb_prefix="ch13")
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


def compute_batch_loss(model, x, label, amp_ctx):
    """((N,) training loss, (5, N) metrics rows: Dice, loss, TP, FN, FP) for one batch."""
    with amp_ctx:
        pred = model(x)
    pred, label = pred.float(), label.float()
    dice = dice_loss(pred, label)
    loss = dice + FN_WEIGHT * dice_loss(pred * label, label)
    counts = segmentation_counts(pred.detach(), label)
    return loss, torch.cat([torch.stack([dice.detach(), loss.detach()]), counts])


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


# ----------------------------------------------------------------------------- loops
def channels_last_2d(device, amp):
    """Conv2d layout: channels-last on CPU (oneDNN's native layout: this U-Net trains 1.2x
    faster in fp32, 1.25x in bf16; benchmark.py measures both) and on CUDA with --amp (tensor
    cores); NCHW otherwise."""
    return device.type == "cpu" or (device.type == "cuda" and amp)


def to_input(x, device, memory_last):
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if memory_last else x


def train_one_epoch(model, loader, optimizer, device, *, spec=NO_AUGMENTATION, amp=False,
                    scaler=None, generator_seed=0, memory_last=None, desc="trn", quiet=False):
    """One pass; returns (5, N) metrics (Dice, loss, TP, FN, FP) for every training crop.

    The crops and their labels are augmented on the device with one generator per batch seeded
    from (generator_seed, batch), so a resumed run draws the same transforms.
    """
    model.train()
    device = torch.device(device)
    memory_last = channels_last_2d(device, amp) if memory_last is None else memory_last
    metrics = torch.zeros(5, len(loader.sampler), device=device)  # on the device: no syncs
    amp_ctx, _ = amp_context(device, amp)
    generator = torch.Generator(device=device)
    bar = tqdm(loader, desc=desc, unit="batch", disable=quiet, mininterval=2.0,
               dynamic_ncols=True, leave=False)
    for i, (x, label, _uid, _index) in enumerate(bar):
        x, label = x.to(device, non_blocking=True), label.to(device, non_blocking=True)
        if spec.active:
            generator.manual_seed(generator_seed * 1_000_003 + i)
            x, label = augment_batch(x, spec, generator, label=label)
        x = to_input(x, device, memory_last)
        loss, rows = compute_batch_loss(model, x, label, amp_ctx)
        optimizer_step(loss.mean(), optimizer, scaler)
        start = i * loader.batch_size
        metrics[:, start:start + len(x)] = rows
    return metrics.cpu()


def evaluate(model, loader, device, *, amp=False, memory_last=None, desc="val", quiet=False):
    """The same per-sample metrics on whole slices, without gradients or augmentation."""
    model.eval()
    device = torch.device(device)
    memory_last = channels_last_2d(device, amp) if memory_last is None else memory_last
    metrics = torch.zeros(5, len(loader.sampler), device=device)
    amp_ctx, _ = amp_context(device, amp)
    with torch.inference_mode():
        bar = tqdm(loader, desc=desc, unit="batch", disable=quiet, mininterval=2.0,
                   dynamic_ncols=True, leave=False)
        for i, (x, label, _uid, _index) in enumerate(bar):
            x, label = to_input(x, device, memory_last), label.to(device, non_blocking=True)
            _, rows = compute_batch_loss(model, x, label, amp_ctx)
            start = i * loader.batch_size
            metrics[:, start:start + len(x)] = rows
    return metrics.cpu()


# ----------------------------------------------------------------------------- images
def gray(ct_slice):
    """(H, W) HU in [-1000, 1000] -> (H, W, 3) gray in [0, 1]."""
    g = np.clip(np.asarray(ct_slice, dtype=np.float32) / 2000 + 0.5, 0, 1)
    return np.repeat(g[:, :, None], 3, axis=2)


def overlay(ct_slice, predicted, label):
    """The book's picture: the slice at half brightness, TP green, FP red, FN orange."""
    predicted, label = np.asarray(predicted, dtype=bool), np.asarray(label, dtype=bool)
    image = gray(ct_slice)
    image[:, :, 0] += predicted & ~label                  # false positive: red
    image[:, :, 0] += ~predicted & label                  # false negative: red ...
    image[:, :, 1] += (~predicted & label) * 0.5          # ... and half green: orange
    image[:, :, 1] += predicted & label                   # true positive: green
    return np.clip(image * 0.5, 0, 1)


def label_overlay(ct_slice, label):
    """The label alone in green (drawn once, at epoch 1)."""
    image = gray(ct_slice)
    image[:, :, 1] += np.asarray(label, dtype=bool)
    return np.clip(image * 0.5, 0, 1)


def image_indexes(n_slices, count):
    """`count` equidistant slice indexes from the first to the last (the book's choice)."""
    return [k * (n_slices - 1) // max(count - 1, 1) for k in range(count)]


def log_images(model, dataset, series_uids, phase, epoch, samples_seen, out_dir, writer=None,
               *, device, amp=False, memory_last=False, n_series=12, n_slices=6):
    """Predict whole slices of the first `n_series` series and draw them (TensorBoard + PNG).

    Returns the PNG paths. `dataset` supplies series_paths, masks, load_ct and context.
    """
    import imageio.v3 as iio

    model.eval()
    amp_ctx, _ = amp_context(device, amp)
    out_dir = Path(out_dir) / "images" / phase
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def draw(image, tag):
        if writer is not None:
            writer.add_image(f"{phase}/{tag}", image, samples_seen, dataformats="HWC")
        path = out_dir / f"e{epoch:03d}_{tag}.png"
        iio.imwrite(path, np.round(image * 255).astype(np.uint8))
        written.append(path)

    for series_ndx, uid in enumerate(sorted(series_uids)[:n_series]):
        voxels = dataset.load_ct(dataset.series_paths[uid]).voxels
        mask = dataset.masks[uid]
        indexes = image_indexes(mask.shape[0], n_slices)
        x = torch.from_numpy(np.stack([context_slices(voxels, i, dataset.context)
                                       for i in indexes]))
        with torch.inference_mode(), amp_ctx:
            pred = model(to_input(x, device, memory_last)).float().cpu().numpy()[:, 0] > 0.5
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


# ----------------------------------------------------------------------------- logging
def log_epoch(run_dir, writers, epoch, phase, summary, samples_seen):
    """One JSON line in metrics.jsonl and the summary as TensorBoard scalars."""
    append_metrics_row(run_dir, epoch, phase, summary, samples_seen)
    writer = writers.get(phase)
    if writer is not None:
        for key, value in summary.items():
            writer.add_scalar(key, value, samples_seen)
        writer.flush()


def sha1(path):
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    state = None
    if args.resume:
        state = load_checkpoint(args.resume, model_name="UNetWrapper")
        args = restore_args(args, state, defaults=vars(parse_args([])), keeps=RESUME_KEEPS)
    return run_distributed(train, args, state)


def train(args, device, state=None):
    rank, world, say = process_roles()
    main_proc = rank == 0
    seed_everything(args.seed)

    luna = locate_luna(args, announce=say)
    synthetic = getattr(luna, "synthetic", False)
    epoch_size = args.epoch_size or (SYNTHETIC_EPOCH if synthetic else BOOK_EPOCH)
    train_ds, val_ds, masks = make_seg_datasets(luna, mask_cache_dir(args.data_dir),
                                                args.val_stride, epoch_size, seed=args.seed,
                                                progress=main_proc)
    train_uids = sorted(set(masks) - set(val_ds.series_uids))
    spec = augment_spec(args, SEG_AUGMENTATION)
    say(f"{len(train_uids)} training series ({len(train_ds.nodules)} nodules), "
        f"{epoch_size:,} training crops per epoch; {len(val_ds):,} validation slices of "
        f"{len(val_ds.series_uids)} series; device {device}"
        f"{f' x {world} processes' if world > 1 else ''}{'; amp' if args.amp else ''}; "
        f"adam lr {args.lr:g}{'; augmented' if spec.active else ''}")

    memory_last = channels_last_2d(device, args.amp)
    model = UNetWrapper(**MODEL_KWARGS).to(device)
    if memory_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    start_epoch, best_recall, samples_seen = 1, -1.0, 0
    if state is not None:
        restore_state(model, optimizer, state, args.resume, "this UNetWrapper/Adam")
        start_epoch = state["epoch"] + 1
        samples_seen = state["totalTrainingSamples_count"]
        best_recall = state.get("best_recall", -1.0)
        say(f"resuming {args.resume}: epoch {start_epoch}, {samples_seen:,} samples seen")
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    module = model.module if world > 1 else model
    scaler = torch.amp.GradScaler(device.type) if amp_context(device, args.amp)[1] else None

    run_dir, writers, last_path, best_path = start_run(args, main_proc, say, "seg")

    val_loader = make_loader(val_ds, np.arange(len(val_ds))[rank::world], args.batch_size,
                             args.num_workers, device)
    history = []
    for epoch in range(start_epoch, args.epochs + 1):
        train_ds.set_epoch(epoch)
        order = np.arange(epoch_size // world * world)    # equal batch counts on every rank
        loader = make_loader(train_ds, order[rank::world], args.batch_size, args.num_workers,
                             device)
        started = time.perf_counter()
        trn_metrics = gather_metrics(train_one_epoch(
            model, loader, optimizer, device, spec=spec, amp=args.amp, scaler=scaler,
            generator_seed=(args.seed * 10_007 + epoch) * 64 + rank, memory_last=memory_last,
            desc=f"E{epoch} trn", quiet=not main_proc))
        trn_seconds = time.perf_counter() - started
        samples_seen += len(order)
        trn = summarize(trn_metrics)
        entry = {"epoch": epoch, "trn": trn, "val": None,
                 "trn_samples_per_s": len(order) / trn_seconds}
        say(format_summary(epoch, "trn", trn) + f"  [{len(order) / trn_seconds:.1f}/s]")
        if main_proc:
            log_epoch(run_dir, writers, epoch, "trn", trn, samples_seen)

        validate = epoch == 1 or epoch % args.val_cadence == 0
        if validate:
            started = time.perf_counter()
            val_metrics = gather_metrics(evaluate(module, val_loader, device, amp=args.amp,
                                                  memory_last=memory_last, desc=f"E{epoch} val",
                                                  quiet=not main_proc))
            val_seconds = time.perf_counter() - started
            entry["val"] = val = summarize(val_metrics)
            entry["val_seconds_per_slice"] = val_seconds / max(len(val_ds), 1)
            say(format_summary(epoch, "val", val) + f"  [{len(val_ds) / val_seconds:.1f}/s]")
            if main_proc:
                log_epoch(run_dir, writers, epoch, "val", val, samples_seen)
                drawn = []
                for phase, dataset, uids in (("trn", train_ds, train_uids),
                                             ("val", val_ds, val_ds.series_uids)):
                    drawn += log_images(module, dataset, uids, phase, epoch, samples_seen,
                                        run_dir, writers.get(phase), device=device,
                                        amp=args.amp, memory_last=memory_last,
                                        n_series=args.image_series, n_slices=args.image_slices)
                say(f"{len(drawn)} images in {run_dir / 'images'}")
        history.append(entry)
        if main_proc:
            if validate and entry["val"]["pr/recall"] > best_recall:
                best_recall = entry["val"]["pr/recall"]
                save_checkpoint(best_path, model, optimizer, args, epoch, samples_seen,
                                best_recall=best_recall)
                say(f"best recall so far: {best_path.name} (SHA1 {sha1(best_path)})")
            save_checkpoint(last_path, model, optimizer, args, epoch, samples_seen,
                            best_recall=best_recall)
        barrier()
    for writer in writers.values():
        writer.close()
    return module, history


if __name__ == "__main__":
    run_cli(main)
