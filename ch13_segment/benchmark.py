"""Chapters 13-14 speed, every figure side by side from one run on one device.

    python ch13_segment/benchmark.py                  # U-Net training against its ceiling
    python ch13_segment/benchmark.py --networks       # both networks against the matmul rate
    python ch13_segment/benchmark.py --analysis --real-ct   # nodule_analysis against the book's way
    python ch13_segment/benchmark.py --sharing        # the analysis past one process

Training: the U-Net's forward + backward + step on an in-memory batch (the ceiling, NCHW and
channels-last), train_seg's loop on the sample's crops as a share of it, validation per slice;
`--compile` times them through torch.compile. --networks: the U-Net and the classifier in fp32,
bf16 and int8, eager and compiled, in GFLOP/s beside this CPU's 2048 x 2048 matmul rate, with
their agreement with fp32 on chapter 4's real CT, then training steps likewise. --analysis:
nodule_analysis per CT, the book's way (composed here) against every precision, eager and
compiled, with each one's detections against fp32's. --sharing: the next-CT prefetch on and off,
1 process x 2 threads against 2 x 1, LUNA16 projected on 1-64 ranks. Tables: NOTES.md.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ch10_luna.augment import AugmentSpec, batch_augmenter
from ch10_luna.benchmark import clocked, timed
from ch10_luna.dsets import CROP_IRC, locate_luna, make_loader
from ch10_luna.model import LunaModel
from ch10_luna.runtime import keep_freed_memory, memory_format, mixed_precision, use_memory_format
from ch13_segment import nodule_analysis as na
from ch13_segment import precision as prec
from ch13_segment import sharing
from ch13_segment.dsets import context_slices, make_seg_datasets, mask_cache_dir, split_series
from ch13_segment.model import UNetWrapper
from ch13_segment.train_seg import (
    MODEL_KWARGS,
    SEG_AUGMENTATION,
    evaluate,
    fn_weighted_loss,
    train_one_epoch,
)
from common.ct import Ct, load_ct, write_mhd
from common.data import add_data_dir_argument, book_file, data_root
from common.device import add_device_argument, device_name, pick_device, seed_everything
from common.errors import run_cli

BOOK_BATCH = 4                 # the book's nodule_analysis.py --batch-size default
REAL_CT = "p1ch4/volumetric-dicom/2-LUNG 3.0  B70f-04083"   # chapter 4's chest CT, 99 slices


def new_model(device, fmt, compiled=False):
    seed_everything(0)
    model = UNetWrapper(**MODEL_KWARGS).to(device, memory_format=fmt)
    if compiled:
        model.compile()                            # as train_seg.py --compile
    return model, torch.optim.Adam(model.parameters())


def model_ceiling(device, batch_size, steps, amp, fmt, warmup=2, compiled=False):
    """samples/s of the bare model training on one in-memory batch of crops, in layout `fmt`."""
    model, optimizer = new_model(device, fmt, compiled)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 7, 64, 64, generator=generator) * 400 - 500
    x = x.to(device).contiguous(memory_format=fmt)
    label = (torch.rand(batch_size, 1, 64, 64, generator=generator) > 0.95).float().to(device)
    amp = mixed_precision(device, amp)
    model.train()

    def step():
        optimizer.zero_grad()
        with amp.context:
            pred = model(x)
        loss = fn_weighted_loss(pred.float(), label).mean()
        amp.scaler.scale(loss).backward()
        amp.scaler.step(optimizer)
        amp.scaler.update()

    for _ in range(warmup):
        step()
    return steps * batch_size / timed(device, lambda: [step() for _ in range(steps)])


def loop_rate(train_ds, device, batch_size, steps, amp, spec, num_workers, compiled=False):
    """samples/s of chapter 13's training loop on real crops, from the second batch on."""
    amp = mixed_precision(device, amp)
    model, optimizer = new_model(device, memory_format(device, amp, 2), compiled)
    use_memory_format(model, memory_format(device, amp, 2))
    batches, seconds = clocked(make_loader(train_ds, range((steps + 1) * batch_size),
                                           batch_size, num_workers, device), device)
    train_one_epoch(model, batches, optimizer, amp, batch_augmenter(spec, 0, 1))
    return steps * batch_size / seconds(), model


def validation_seconds_per_slice(model, val_ds, device, batch_size, amp, num_workers,
                                 max_slices=None):
    """Seconds per whole validation slice (at most `max_slices` of them), after a warm-up."""
    n = min(len(val_ds), max_slices or len(val_ds))
    amp = mixed_precision(device, amp)
    evaluate(model, make_loader(val_ds, range(min(batch_size, n)), batch_size, 0, device), amp)
    loader = make_loader(val_ds, np.arange(n), batch_size, num_workers, device)
    return timed(device, lambda: evaluate(model, loader, amp)) / n


# ----------------------------------------------------------------------------- the analysis
def luna_sized_ct(ct, n_slices, size=512):
    """`ct` resampled (linearly) to (n_slices, size, size) over the same field of view."""
    shape = (n_slices, size, size)
    hu = ndimage.zoom(ct.hu, [n / m for n, m in zip(shape, ct.shape)], order=1)
    spacing_xyz = [s * m / n for s, m, n in zip(ct.spacing_xyz, ct.shape[::-1], shape[::-1])]
    return Ct(hu, ct.origin_xyz, spacing_xyz, ct.direction)


def compare_detections(ref, other, margin=0.01, threshold=na.NODULE_THRESHOLD):
    """How far two analyses of one CT (fp32 and bf16) differ.

    Candidates pair up when their centres lie within one voxel. The detections (candidates
    passing the classifier) count as the same when every passing candidate has a partner and
    no pair changes sides of the classifier threshold unless both probabilities lie within
    `margin` of it, or the centre moved under 0.1 voxel across a voxel boundary, which moves the
    classifier's crop by a voxel (`same`; both kinds count as `classifier_flips_near`). Also
    counted: unpaired candidates (they come from segmentation voxels changing sides of 0.5) and
    those voxels, with how many were within `margin` of 0.5.
    """
    a, b = ref["detections"], other["detections"]
    centres_a = np.array([d.center_irc for d in a]).reshape(-1, 3)
    centres_b = np.array([d.center_irc for d in b]).reshape(-1, 3)
    distance = np.linalg.norm(centres_a[:, None] - centres_b[None], axis=-1)
    paired = [(i, int(np.argmin(row))) for i, row in enumerate(distance)
              if len(b) and row.min() <= 1.0]
    flipped = [(i, j) for i, j in paired
               if (a[i].prob_nodule > threshold) != (b[j].prob_nodule > threshold)]
    flips = [(a[i].prob_nodule, b[j].prob_nodule, float(distance[i, j])) for i, j in flipped]
    flip_centres = ([centres_a[i] for i, _ in flipped], [centres_b[j] for _, j in flipped])
    # A flip is allowed near the classifier's threshold, or when the centre sat on a voxel
    # boundary (the crop grid's threshold) and crossed it: the crop then moves a whole voxel.
    near = [abs(pa - threshold) <= margin and abs(pb - threshold) <= margin
            or (np.round(ca) != np.round(cb)).any() and d < 0.1
            for (pa, pb, d), ca, cb in zip(flips, *flip_centres)]
    unpaired_a = set(range(len(a))) - {i for i, _ in paired}
    unpaired_b = set(range(len(b))) - {j for _, j in paired}
    unpaired_passing = sum(a[i].prob_nodule > threshold for i in unpaired_a) \
        + sum(b[j].prob_nodule > threshold for j in unpaired_b)
    mask_a, mask_b = ref["probs"] > na.SEG_THRESHOLD, other["probs"] > na.SEG_THRESHOLD
    voxel_flips = ref["probs"][mask_a != mask_b]
    voxels_near = int((np.abs(voxel_flips - na.SEG_THRESHOLD) <= margin).sum())
    passing_pairs = sum(a[i].prob_nodule > threshold and b[j].prob_nodule > threshold
                        for i, j in paired)
    passing = (sum(d.prob_nodule > threshold for d in a),
               sum(d.prob_nodule > threshold for d in b))
    return {"candidates": (len(a), len(b)), "paired": len(paired),
            "passing_common": passing_pairs, "passing_union": sum(passing) - passing_pairs,
            "unpaired": (len(unpaired_a), len(unpaired_b)), "unpaired_passing": unpaired_passing,
            "classifier_flips": len(flips), "classifier_flips_near": int(sum(near)),
            "flips": flips, "passing": passing,
            "voxel_flips": int(voxel_flips.size), "voxel_flips_near": voxels_near,
            "same": all(near) and unpaired_passing == 0}


def analysis_cts(luna, slice_counts, series_uid, workdir, real_ct=None):
    """(name, path, n_slices) to time: `real_ct` (a DICOM folder or .mhd) as it is, LUNA16's
    CT as it is, or the sample's validation CT resampled to each of `slice_counts` slices."""
    if real_ct is not None:
        return [(Path(real_ct).name, Path(real_ct), None)]
    uid = series_uid or split_series(luna.series, 10)[1][0]
    if not getattr(luna, "synthetic", False):
        return [(uid, luna.series[uid], None)]
    ct = load_ct(luna.series[uid])
    out = []
    for n in slice_counts:
        big = luna_sized_ct(ct, n)
        path = write_mhd(Path(workdir) / f"{uid}_{n}.mhd", np.round(big.hu).astype(np.int16),
                         big.origin_xyz, big.spacing_xyz, big.direction)
        out.append((uid, path, n))
    return out


def analysis_variants(precisions, erosions, compiled=(False, True)):
    """(label, (precision, U-Net's precision, compiled, erosion)) per row, after the book's
    way: each precision at each erosion (inf: the book's; 1.0: the default), eager and
    compiled (fp32 and bf16; int8 has its own compiled path), and the int8 classifiers with
    the bf16 U-Net where both are asked."""
    rows = []
    for erosion in erosions:
        pairs = [(p, p) for p in precisions]
        if "int8" in precisions and "bf16" in precisions:      # int8 classifier, bf16 U-Net
            pairs.append(("int8", "bf16"))
        for precision, seg_precision in pairs:
            name = precision if precision == seg_precision else f"{precision}+{seg_precision}"
            for c in compiled if seg_precision != "int8" else (False,):
                rows.append((f"{name}{' compiled' if c else ''}, erosion {erosion:g}",
                             (precision, seg_precision, c, erosion)))
    return rows


def book_way(path, seg, cls, device, annotations):
    """The analysis as the book's code runs it, on this code: the NCHW and NCDHW layouts,
    batches of 4, fp32, the erosion along every axis and the centres of mass over the whole
    volume at once (ndimage.center_of_mass with every label), timed by stage like
    analyze_series, whose dict it returns."""
    seg = prec.prepare(seg.to(device), "fp32", fmt=torch.contiguous_format)
    cls = prec.prepare(cls.to(device), "fp32", fmt=torch.contiguous_format)
    timing = {}
    with na.timed(timing, "load"):
        ct = load_ct(path)
        hu = ct.hu
    with na.timed(timing, "segmentation"):
        probs = na.segment_ct(seg, ct, BOOK_BATCH, device)
    with na.timed(timing, "grouping"):
        clean = na.clean_mask(probs > na.SEG_THRESHOLD, ct.spacing_xyz[::-1], float("inf"))
        labels, count = ndimage.label(clean)
        centers = [tuple(map(float, c)) for c in ndimage.center_of_mass(
            hu + na.HU_WEIGHT_OFFSET, labels, np.arange(1, count + 1))]
    with na.timed(timing, "classification"):
        p_nodule = na.classify(cls, ct, centers, BOOK_BATCH, device)
    detections = [na.Detection(ct.irc_to_xyz(c), c, float(p), None)
                  for c, p in zip(centers, p_nodule)]
    return {"shape": ct.shape, "detections": detections, "probs": probs, "timing": timing,
            "rechecked": 0, "table": na.match_and_score(detections, annotations)}


def analysis_benchmark(luna, device, seg, cls, slice_counts, series_uid=None, batch_size=4,
                       repeats=1, precisions=na.PRECISIONS, erosions=(float("inf"), 1.0),
                       real_ct=None, cache_dir=None, keep_memory=None, compiled=(False, True)):
    """nodule_analysis per CT for the book's way and every analysis_variants row, side by
    side: seconds by stage (the best of `repeats` rounds that each run every variant once,
    after one untimed run of each that compiles, warms up and gives the detections compared),
    the ratio to the book's way timed here, and each precision's detections against fp32's at
    the same erosion (compare_detections); `seg` and `cls` are checkpoint paths.
    `keep_memory` (the script passes runtime.keep_freed_memory) runs after the book's way,
    which keeps glibc's defaults. `compiled`: (False, True) times each fp32 and bf16 row eager
    and compiled ahead of time, (False,) eager only."""
    models = na.load_models(seg, cls)
    annotations = na.read_nodules(luna)
    print(f"nodule_analysis on {device} ({device_name(device)}), {torch.get_num_threads()} "
          f"threads; seg {seg}, cls {cls}")
    started = time.perf_counter()
    variants = analysis_variants(precisions, erosions, compiled)
    calibration = (prec.calibration_sets(luna, [], batch_size) if "int8" in precisions
                   else None)
    prepared = {(p, sp, c): na.prepare_models(models, p, sp, device, calibration, batch_size,
                                              cache_dir, (c, c))
                for _label, (p, sp, c, _erosion) in variants}
    prepare_s = time.perf_counter() - started
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for uid, path, n in analysis_cts(luna, slice_counts, series_uid, workdir, real_ct):
            truth = annotations.get(uid, [])
            calls = {label: partial(analysis_run, path, prepared[(p, sp, c)], truth, device,
                                    batch_size, erosion)
                     for label, (p, sp, c, erosion) in variants}
            # The book's way runs as the book's code would, with glibc's default allocator;
            # the rest after keep_freed_memory, as nodule_analysis.py runs.
            runs = timed_rounds({"book's way": partial(book_way, path, *models[:2], device,
                                                       truth)}, repeats)
            if keep_memory is not None:
                keep_memory()
            runs.update(timed_rounds(calls, repeats))
            results.append(report_ct(uid, n, runs, precisions, erosions))
    return {"prepare_s": prepare_s, "cts": results}


def analysis_run(path, models, annotations, device, batch_size, erosion):
    """analyze_series, with how many crops its Rechecked classifiers re-scored in fp32 (the
    probabilities kept for compare_detections, the CT and labels let go)."""
    before = na.rechecked(models)
    timing = {}
    with na.timed(timing, "load"):
        ct = na.read_ct(path)
    result = na.analyze_series(ct, models, annotations, device, batch_size, erosion)
    result["timing"] = {**timing, **result["timing"]}
    result["rechecked"] = na.rechecked(models) - before
    del result["ct"], result["labels"]
    return result


def timed_rounds(calls, repeats):
    """label -> the analysis of calls[label](), with the fastest of `repeats` rounds' timing:
    one untimed run of each first (it compiles int8, warms the caches and gives the detections
    compared), then rounds that run every call once each, so that a busy or throttled machine
    slows them alike."""
    runs = {label: call() for label, call in calls.items()}
    for r in runs.values():
        r["timing"] = None
    for _ in range(repeats):
        for label, call in calls.items():
            timing = call()["timing"]
            best = runs[label]["timing"]
            if best is None or sum(timing.values()) < sum(best.values()):
                runs[label]["timing"] = timing
    return runs


def report_ct(uid, n, runs, precisions, erosions):
    """Print one CT's rows and return them as data: timings, ratios to the book's way, and the
    detections of each precision against fp32 at the same erosion."""
    book = sum(runs["book's way"]["timing"].values())
    shape = runs["book's way"]["shape"]
    print(f"\nCT {'x'.join(map(str, shape))} ({'resampled sample CT ' if n else ''}{uid})")
    rows = {}
    for label, r in runs.items():
        t = r["timing"]
        total = sum(t.values())
        passing = sum(d.prob_nodule > na.NODULE_THRESHOLD for d in r["detections"])
        rows[label] = {"timing": t, "total_s": total, "vs_book": book / total,
                       "candidates": len(r["detections"]), "passing": passing,
                       "rechecked": r["rechecked"]}
        print(f"  {label:31s} " + " ".join(f"{k} {v:6.2f}" for k, v in t.items())
              + f"  total {total:6.2f} s = {book / total:4.1f}x the book's way; "
              f"{len(r['detections'])} candidates, {passing} pass"
              + (f" ({r['rechecked']} re-scored in fp32)" if r["rechecked"] else ""))
    for erosion in erosions:
        ref = runs.get(f"fp32, erosion {erosion:g}")
        for label in runs:
            if ref is not None and label.endswith(f", erosion {erosion:g}") and \
                    runs[label] is not ref:
                diff = compare_detections(ref, runs[label])
                rows[label]["compare"] = diff
                print(f"  {label.split(',')[0]} vs fp32 (erosion {erosion:g}): "
                      f"{describe_diff(diff)}")
    book_vs = compare_detections(runs["fp32, erosion inf"], runs["book's way"]) \
        if "fp32, erosion inf" in runs else None
    if book_vs is not None:
        print(f"  the book's way vs fp32 (erosion inf): {describe_diff(book_vs)}")
    return {"series_uid": uid, "shape": shape, "rows": rows, "book_vs_fp32": book_vs}


def describe_diff(diff):
    common, union = diff["passing_common"], diff["passing_union"]
    return (f"{diff['paired']} candidates paired, unpaired {diff['unpaired'][0]} / "
            f"{diff['unpaired'][1]} ({diff['unpaired_passing']} passing); passing "
            f"{diff['passing'][0]} / {diff['passing'][1]}, {common} of their union of {union} "
            f"in common ({common / union if union else 1:.1%}); classifier flips "
            f"{diff['classifier_flips']} ({diff['classifier_flips_near']} within 0.01 of 0.5 or "
            f"across a voxel boundary); mask voxels flipped {diff['voxel_flips']:,}: "
            f"{'the same detections' if diff['same'] else 'DIFFERENT detections'}")


# ----------------------------------------------------------------------------- the networks
def matmul_rate(dtype, device, n=2048, repeats=10):
    """GFLOP/s of an n x n matmul in `dtype` on `device` (best of `repeats`): the ceiling the
    networks' rates are set against."""
    device = torch.device(device)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    best = min(timed(device, lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def run_batches(run, inputs, batch_size):
    """`run` over `inputs` (N, ...) in batches; the outputs concatenated."""
    outs = [run(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    return tuple(torch.cat(parts) for parts in zip(*outs))


def agreement(reference, outputs, kind):
    """Agreement of one variant's outputs with fp32 eager's: the largest |P - P_fp32| and the
    fraction of 0.5 decisions that differ (per crop for 'cls', per voxel for 'unet')."""
    p_ref = reference[1][:, 1] if kind == "cls" else reference
    p = outputs[1][:, 1] if kind == "cls" else outputs
    return {"max_abs_diff": float((p - p_ref).abs().max()),
            "decisions_differ": float(((p_ref > 0.5) != (p > 0.5)).float().mean()),
            "n": int(p.numel())}


def flops_of(work):
    """FLOPs `work()` does, as torch.utils.flop_counter counts them (a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def best_ms(calls, repeats):
    """{label: fastest ms of calls[label]()}: rounds that call every one once each, so that a
    busy machine slows them alike."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for label, call in calls.items():
            best[label] = min(best[label], 1e3 * timed(torch.device("cpu"), call))
    return best


def inference_variants(model, batch_size, calibration, cache_dir):
    """label -> the prepared model, eager and compiled at each precision (int8: its own
    compiled path); fp32 eager, the reference, first."""
    runs = {}
    for precision in ("fp32", "bf16", "int8"):
        for compiled in ((False, True) if precision != "int8" else (True,)):
            label = f"{precision} {'compiled' if compiled else 'eager'}"
            started = time.perf_counter()
            runs[label] = prec.prepare(model, precision, batch_size=batch_size,
                                       calibration=calibration, cache_dir=cache_dir,
                                       compiled=compiled)
            runs[label].prepare_s = time.perf_counter() - started
    return runs


def network_rows(name, model, inputs, batch_size, calibration, cache_dir, rates, repeats):
    """One network's inference table: per variant ms per batch, GFLOP/s and its share of the
    same precision's matmul rate, and agreement with fp32 eager over all `inputs`."""
    example = inputs[:batch_size]
    flops = flops_of(lambda: prec.prepare(model, "fp32")(example))
    runs = inference_variants(model, batch_size, calibration, cache_dir)
    outputs = {}
    for label, run in runs.items():                   # compiles, loads, warms up; all inputs
        started = time.perf_counter()
        outputs[label] = run_batches(run, inputs, batch_size)
        run.first_s = time.perf_counter() - started
    ms = best_ms({label: (lambda run=run: run(example)) for label, run in runs.items()},
                 repeats)
    reference, rows = outputs["fp32 eager"], {}
    for label, out in outputs.items():
        precision = label.split()[0]
        gflops = flops / ms[label] / 1e6
        rate = rates.get(precision)
        rows[label] = {"ms": ms[label], "gflops": gflops, "share": gflops / rate if rate else None,
                       "vs_fp32_eager": ms["fp32 eager"] / ms[label],
                       "agreement": agreement(reference, out, name),
                       "first_call_s": runs[label].first_s}
        share = f"{gflops / rate:5.0%} of {precision} matmul" if rate else " " * 19
        a = rows[label]["agreement"]
        print(f"{name:4s} batch {batch_size:<2d} {label:14s} {ms[label]:8.1f} ms {gflops:6.1f} "
              f"GFLOP/s {share}  {rows[label]['vs_fp32_eager']:4.2f}x fp32 eager  max|dP| "
              f"{a['max_abs_diff']:.1e}, {a['decisions_differ']:.3%} of {a['n']:,} decisions "
              f"differ; first call {runs[label].first_s:.1f} s", flush=True)
    return {"flops_per_batch": flops, "rows": rows}


def training_rows(model_fn, x, label_fn, loss_fn, rates, steps, repeats):
    """LunaModel or U-Net training steps on one in-memory batch, eager and torch.compile'd, fp32
    and bf16 autocast: samples/s, GFLOP/s and the share of the matmul rate."""
    rows = {}
    y = label_fn(x)
    for precision in ("fp32", "bf16"):
        amp = mixed_precision("cpu", precision == "bf16")
        for compiled in (False, True):
            model = model_fn()
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
            forward = torch.compile(model) if compiled else model

            def step(forward=forward, optimizer=optimizer, amp=amp):
                optimizer.zero_grad()
                with amp.context:
                    out = forward(x)
                loss_fn(out, y).backward()
                optimizer.step()
            started = time.perf_counter()
            step()                                        # compiles
            first = time.perf_counter() - started
            flops = flops_of(step) if not compiled else rows[f"{precision} eager"]["flops"]
            best = min(timed(torch.device("cpu"), lambda: [step() for _ in range(steps)])
                       for _ in range(repeats)) / steps
            label = f"{precision} {'compiled' if compiled else 'eager'}"
            gflops = flops / best / 1e9
            rows[label] = {"samples_per_s": len(x) / best, "flops": flops, "gflops": gflops,
                           "share": gflops / rates[precision], "first_step_s": first}
    return rows


def networks_benchmark(luna, data_dir, repeats, cache_dir, steps=4):
    """The two networks at the CPU's limit: inference of the U-Net on chapter 4's real CT and
    of the classifier on crops around the candidates it finds, then training steps, each row
    beside the same CPU's matmul rate measured in this run."""
    rates = {"fp32": matmul_rate(torch.float32, "cpu"), "bf16": matmul_rate(torch.bfloat16,
                                                                           "cpu")}
    print(f"{device_name('cpu')}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"2048x2048 matmul: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} "
          f"GFLOP/s; best of {repeats} interleaved rounds")
    seg, cls = na.load_models(book_file(na.BOOK_SEG_MODEL, data_dir, "luna-models"),
                              book_file(na.BOOK_CLS_MODEL, data_dir, "luna-models"))[:2]
    ct = load_ct(book_file(REAL_CT, data_dir, "dicom-ct"))
    slices = torch.stack([torch.from_numpy(context_slices(ct.hu, i))
                          for i in range(ct.shape[0])])              # (99, 7, 512, 512) HU
    probs = run_batches(prec.prepare(seg, "fp32"), slices, 4)[:, 0].numpy()
    mask = na.clean_mask(probs > na.SEG_THRESHOLD, ct.spacing_xyz[::-1], float("inf"))
    centers, _ = na.group_candidates(mask, ct.hu)
    crops = torch.from_numpy(np.stack([ct.crop_irc(c, CROP_IRC) for c in centers])).unsqueeze(1)
    print(f"{REAL_CT}: {ct.shape} voxels, {len(centers)} candidates (the book's erosion); "
          f"int8 calibrated on the training series of {luna.root}")
    slices_cal, crops_cal, _ = prec.calibration_sets(luna, [], 4)
    out = {"matmul_gflops": rates, "unet": network_rows(
        "unet", seg, slices, 4, slices_cal, cache_dir, rates, repeats)}
    out["cls"] = network_rows("cls", cls, crops, 32, crops_cal, cache_dir, rates, repeats)
    generator = torch.Generator().manual_seed(0)
    for name, make, x, label_fn, loss_fn in (
            ("cls", lambda: use_memory_format(LunaModel(), torch.channels_last_3d),
             torch.randn(32, 1, 32, 48, 48, generator=generator) * 400 - 500,
             lambda x: torch.arange(len(x)) % 2,
             lambda out, y: torch.nn.functional.cross_entropy(out[0].float(), y)),
            ("unet", lambda: use_memory_format(UNetWrapper(**MODEL_KWARGS), torch.channels_last),
             torch.randn(16, 7, 64, 64, generator=generator) * 400 - 500,
             lambda x: (x[:, 3:4] > 0).float(),
             lambda out, y: fn_weighted_loss(out.float(), y).mean())):
        rows = training_rows(make, x, label_fn, loss_fn, rates, steps, repeats)
        out[f"{name}_training"] = rows
        for label, r in rows.items():
            precision = label.split()[0]
            vs_eager = r["samples_per_s"] / rows[f"{precision} eager"]["samples_per_s"]
            print(f"{name:4s} training batch {len(x):<2d} {label:14s} {r['samples_per_s']:7.1f} "
                  f"samples/s {r['gflops']:6.1f} GFLOP/s {r['share']:5.0%} of {precision} "
                  f"matmul  {vs_eager:4.2f}x eager; first step {r['first_step_s']:.1f} s",
                  flush=True)
    return out


# ----------------------------------------------------------------------------- past one process
LUNA16_CTS, LUNA16_CANDIDATES = 888, 754_975       # candidates_V2.csv's rows
# LUNA16's mean CT: 120 GB of int16 voxels (book, ch. 10) over 888 CTs of 512 x 512 slices.
LUNA16_SLICES = round(120e9 / LUNA16_CTS / 2 / 512 ** 2)


def drop_from_page_cache(paths):
    """Ask the kernel to forget the files' cached pages (as a CT not read for a while is: 888
    CTs do not fit in memory), so the next read comes from the disk; a no-op where unsupported."""
    for path in paths:
        for f in (Path(path), Path(path).with_suffix(".raw")):
            with contextlib.suppress(OSError, AttributeError):
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def sharing_cts(luna, n_cts, n_slices, workdir, cache_dir):
    """A data root under `workdir` holding `n_cts` of the sample's CTs, as they are or, with
    `n_slices`, resampled to (n_slices, 512, 512) as LUNA16 keeps them (.mhd + .raw), with the
    sample's CSVs, and `cache_dir` as its program cache: the .mhd paths."""
    folder = Path(workdir) / "luna"
    (folder / "subset0").mkdir(parents=True, exist_ok=True)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "cache").mkdir()
    (Path(workdir) / "cache" / "programs").symlink_to(Path(cache_dir).resolve())
    for name in ("candidates.csv", "annotations.csv", "annotations_with_malignancy.csv"):
        if (luna.root / name).is_file():
            (folder / name).write_bytes((luna.root / name).read_bytes())
    paths = []
    for uid in sorted(luna.series)[:n_cts]:
        ct = load_ct(luna.series[uid])
        ct = luna_sized_ct(ct, n_slices) if n_slices else ct
        paths.append(write_mhd(folder / "subset0" / f"{uid}.mhd",
                               np.round(ct.hu).astype(np.int16), ct.origin_xyz,
                               ct.spacing_xyz, ct.direction))
    return paths


def prefetch_pass(paths, models, device, prefetch):
    """One analysis of every CT in `paths`, the next CT read in the background or not, from a
    cold page cache: (wall seconds, seconds spent waiting for CTs)."""
    drop_from_page_cache(paths)
    started, waited = time.perf_counter(), 0.0
    if prefetch:
        for _path, ct, wait, _error in sharing.prefetched(paths, na.read_ct):
            na.analyze_series(ct, models, [], device)
            waited += wait
    else:
        for path in paths:
            read = time.perf_counter()
            ct = na.read_ct(path)
            waited += time.perf_counter() - read
            na.analyze_series(ct, models, [], device)
    return time.perf_counter() - started, waited


def analysis_process(workdir, seg, cls, world, threads, out):
    """One whole run of nodule_analysis.py over the data root `workdir`, alone or under
    torchrun with `world` processes, each with `threads` threads: (wall seconds, its JSON)."""
    script = Path(na.__file__)
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={world}"] if world > 1 else [sys.executable])
    argv = [*launch, str(script), "--run-validation", "--include-train", "--data-dir",
            str(workdir), "--seg-model", str(seg), "--cls-model", str(cls), "--no-png",
            "--no-volumes", "--no-markups", "--json", str(out)]
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, text=True,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - started, json.loads(Path(out).read_text())


def run_costs(wall, doc, world, sizes):
    """Split a run's wall seconds: per CT (the JSON's stages), each rank's share (sharing.share
    on the same sizes, as the run split them), and what is left: the start-up (interpreter,
    imports, models, programs, process group) and the merge."""
    per_ct = [sum(s["timing_s"].values()) for s in doc["series"]]
    busiest = max(sum(per_ct[i] for i in part) for part in sharing.share(sizes, world))
    return {"wall_s": wall, "ct_s": per_ct, "busiest_rank_s": busiest,
            "startup_s": wall - busiest}


def sharing_benchmark(luna, device, seg, cls, n_cts, n_slices, repeats, cache_dir):
    """The analysis past one process on `n_cts` of the sample's CTs (resampled to `n_slices`
    slices of 512 x 512, or as they are), side by side: in one process with and without the next
    CT read in the background (from a cold page cache), then whole runs of nodule_analysis.py,
    1 process x 2 threads against torchrun's 2 processes x 1 thread, with each run's start-up;
    and from those costs, LUNA16 on 1, 8 and 64 ranks."""
    models = na.load_models(seg, cls)
    with tempfile.TemporaryDirectory() as workdir:
        paths = sharing_cts(luna, n_cts, n_slices, workdir, cache_dir)
        shapes = [load_ct(p).shape for p in paths]
        print(f"{n_cts} CTs of the sample{', resampled' if n_slices else ''}: "
              + ", ".join("x".join(map(str, s)) for s in shapes)
              + f"; seg {Path(seg).name}, cls {Path(cls).name}; {torch.get_num_threads()} threads")
        prepared = na.prepare_models(models, "fp32", "fp32", device, None, BOOK_BATCH,
                                     cache_dir, na.compile_choice(None, device, "fp32", n_cts))
        prefetch_pass(paths[:1], prepared, device, False)         # warm-up: programs, caches
        passes = {False: [], True: []}
        for _ in range(repeats):
            for prefetch in (False, True):
                passes[prefetch].append(prefetch_pass(paths, prepared, device, prefetch))
        plain, ahead = (min(passes[k]) for k in (False, True))
        print(f"one process, {n_cts} CTs: reading each CT when it comes {plain[0]:.2f} s (of "
              f"which reading {plain[1]:.2f} s), the next read in the background "
              f"{ahead[0]:.2f} s (waiting {ahead[1]:.2f} s): {plain[0] / ahead[0]:.3f}x")
        sizes = [sharing.header_voxels(p) for p in sorted(paths)]
        analysis_process(workdir, seg, cls, 1, 2, Path(workdir) / "warm.json")   # warm-up
        runs = {1: [], 2: []}
        for _ in range(repeats):
            for world in (1, 2):
                wall, doc = analysis_process(workdir, seg, cls, world, 2 // world,
                                             Path(workdir) / f"{world}.json")
                runs[world].append(run_costs(wall, doc, world, sizes))
                runs[world][-1]["candidates"] = [len(s["candidates"]) for s in doc["series"]]
                runs[world][-1]["stages"] = [s["timing_s"] for s in doc["series"]]
    best = {w: min(r, key=lambda c: c["wall_s"]) for w, r in runs.items()}
    for world, threads in ((1, 2), (2, 1)):
        b = best[world]
        print(f"nodule_analysis.py, {world} process(es) x {threads} thread(s): {b['wall_s']:.2f} "
              f"s wall; CTs {sum(b['ct_s']):.2f} s in all, the busiest rank "
              f"{b['busiest_rank_s']:.2f} s; start-up and merge {b['startup_s']:.2f} s")
    print(f"2 processes x 1 thread against 1 process x 2 threads: "
          f"{best[1]['wall_s'] / best[2]['wall_s']:.2f}x")
    voxels = sum(sizes) / len(sizes)
    return {"prefetch": {"plain": plain, "ahead": ahead}, "runs": runs,
            "projection": luna16_projection(best[2], voxels, ahead[1] / n_cts)}


def luna16_projection(run, voxels, wait_s, ranks=(1, 8, 64)):
    """Hours for LUNA16 on `ranks` processes of one thread each, from a 1-thread rank's costs
    in `run` (analysis_process under torchrun, on CTs of `voxels` voxels on average): the U-Net
    and grouping per voxel, the classifier per crop, the start-up, and `wait_s`, the seconds a
    CT kept the analysis waiting when read from a cold page cache with the next-CT prefetch
    (scaled by voxels); for the detection track (nodule_analysis.py: every CT, LUNA16_SLICES
    slices, as many crops as a CT has listed candidates on average) and the false-positive
    track (classify_candidates.py: LUNA16_CANDIDATES crops, a read per CT)."""
    stages, crops = run["stages"], sum(run["candidates"])
    luna_voxels = LUNA16_SLICES * 512 ** 2
    per_ct_seg = sum(s["segmentation"] + s["grouping"] for s in stages) / len(stages) * (
        luna_voxels / voxels)
    per_crop = sum(s["classification"] for s in stages) / max(crops, 1)
    wait = wait_s * luna_voxels / voxels
    crops_per_ct = LUNA16_CANDIDATES / LUNA16_CTS
    per_ct = per_ct_seg + per_crop * crops_per_ct + wait
    print(f"\nLUNA16 projected ({LUNA16_CTS} CTs of {LUNA16_SLICES} x 512 x 512, "
          f"{LUNA16_CANDIDATES:,} candidates, {crops_per_ct:.0f} per CT) from a 1-thread rank: "
          f"U-Net and grouping {per_ct_seg:.1f} s per CT ({per_ct_seg / LUNA16_SLICES * 1e3:.0f}"
          f" ms per slice), {per_crop * 1e3:.1f} ms per crop, {wait:.2f} s waiting per CT read, "
          f"start-up {run['startup_s']:.1f} s")
    print("ranks | detection track (hours) | false-positive track (hours)")
    rows = []
    for r in ranks:
        detection = run["startup_s"] + -(-LUNA16_CTS // r) * per_ct
        fpr = run["startup_s"] + (LUNA16_CTS * wait + LUNA16_CANDIDATES * per_crop) / r
        rows.append({"ranks": r, "detection_h": detection / 3600, "fpr_h": fpr / 3600})
        print(f"{r:5d} | {detection / 3600:23.2f} | {fpr / 3600:28.2f}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    add_device_argument(p)
    p.add_argument("--synthetic", action="store_true", help="use the built-in sample")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training: crops per batch (default 16, the book's); --analysis: slices "
                        "or crops per batch (default 4, nodule_analysis.py's and the book's)")
    p.add_argument("--steps", type=int, default=8, help="timed batches per figure")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--augmented", action="store_true",
                   help="time the training loop with chapter 13's full augmentation")
    p.add_argument("--val-slices", type=int, default=None,
                   help="validation slices timed (default: every one)")
    p.add_argument("--analysis", action="store_true",
                   help="time nodule_analysis per CT instead of training")
    p.add_argument("--networks", action="store_true",
                   help="the U-Net and the classifier alone: fp32, bf16 and int8, eager and "
                        "compiled, in GFLOP/s beside this CPU's matmul rate, with their "
                        "agreement on chapter 4's real CT; then training steps likewise")
    p.add_argument("--slices", type=int, nargs="+", default=[117],
                   help="--analysis on the sample: CT sizes to time (default: %(default)s; "
                        "the book timed 117 and 205)")
    p.add_argument("--series-uid", default=None, help="--analysis: the CT (default: the "
                   "first validation series)")
    p.add_argument("--seg-model", default=None, help="--analysis: U-Net checkpoint "
                   "(default: the book's)")
    p.add_argument("--cls-model", default=None, help="--analysis: classifier checkpoint "
                   "(default: the book's)")
    p.add_argument("--repeats", type=int, default=3,
                   help="--analysis: rounds of every variant; each its best (default: %(default)s)")
    p.add_argument("--precisions", nargs="+", choices=na.PRECISIONS, default=list(na.PRECISIONS),
                   help="--analysis: the precisions to time (fp32 first: the reference)")
    p.add_argument("--erosions", nargs="+", type=float, default=[float("inf"), 1.0],
                   metavar="MM", help="--analysis: erosion settings (--erosion-max-spacing) "
                   "to time (default: inf, the book's, and 1, the default)")
    p.add_argument("--compile", action="store_true",
                   help="training: the U-Net through torch.compile in the ceilings and the loop "
                        "(as train_seg.py --compile)")
    p.add_argument("--eager-only", action="store_true",
                   help="--analysis: leave out the rows compiled ahead of time")
    p.add_argument("--sharing", action="store_true",
                   help="the analysis past one process on --cts LUNA-sized CTs: with and "
                        "without the next CT read in the background, then 1 process x 2 threads "
                        "against torchrun's 2 x 1, and LUNA16 projected on 1, 8 and 64 ranks")
    p.add_argument("--cts", type=int, default=4, help="--sharing: CTs (default: %(default)s)")
    p.add_argument("--luna-size", action="store_true",
                   help="--sharing: the CTs resampled to --slices slices of 512 x 512 (default: "
                        "the sample's CTs as they are)")
    p.add_argument("--real-ct", action="store_true",
                   help="--analysis on chapter 4's real 99-slice DICOM chest CT (the book's "
                        "file, python -m common.data download dicom-ct)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = True
    luna = locate_luna(args.data_dir, args.synthetic)
    if args.networks:
        keep_freed_memory()                               # as nodule_analysis.py runs
        return networks_benchmark(luna, args.data_dir, args.repeats,
                                  data_root(args.data_dir) / "cache" / "programs")
    if args.sharing:
        keep_freed_memory()                               # as nodule_analysis.py runs
        return sharing_benchmark(
            luna, device, args.seg_model or book_file(na.BOOK_SEG_MODEL, args.data_dir,
                                                      "luna-models"),
            args.cls_model or book_file(na.BOOK_CLS_MODEL, args.data_dir, "luna-models"),
            args.cts, args.slices[0] if args.luna_size else None, args.repeats,
            data_root(args.data_dir) / "cache" / "programs")
    if args.analysis:
        return analysis_benchmark(
            luna, device, args.seg_model or book_file(na.BOOK_SEG_MODEL, args.data_dir,
                                                      "luna-models"),
            args.cls_model or book_file(na.BOOK_CLS_MODEL, args.data_dir, "luna-models"),
            args.slices, args.series_uid, args.batch_size or 4, args.repeats, args.precisions,
            args.erosions, book_file(REAL_CT, args.data_dir, "dicom-ct") if args.real_ct
            else None, data_root(args.data_dir) / "cache" / "programs", keep_freed_memory,
            (False,) if args.eager_only else (False, True))
    args.batch_size = args.batch_size or 16
    keep_freed_memory()                                   # as the trainers run
    train_ds, val_ds, _ = make_seg_datasets(luna, mask_cache_dir(args.data_dir), 10,
                                            epoch_size=(args.steps + 1) * args.batch_size)
    spec = SEG_AUGMENTATION if args.augmented else AugmentSpec()
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} timed batches, training {'augmented' if spec.active else 'plain'}, "
          f"{'synthetic' if getattr(luna, 'synthetic', False) else 'LUNA16'} data; "
          f"validation: {len(val_ds)} whole slices")
    results = {}
    for amp in (False, True):
        key = "amp" if amp else "fp32"
        name = f"amp ({str(mixed_precision(device, True).dtype).split('.')[-1]})" if amp \
            else "fp32"
        ceilings = {last: model_ceiling(device, args.batch_size, args.steps, amp,
                                        torch.channels_last if last else torch.contiguous_format,
                                        compiled=args.compile)
                    for last in (False, True)}
        used = memory_format(device, amp, 2) == torch.channels_last
        trn, model = loop_rate(train_ds, device, args.batch_size, args.steps, amp, spec,
                               args.num_workers, args.compile)
        val = validation_seconds_per_slice(model, val_ds, device, args.batch_size, amp,
                                           args.num_workers, args.val_slices)
        results[key] = {"ceiling_nchw": ceilings[False], "ceiling_channels_last": ceilings[True],
                        "train": trn, "layout": "channels_last" if used else "nchw",
                        "val_s_per_slice": val}
        print(f"{name:14s} model-only ceiling: NCHW {ceilings[False]:6.1f}, channels-last "
              f"{ceilings[True]:6.1f} samples/s; training loop ({results[key]['layout']}) "
              f"{trn:6.1f} samples/s = {trn / ceilings[used]:6.1%} of its ceiling; validation "
              f"{val * 1e3:.0f} ms per slice")
    print(f"amp training {results['amp']['train']:.1f} samples/s = "
          f"{results['amp']['train'] / results['fp32']['train']:.2f}x fp32 "
          f"({results['fp32']['train']:.1f})")
    return results


if __name__ == "__main__":
    run_cli(main)
