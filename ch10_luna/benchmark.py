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
from ch10_luna.augment import BOOK_AUGMENTATION, AugmentSpec
from ch10_luna.dsets import epoch_order, locate_luna, make_loader
from ch10_luna.model import LunaModel
from ch10_luna.runtime import memory_format, mixed_precision, optimizer_step, to_input
from ch10_luna.train_cls import evaluate, make_datasets, train_one_epoch
from common.ct import to_hu
from common.data import add_data_dir_argument
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import run_cli


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


def model_ceiling(device, batch_size, steps, amp, train=True, fmt=None, warmup=2):
    """samples/s of the bare model on one in-memory batch (after `warmup` steps); `fmt` the
    memory format (default: the one the loops use)."""
    seed_everything(0)
    amp = mixed_precision(device, amp)
    fmt = memory_format(device, amp) if fmt is None else fmt
    model = LunaModel().to(device, memory_format=fmt)
    x = to_input(torch.randn(batch_size, 1, 32, 48, 48) * 400 - 500, device, fmt)
    y = torch.randint(0, 2, (batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
    model.train(train)

    def step():
        if train:
            with amp.context:
                logits, _ = model(x)
                loss = torch.nn.functional.cross_entropy(logits.float(), y)
            optimizer_step(loss, optimizer, amp.scaler)
        else:
            with torch.inference_mode(), amp.context:
                model(x)

    for _ in range(warmup):
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


def loop_rates(train_ds, val_ds, device, batch_size, steps, amp, spec, num_workers):
    """samples/s of train_one_epoch and evaluate on real crops (one warm-up batch each)."""
    seed_everything(0)
    amp = mixed_precision(device, amp)
    model = LunaModel().to(device, memory_format=memory_format(device, amp))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
    order = epoch_order(train_ds.labels(), (steps + 1) * batch_size, balanced=True, seed=0)
    warm = make_loader(train_ds, order[:batch_size], batch_size, num_workers, device)
    train_one_epoch(model, warm, optimizer, device, spec=spec, amp=amp, quiet=True)
    loader = make_loader(train_ds, order[batch_size:], batch_size, num_workers, device)
    trn = steps * batch_size / timed(device, lambda: train_one_epoch(
        model, loader, optimizer, device, spec=spec, amp=amp, quiet=True))
    n_val = min(len(val_ds), steps * batch_size)
    val_loader = make_loader(val_ds, range(n_val), batch_size, num_workers, device)
    evaluate(model, make_loader(val_ds, range(batch_size), batch_size, 0, device), device,
             amp=amp, quiet=True)
    return trn, n_val / timed(device, lambda: evaluate(model, val_loader, device, amp=amp,
                                                       quiet=True))


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
    p.add_argument("--compare-f1", action="store_true",
                   help="also train one default epoch in fp32 and with --amp; print both F1")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = True
    luna = locate_luna(args.data_dir, args.synthetic)
    train_ds, val_ds = make_datasets(luna, val_stride=10)
    spec = AugmentSpec() if args.no_augment else BOOK_AUGMENTATION
    setting = "plain" if args.no_augment else "balanced + fully augmented"
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} timed batches, training {setting}, "
          f"{'synthetic' if luna.synthetic else 'LUNA16'} crops")

    ours_ms, full_ms = time_crop_reads(train_ds)
    print(f"crop read: memmap {ours_ms:.2f} ms, whole-CT read then crop {full_ms:.1f} ms "
          f"({full_ms / ours_ms:.0f}x): no crop cache needed")
    results = {}
    for amp in (False, True):
        name = "amp (bf16)" if amp else "fp32"
        if amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            name = "amp (fp16)"
        ceiling_trn = model_ceiling(device, args.batch_size, args.steps, amp, train=True)
        ceiling_val = model_ceiling(device, args.batch_size, args.steps, amp, train=False)
        trn, val = loop_rates(train_ds, val_ds, device, args.batch_size, args.steps, amp, spec,
                              args.num_workers)
        results[amp] = (ceiling_trn, ceiling_val, trn, val)
        print(f"{name:10s} training   {trn:7.1f} samples/s = {trn / ceiling_trn:6.1%} of the "
              f"model-only ceiling {ceiling_trn:7.1f}")
        print(f"{name:10s} validation {val:7.1f} samples/s = {val / ceiling_val:6.1%} of the "
              f"forward-only ceiling {ceiling_val:7.1f}")
    if device.type == "cpu" and not args.skip_layout:
        book_layout = model_ceiling(device, args.batch_size, 1, False,
                                    fmt=torch.contiguous_format, warmup=1)
        print(f"fp32 model-only ceiling in the book's NCDHW layout: {book_layout:.1f} samples/s; "
              f"channels-last: {results[False][0]:.1f} ({results[False][0] / book_layout:.0f}x)")
    fp32_ceiling = results[False][0]
    print(f"amp training {results[True][2]:.1f} samples/s = {results[True][2] / fp32_ceiling:.2f}x"
          f" the fp32 model-only ceiling ({fp32_ceiling:.1f}); validation "
          f"{results[True][3] / results[False][1]:.2f}x the fp32 forward-only ceiling")
    if args.compare_f1:
        base = ["--epochs", "1", "--device", args.device, "--run-dir"]
        if args.data_dir:
            base = ["--data-dir", args.data_dir, *base]
        if args.synthetic:
            base = ["--synthetic", *base]
        f1 = {}
        for amp in (False, True):
            run_dir = f"runs/ch10/benchmark-{'amp' if amp else 'fp32'}-{int(time.time())}"
            started = time.perf_counter()
            _, history = train_cls.main([*base, run_dir, *(["--amp"] if amp else [])])
            f1[amp] = (history[-1]["val"]["pr/f1_score"], time.perf_counter() - started)
        print(f"default epoch, same data and seed: val F1 fp32 {f1[False][0]:.3f} "
              f"({f1[False][1]:.0f} s), amp {f1[True][0]:.3f} ({f1[True][1]:.0f} s)")
    return results


if __name__ == "__main__":
    run_cli(main)
