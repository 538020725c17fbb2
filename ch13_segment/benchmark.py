"""Chapter 13 speed: segmentation training against the model-only ceiling, fp32 and --amp.

    python ch13_segment/benchmark.py                  # on the synthetic sample if no LUNA16
    python ch13_segment/benchmark.py --augmented      # time the augmented training loop

Every figure comes from this one run on this device, side by side:
- the model-only ceiling: UNetWrapper (the book's chapter 13 settings) forward + backward + Adam
  step with the Dice + false-negative loss on one in-memory (N, 7, 64, 64) batch, in the NCHW
  and the channels-last layout (train_seg.py uses the layout `channels_last_2d` picks);
- the real loop: train_one_epoch reading 64 x 64 crops from the sample's .raw files, and its
  share of the ceiling in the same layout;
- validation: evaluate() over every validation slice, in seconds per whole slice.
"""
import argparse

import numpy as np
import torch

from ch10_luna.benchmark import timed
from ch10_luna.train_cls import amp_context, locate_luna, make_loader
from ch13_segment.dsets import make_seg_datasets, mask_cache_dir
from ch13_segment.model import UNetWrapper
from ch13_segment.train_seg import (
    MODEL_KWARGS,
    NO_AUGMENTATION,
    SEG_AUGMENTATION,
    channels_last_2d,
    evaluate,
    fn_weighted_loss,
    to_input,
    train_one_epoch,
)
from common.data import add_data_dir_argument, run_cli
from common.device import add_device_argument, pick_device, seed_everything


def new_model(device, memory_last):
    seed_everything(0)
    model = UNetWrapper(**MODEL_KWARGS).to(device)
    if memory_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.Adam(model.parameters())


def model_ceiling(device, batch_size, steps, amp, memory_last, warmup=2):
    """samples/s of the bare model training on one in-memory batch of crops."""
    model, optimizer = new_model(device, memory_last)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 7, 64, 64, generator=generator) * 400 - 500
    x = to_input(x, device, memory_last)
    label = (torch.rand(batch_size, 1, 64, 64, generator=generator) > 0.95).float().to(device)
    amp_ctx, _ = amp_context(device, amp)
    model.train()

    def step():
        with amp_ctx:
            pred = model(x)
        loss = fn_weighted_loss(pred.float(), label).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    return steps * batch_size / timed(device, lambda: [step() for _ in range(steps)])


def loop_rate(train_ds, device, batch_size, steps, amp, memory_last, spec, num_workers):
    """samples/s of train_one_epoch on real crops (after one warm-up batch)."""
    model, optimizer = new_model(device, memory_last)
    kwargs = dict(spec=spec, amp=amp, memory_last=memory_last, quiet=True)
    warm = make_loader(train_ds, range(batch_size), batch_size, num_workers, device)
    train_one_epoch(model, warm, optimizer, device, **kwargs)
    loader = make_loader(train_ds, range(batch_size, (steps + 1) * batch_size), batch_size,
                         num_workers, device)
    seconds = timed(device, lambda: train_one_epoch(model, loader, optimizer, device, **kwargs))
    return steps * batch_size / seconds, model


def validation_seconds_per_slice(model, val_ds, device, batch_size, amp, memory_last,
                                 num_workers):
    evaluate(model, make_loader(val_ds, range(min(batch_size, len(val_ds))), batch_size, 0,
                                device), device, amp=amp, memory_last=memory_last, quiet=True)
    loader = make_loader(val_ds, np.arange(len(val_ds)), batch_size, num_workers, device)
    return timed(device, lambda: evaluate(model, loader, device, amp=amp,
                                          memory_last=memory_last, quiet=True)) / len(val_ds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    add_device_argument(p)
    p.add_argument("--synthetic", action="store_true", help="use the built-in sample")
    p.add_argument("--batch-size", type=int, default=16, help="the book's 16")
    p.add_argument("--steps", type=int, default=8, help="timed batches per figure")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--augmented", action="store_true",
                   help="time the training loop with chapter 13's full augmentation")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = True
    luna = locate_luna(argparse.Namespace(data_dir=args.data_dir, synthetic=args.synthetic))
    train_ds, val_ds, _ = make_seg_datasets(luna, mask_cache_dir(args.data_dir), 10,
                                            epoch_size=(args.steps + 1) * args.batch_size)
    spec = SEG_AUGMENTATION if args.augmented else NO_AUGMENTATION
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} timed batches, training {'augmented' if spec.active else 'plain'}, "
          f"{'synthetic' if getattr(luna, 'synthetic', False) else 'LUNA16'} data; "
          f"validation: {len(val_ds)} whole slices")
    results = {}
    for amp in (False, True):
        name = "amp (bf16)" if amp else "fp32"
        if amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            name = "amp (fp16)"
        ceilings = {last: model_ceiling(device, args.batch_size, args.steps, amp, last)
                    for last in (False, True)}
        used = channels_last_2d(device, amp)
        trn, model = loop_rate(train_ds, device, args.batch_size, args.steps, amp, used, spec,
                               args.num_workers)
        val = validation_seconds_per_slice(model, val_ds, device, args.batch_size, amp, used,
                                           args.num_workers)
        results[amp] = {"ceiling_nchw": ceilings[False], "ceiling_channels_last": ceilings[True],
                        "train": trn, "layout": "channels_last" if used else "nchw",
                        "val_s_per_slice": val}
        print(f"{name:10s} model-only ceiling: NCHW {ceilings[False]:6.1f}, channels-last "
              f"{ceilings[True]:6.1f} samples/s; training loop ({results[amp]['layout']}) "
              f"{trn:6.1f} samples/s = {trn / ceilings[used]:6.1%} of its ceiling; validation "
              f"{val * 1e3:.0f} ms per slice")
    print(f"amp training {results[True]['train']:.1f} samples/s = "
          f"{results[True]['train'] / results[False]['train']:.2f}x fp32 "
          f"({results[False]['train']:.1f})")
    return results


if __name__ == "__main__":
    run_cli(main)
