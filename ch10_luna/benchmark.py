"""Chapters 11-12 speed: our training and validation loops against the model-only ceilings.

    python ch10_luna/benchmark.py                     # fp32 and --amp, on the synthetic sample
    python ch10_luna/benchmark.py --compare-f1        # also: one default epoch fp32 vs --amp

Every figure comes from this one run on this device, side by side:
- crop reads: a 32x48x48 crop through np.memmap vs loading the whole CT first (the book's
  uncached path, which is why it needed a ~165 GB crop cache);
- model-only ceilings: LunaModel forward+backward+SGD step (training) and forward alone
  (validation) on in-memory tensors of the same batch size; on CPU also the training ceiling in
  the book's NCDHW layout, against the channels-last layout used here;
- the real loops: train_one_epoch (balanced, fully augmented: the book's chapter 12 setting)
  and evaluate() reading crops from the sample's .raw files, and their share of the ceiling.
"""
import argparse
import time

import numpy as np
import SimpleITK as sitk
import torch

from ch10_luna import train_cls
from ch10_luna.augment import BOOK_AUGMENTATION, AugmentSpec, batch_augmenter
from ch10_luna.dsets import epoch_order, locate_luna, make_loader
from ch10_luna.model import LunaModel
from ch10_luna.runtime import keep_freed_memory, memory_format, mixed_precision, use_memory_format
from ch10_luna.train_cls import evaluate, make_datasets, train_one_epoch
from common.ct import to_hu
from common.data import add_data_dir_argument
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import DataError, require_at_least, run_cli
from common.files import runs_dir


def time_crop_reads(dataset, n=200):
    """ms per crop: memmap crop (ours) vs SimpleITK full read then crop (the book, uncached)."""
    picks = np.random.default_rng(0).choice(len(dataset), size=n, replace=False)
    started = time.perf_counter()
    for i in picks:
        dataset[int(i)]
    ours = (time.perf_counter() - started) / n
    started = time.perf_counter()
    for i in picks[: max(5, n // 20)]:
        c = dataset.candidates[int(i)]
        image = sitk.ReadImage(str(dataset.series_paths[c.series_uid]))
        hu = to_hu(sitk.GetArrayFromImage(image))
        hu[:32, :48, :48].copy()
    full = (time.perf_counter() - started) / max(5, n // 20)
    return ours * 1e3, full * 1e3


WARMUP = 2                  # untimed steps before a ceiling is timed


def model_ceiling(device, batch_size, steps, amp, train=True, fmt=None, compiled=False):
    """samples/s of the bare model on one in-memory batch (after WARMUP steps); `fmt` the
    memory format (default: the one the loops use); `compiled`: through torch.compile."""
    seed_everything(0)
    amp = mixed_precision(device, amp)
    fmt = memory_format(device, amp) if fmt is None else fmt
    model = LunaModel().to(device, memory_format=fmt)
    if compiled:
        model.compile()
    x = (torch.randn(batch_size, 1, 32, 48, 48) * 400 - 500).to(device).contiguous(
        memory_format=fmt)
    y = torch.randint(0, 2, (batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
    model.train(train)

    def step():
        if train:
            optimizer.zero_grad()
            with amp.context:
                logits, _ = model(x)
                loss = torch.nn.functional.cross_entropy(logits.float(), y)
            amp.scaler.scale(loss).backward()
            amp.scaler.step(optimizer)
            amp.scaler.update()
        else:
            with torch.inference_mode(), amp.context:
                model(x)

    for _ in range(WARMUP):
        step()
    return steps * batch_size / timed(device, lambda: [step() for _ in range(steps)])


def timed(device, work):
    """Wall seconds of `work()`, with the device's queue drained before and after."""
    sync(device)
    started = time.perf_counter()
    work()
    sync(device)
    return time.perf_counter() - started


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clocked(loader, device):
    """(batches, seconds): `loader`'s batches, and the time from the end of the first batch's
    step to the end of the last one's (taken when the loop asks for the next batch), so
    DataLoader workers starting and the first batch's warm-up are not counted."""
    marks = []

    def batches():
        for batch in loader:
            sync(device)
            marks.append(time.perf_counter())
            yield batch
        sync(device)
        marks.append(time.perf_counter())
    return batches(), lambda: marks[-1] - marks[1]


def loop_rates(train_ds, val_ds, device, batch_size, steps, amp, spec, num_workers,
               compiled=False):
    """samples/s of train_one_epoch and evaluate on real crops, from the second batch on
    (`compiled`: the model through torch.compile, as train_cls.py --compile)."""
    seed_everything(0)
    amp = mixed_precision(device, amp)
    model = use_memory_format(LunaModel().to(device), memory_format(device, amp))
    if compiled:
        model.compile()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
    order = epoch_order(train_ds.labels(), (steps + 1) * batch_size, balanced=True, seed=0)
    batches, seconds = clocked(make_loader(train_ds, order, batch_size, num_workers, device),
                               device)
    train_one_epoch(model, batches, optimizer, amp, batch_augmenter(spec, 0, 1))
    trn = steps * batch_size / seconds()
    n_val = min(len(val_ds), (steps + 1) * batch_size)
    if n_val <= batch_size:
        raise DataError(f"{len(val_ds)} validation crops: timing needs more than one batch "
                        f"of {batch_size}")
    batches, seconds = clocked(make_loader(val_ds, range(n_val), batch_size, num_workers,
                                           device), device)
    evaluate(model, batches, amp)
    return trn, (n_val - batch_size) / seconds()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    add_device_argument(p)
    p.add_argument("--synthetic", action="store_true", help="use the built-in sample")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed batches per figure")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--no-augment", action="store_true", help="time training without augmentation")
    p.add_argument("--skip-layout", action="store_true",
                   help="skip timing the book's NCDHW layout on CPU (about a minute)")
    p.add_argument("--crop-reads", type=int, default=200,
                   help="memmap crop reads timed (default: %(default)s; 1/20 of them whole-CT)")
    p.add_argument("--compile", action="store_true",
                   help="the model through torch.compile in the ceilings and the loops (as "
                        "train_cls.py --compile)")
    p.add_argument("--compare-f1", action="store_true",
                   help="also train one default epoch in fp32 and with --amp; print both F1")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()                              # as the trainers run
    torch.backends.cudnn.benchmark = True
    luna = locate_luna(args.data_dir, args.synthetic)
    train_ds, val_ds = make_datasets(luna, val_stride=10)
    spec = AugmentSpec() if args.no_augment else BOOK_AUGMENTATION
    setting = "plain" if args.no_augment else "balanced + fully augmented"
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} timed batches, training {setting}, "
          f"{'synthetic' if luna.synthetic else 'LUNA16'} crops")

    require_at_least("--crop-reads", args.crop_reads, 1)
    require_at_least("--steps", args.steps, 1)
    ours_ms, full_ms = time_crop_reads(train_ds, min(args.crop_reads, len(train_ds)))
    print(f"crop read: memmap {ours_ms:.2f} ms, whole-CT read then crop {full_ms:.1f} ms "
          f"({full_ms / ours_ms:.0f}x): no crop cache needed")
    results = {"device": str(device), "batch_size": args.batch_size, "steps": args.steps,
               "augmented": spec.active, "crop_read_ms": {"memmap": ours_ms, "whole_ct": full_ms}}
    for amp in (False, True):
        name = f"amp ({str(mixed_precision(device, True).dtype).split('.')[-1]})" if amp \
            else "fp32"
        ceiling_trn = model_ceiling(device, args.batch_size, args.steps, amp, train=True,
                                    compiled=args.compile)
        ceiling_val = model_ceiling(device, args.batch_size, args.steps, amp, train=False,
                                    compiled=args.compile)
        trn, val = loop_rates(train_ds, val_ds, device, args.batch_size, args.steps, amp, spec,
                              args.num_workers, args.compile)
        results["amp" if amp else "fp32"] = {"ceiling_train": ceiling_trn,
                                             "ceiling_val": ceiling_val, "train": trn, "val": val}
        print(f"{name:14s} training   {trn:7.1f} samples/s = {trn / ceiling_trn:6.1%} of the "
              f"model-only ceiling {ceiling_trn:7.1f}")
        print(f"{name:14s} validation {val:7.1f} samples/s = {val / ceiling_val:6.1%} of the "
              f"forward-only ceiling {ceiling_val:7.1f}")
    if device.type == "cpu" and not args.skip_layout:
        book_layout = model_ceiling(device, args.batch_size, 1, False,
                                    fmt=torch.contiguous_format)
        results["fp32"]["ceiling_train_ncdhw"] = book_layout
        ours = results["fp32"]["ceiling_train"]
        print(f"fp32 model-only ceiling in the book's NCDHW layout: {book_layout:.1f} samples/s; "
              f"channels-last: {ours:.1f} ({ours / book_layout:.0f}x)")
    fp32, amp = results["fp32"], results["amp"]
    print(f"amp training {amp['train']:.1f} samples/s = {amp['train'] / fp32['ceiling_train']:.2f}x"
          f" the fp32 model-only ceiling ({fp32['ceiling_train']:.1f}); validation "
          f"{amp['val'] / fp32['ceiling_val']:.2f}x the fp32 forward-only ceiling")
    if args.compare_f1:
        base = ["--epochs", "1", "--device", args.device, "--run-dir"]
        if args.data_dir:
            base = ["--data-dir", args.data_dir, *base]
        if args.synthetic:
            base = ["--synthetic", *base]
        f1 = {}
        for amp in (False, True):
            run_dir = str(runs_dir("ch10") / f"benchmark-{'amp' if amp else 'fp32'}-"
                          f"{int(time.time())}")
            started = time.perf_counter()
            _, history = train_cls.main([*base, run_dir, *(["--amp"] if amp else [])])
            f1[amp] = (history[-1]["val"]["pr/f1_score"], time.perf_counter() - started)
        print(f"default epoch, same data and seed: val F1 fp32 {f1[False][0]:.3f} "
              f"({f1[False][1]:.0f} s), amp {f1[True][0]:.3f} ({f1[True][1]:.0f} s)")
        results["default_epoch_f1"] = {"fp32": f1[False][0], "amp": f1[True][0]}
    return results


if __name__ == "__main__":
    run_cli(main)
