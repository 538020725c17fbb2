"""Chapter 12's exercises (section 12.8): F-beta, a WeightedRandomSampler, balancing ratios,
augmentation and mixup, a fixed input normalization, more TensorBoard.

    python ch10_luna/exercises_ch12.py                    # 12.1-12.6 on the built-in sample
    python ch10_luna/exercises_ch12.py --exercise 4 --exercise 5
    python ch10_luna/exercises_ch12.py --exercise 3 --epochs 20 --epoch-size 200000 --val-size 0

Every training comparison runs exercises_ch11.train_short (chapter 11's train_one_epoch and
evaluate, unchanged) on the same training set, validation subset, seed and number of steps; only
the variation the exercise asks for changes: the epoch order (a sampler, a ratio), the
augmentation or the loader's collate_fn (mixup), the model's input normalization. Each
comparison also runs its baseline with the next seed, so a difference can be told from the
seed's noise. On the sample the runs are short (default 2 epochs of 256 samples, validated on
192 candidates that hold every validation nodule), so that each exercise ends within 3 minutes
on 2 CPU cores; what the book asks after 20 epochs needs
LUNA16 and the last command.
"""
import argparse
import ast
import datetime
import inspect
import math
import textwrap
import time
from collections import namedtuple
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import WeightedRandomSampler, default_collate

from ch10_luna.augment import BOOK_AUGMENTATION, AugmentSpec, batch_augmenter
from ch10_luna.checkpoints import close_run, open_run
from ch10_luna.dsets import LunaDataset, epoch_order, locate_luna, luna_parser, make_loader
from ch10_luna.exercises_ch11 import balanced_order, scores, short_data, train_short
from ch10_luna.metrics import format_summary, log_metrics, summarize
from ch10_luna.model import LunaModel
from ch10_luna.runtime import Proc, keep_freed_memory
from common.device import add_device_argument, pick_device
from common.errors import require_at_least, run_cli
from common.figures import new_figure, save_figure
from common.files import output_dir, runs_dir

EXERCISES = (1, 2, 3, 4, 5, 6)
# One training run of a comparison: its name, validation scores, history, seconds, model.
Trial = namedtuple("Trial", ["name", "scores", "history", "seconds", "model"])
# What every comparison shares: data, sizes, seed, device.
Setup = namedtuple("Setup", ["train", "val", "epochs", "epoch_size", "batch_size", "lr", "seed",
                             "device"])


# ----------------------------------------------------------------------------- shared
def run(setup, name, order=None, seed=None, **variation):
    """One train_short run of `setup` with `variation` (make_model, augment, collate); the
    order defaults to chapter 12's balanced epochs. A Trial scored on its last epoch."""
    seed = setup.seed if seed is None else seed
    order = order or balanced_order(setup.epoch_size, seed)
    started = time.perf_counter()
    model, history = train_short(setup.train, setup.val, setup.epochs, order, seed=seed,
                                 lr=setup.lr, batch_size=setup.batch_size, device=setup.device,
                                 **variation)
    return Trial(name, fbeta_scores(history[-1].val), history, time.perf_counter() - started,
                 model)


def fbeta_scores(metrics):
    """scores (summarize, AUC, mean P) with F2 and F0.5 (12.1)."""
    return {**scores(metrics), **{k: v for k, v in summarize_fbeta(metrics).items()
                                  if k.startswith("pr/f") and k != "pr/f1_score"}}


def table(runs):
    """The comparison's table, one line per run."""
    print(f"     {'run':30s} {'F1':>6s} {'F2':>6s} {'AUC':>6s} {'prec':>6s} {'recall':>6s} "
          f"{'loss':>6s} {'s':>5s}")
    for r in runs:
        s = r.scores
        print(f"     {r.name:30s} {s['pr/f1_score']:6.3f} {s['pr/f2_score']:6.3f} "
              f"{s['auc']:6.3f} {s['pr/precision']:6.3f} {s['pr/recall']:6.3f} "
              f"{s['loss/all']:6.3f} {r.seconds:5.0f}")


def noise_of(base, again):
    """The seed's noise: how far the same run with the next seed lands, per score."""
    return {k: abs(base.scores[k] - again.scores[k]) for k in ("pr/f1_score", "auc")}


def against(run_, base, noise, key="pr/f1_score"):
    """'+0.041 F1, beyond the seed noise 0.012' or '... within the seed noise ...'."""
    d = run_.scores[key] - base.scores[key]
    name = {"pr/f1_score": "F1", "auc": "AUC"}[key]
    where = "beyond" if abs(d) > noise[key] else "within"
    return f"{d:+.3f} {name}, {where} the seed noise {noise[key]:.3f}"


def best(runs, key="pr/f1_score"):
    return max(runs, key=lambda r: r.scores[key])


def setup_line(setup):
    plural = "s" if setup.epochs != 1 else ""
    return (f"{setup.epochs} epoch{plural} of {setup.epoch_size:,} samples, batch "
            f"{setup.batch_size}, "
            f"validation {len(setup.val):,} candidates ({sum(setup.val.labels())} nodules), "
            f"seed {setup.seed}")


# ----------------------------------------------------------------------------- 12.1
def fbeta(tp, fp, fn, beta):
    """F-beta from counts: (1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp); recall counts b times
    as much as precision. 0 when there is nothing to score."""
    b2 = beta * beta
    denominator = (1 + b2) * tp + b2 * fn + fp
    return (1 + b2) * tp / denominator if denominator else 0.0


def fbeta_key(beta):
    """pr/f2_score, pr/f0.5_score; pr/f1_score is summarize's own F1."""
    return f"pr/f{beta:g}_score"


def summarize_fbeta(metrics, betas=(2, 0.5), threshold=0.5):
    """summarize (metrics.py) with F-beta for each of `betas` added as pr/f<beta>_score; the
    dict log_metrics logs as it is (metrics.jsonl, TensorBoard scalars)."""
    s = summarize(metrics, threshold)
    for beta in betas:
        s[fbeta_key(beta)] = fbeta(s["count/tp"], s["count/fp"], s["count/fn"], beta)
    return s


def format_fbeta(epoch, phase, s):
    """format_summary's line with F2 and F0.5 after F1."""
    return (format_summary(epoch, phase, s) + f"  f2 {s['pr/f2_score']:.3f}  f0.5 "
            f"{s['pr/f0.5_score']:.3f}")


THRESHOLDS = np.linspace(0.02, 0.98, 49)


def threshold_sweep(metrics, betas=(1, 2, 0.5), thresholds=THRESHOLDS):
    """{beta: [F-beta at each threshold]} of validation metrics, and the thresholds."""
    curves = {b: [] for b in betas}
    for t in thresholds:
        s = summarize(metrics, float(t))
        for b in betas:
            curves[b].append(fbeta(s["count/tp"], s["count/fp"], s["count/fn"], b))
    return curves, thresholds


def fbeta_figure(history, curves, thresholds):
    """F1, F2, F0.5 per epoch (left) and against the threshold on the last epoch (right)."""
    fig = new_figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    epochs = [e.epoch for e in history]
    for beta in (1, 2, 0.5):
        left.plot(epochs, [summarize_fbeta(e.val)[fbeta_key(beta)] for e in history], "o-",
                  label=f"F{beta:g}")
        right.plot(thresholds, curves[beta], label=f"F{beta:g}")
        i = int(np.argmax(curves[beta]))
        right.plot(thresholds[i], curves[beta][i], "k.", markersize=8)
    left.set(xlabel="epoch", ylabel="validation score", title="per epoch (threshold 0.5)",
             ylim=(0, 1.02))
    right.set(xlabel="threshold on P(nodule)", title="last epoch against the threshold "
              "(dots: best)", ylim=(0, 1.02))
    left.legend()
    right.legend()
    return fig


def exercise_1(setup, out):
    """A run of twice --epochs epochs printing F1, F2 and F0.5 per epoch; the epoch and the
    threshold each score picks; the metrics logged through log_metrics unchanged."""
    setup2 = setup._replace(epochs=2 * setup.epochs)
    r = run(setup2, "balanced")
    rows = [summarize_fbeta(e.val) for e in r.history]
    run_dir = Path(out) / "fbeta"
    logged = open_run(run_dir, "cls", "fbeta", Proc("cpu", 0, 1, lambda *a, **k: None))
    for e, s in zip(r.history, rows, strict=True):
        log_metrics(logged, e.epoch, "val", e.val, s, e.epoch * setup.epoch_size)
    close_run(logged)
    curves, thresholds = threshold_sweep(r.history[-1].val)
    figure = save_figure(fbeta_figure(r.history, curves, thresholds), Path(out) / "fbeta.png")
    picks = {b: thresholds[int(np.argmax(curves[b]))] for b in curves}
    at_pick = {b: summarize(r.history[-1].val, float(picks[b])) for b in picks}
    epoch_by = {b: 1 + int(np.argmax([s[fbeta_key(b)] for s in rows])) for b in (1, 2, 0.5)}
    return {"rows": rows, "history": r.history, "epoch_by": epoch_by, "threshold_by": picks,
            "at_threshold": at_pick, "figure": figure, "jsonl": run_dir / "metrics.jsonl"}


def report_1(r, setup):
    print("Exercise 12.1: F-beta")
    print("  a. fbeta(tp, fp, fn, beta) = (1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp): F2 counts "
          "recall twice, F0.5 precision twice; summarize_fbeta adds pr/f2_score and "
          "pr/f0.5_score to summarize's dict (checked against sklearn's fbeta_score)")
    print(f"  b. a run of {len(r['history'])} epochs of {setup.epoch_size:,} samples, validation "
          "per epoch:")
    for e, s in zip(r["history"], r["rows"], strict=True):
        print("     " + format_fbeta(e.epoch, "val", s))
    by, t, at = r["epoch_by"], r["threshold_by"], r["at_threshold"]
    print(f"     the epoch each picks: F1 epoch {by[1]}, F2 epoch {by[2]}, F0.5 epoch {by[0.5]}")
    print(f"     on the last epoch, the threshold each picks: F1 {t[1]:.2f} (recall "
          f"{at[1]['pr/recall']:.2f}, precision {at[1]['pr/precision']:.2f}), F2 {t[2]:.2f} "
          f"(recall {at[2]['pr/recall']:.2f}, precision {at[2]['pr/precision']:.2f}), F0.5 "
          f"{t[0.5]:.2f} (recall {at[0.5]['pr/recall']:.2f}, precision "
          f"{at[0.5]['pr/precision']:.2f})")
    print(f"     logged with log_metrics unchanged: {r['jsonl']} (pr/f2_score in every row); "
          f"figure {r['figure']}")
    lower = "a lower" if t[2] < t[1] else "the same" if t[2] == t[1] else "a higher"
    print(f"  answer: F2. The classifier screens candidates for the later steps, and a missed "
          f"nodule is lost for good while a false positive costs a second look: recall matters "
          f"more. Tracked beside F1, F2 picks epoch {by[2]} (F1: {by[1]}) and {lower} "
          f"threshold ({t[2]:.2f} against {t[1]:.2f}), with recall {at[2]['pr/recall']:.2f} "
          f"against {at[1]['pr/recall']:.2f}.")


# ----------------------------------------------------------------------------- 12.2
def class_balanced_sampler(labels, num_samples, seed):
    """A WeightedRandomSampler that draws each class equally often: every sample weighs
    1 / (the number of samples of its class), drawn with replacement."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    weights = 1.0 / torch.bincount(labels, minlength=2).double()[labels]
    return WeightedRandomSampler(weights, num_samples, replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


def sampler_order(size, seed):
    """train_short's `order` drawn by class_balanced_sampler, reseeded every epoch."""
    return lambda labels, epoch: list(class_balanced_sampler(labels, size, seed * 1000 + epoch))


def code_lines(function, start=None):
    """Lines of a function's code, without its docstring (from the line holding `start`)."""
    source = textwrap.dedent(inspect.getsource(function))
    body = ast.parse(source).body[0].body
    first = body[1] if isinstance(body[0], ast.Expr) and isinstance(
        getattr(body[0], "value", None), ast.Constant) else body[0]
    lines = source.splitlines()[first.lineno - 1:]
    if start is not None:
        lines = lines[next(i for i, line in enumerate(lines) if start in line):]
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def order_stats(order, labels, batch_size):
    """Share of positives, positives per batch (mean, min, max), distinct samples of each class."""
    labels = np.asarray(labels, dtype=bool)
    picked = labels[np.asarray(order)]
    per_batch = [int(picked[i:i + batch_size].sum()) for i in range(0, len(picked), batch_size)]
    order = np.asarray(order)
    return {"pos_share": float(picked.mean()), "per_batch": (float(np.mean(per_batch)),
                                                             min(per_batch), max(per_batch)),
            "distinct_pos": len(set(order[picked])), "distinct_neg": len(set(order[~picked]))}


class CountingLoads:
    """A load_ct that counts its calls (none expected while building the weights)."""

    def __init__(self, load):
        self.load, self.calls = load, 0

    def __call__(self, path):
        self.calls += 1
        return self.load(path)


def exercise_2(setup):
    """The sampler's weights from the labels alone (no CT opened), an epoch's class shares
    against epoch_order's balancing, and a training run with each."""
    loads = CountingLoads(setup.train.load_ct)
    watched = LunaDataset(setup.train.candidates, setup.train.series_paths, load_ct=loads)
    labels = watched.labels()                                  # the candidates' is_nodule
    sampler = class_balanced_sampler(labels, setup.epoch_size, setup.seed)
    drawn = list(sampler)
    stats = {"sampler": order_stats(drawn, labels, setup.batch_size),
             "epoch_order": order_stats(epoch_order(labels, setup.epoch_size, True, setup.seed,
                                                    1), labels, setup.batch_size)}
    runs = [run(setup, "WeightedRandomSampler", sampler_order(setup.epoch_size, setup.seed)),
            run(setup, "epoch_order(balanced=True)")]
    return {"loads": loads.calls, "counts": (len(labels) - sum(labels), sum(labels)),
            "stats": stats, "runs": runs,
            "lines": {"sampler": code_lines(class_balanced_sampler),
                      "epoch_order": code_lines(epoch_order, start="pos, neg =")}}


def report_2(r, setup):
    neg, pos = r["counts"]
    print("Exercise 12.2: WeightedRandomSampler instead of the dataset's balancing")
    print(f"  a. each sample's class is its candidate's is_nodule (LunaDataset.labels(), from "
          f"candidates.csv): {r['loads']} CTs opened to weigh {neg + pos:,} samples; weights "
          f"1/{neg:,} for a non-nodule, 1/{pos:,} for a nodule")
    for name, s in r["stats"].items():
        mean, low, high = s["per_batch"]
        print(f"     {name:12s}: {s['pos_share']:.1%} nodules in an epoch of {setup.epoch_size:,};"
              f" per batch of {setup.batch_size} {mean:.1f} on average, {low} to {high}; "
              f"{s['distinct_pos']} distinct nodules, {s['distinct_neg']:,} distinct "
              "non-nodules")
    table(r["runs"])
    sampler, ordered = r["stats"]["sampler"], r["stats"]["epoch_order"]
    print(f"  b. lines of code: the sampler {r['lines']['sampler']}, epoch_order's balanced "
          f"branch {r['lines']['epoch_order']}. answer: the sampler was easier to write "
          "and reads as what it means (each class equally likely) with torch's own parts, and "
          "it plugs into any DataLoader. epoch_order's alternation is exact (a nodule every "
          f"other sample: {ordered['per_batch'][1]} to {ordered['per_batch'][2]} per batch "
          f"against {sampler['per_batch'][1]} to {sampler['per_batch'][2]}) and reproducible "
          "per (seed, epoch), which resuming mid-epoch and splitting over processes need; the "
          "sampler draws with replacement, so an epoch repeats some non-nodules "
          f"({sampler['distinct_neg']:,} distinct against {ordered['distinct_neg']:,}).")


# ----------------------------------------------------------------------------- 12.3
def ratio_order(labels, ratio, size, seed=0, epoch=1):
    """One epoch of `size` indices: one positive then `ratio` negatives, repeated (the book's
    ratio_int; 1 is chapter 12's alternation); each class reshuffled every epoch."""
    labels = np.asarray(labels, dtype=bool)
    rng = np.random.default_rng([seed, epoch])
    is_pos = np.arange(size) % (ratio + 1) == 0

    def draw(indices, n):              # whole permutations, cycled, cut to n
        return np.concatenate([rng.permutation(indices)
                               for _ in range(-(-n // len(indices)))])[:n]

    order = np.empty(size, dtype=np.int64)
    order[is_pos] = draw(np.flatnonzero(labels), int(is_pos.sum()))
    order[~is_pos] = draw(np.flatnonzero(~labels), int((~is_pos).sum()))
    return order


def ramp_ratio(epoch, epochs, natural):
    """A ratio that moves from 1:1 in epoch 1 towards the data's natural ratio (geometrically,
    reaching natural^((epochs - 1) / epochs) in the last epoch)."""
    return max(1, round(natural ** ((epoch - 1) / epochs)))


def ramp_order(epochs, natural, size, seed):
    """train_short's `order` with ramp_ratio's ratio in each epoch."""
    return lambda labels, epoch: ratio_order(labels, ramp_ratio(epoch, epochs, natural), size,
                                             seed, epoch)


def fixed_ratio(ratio, size, seed):
    return lambda labels, epoch: ratio_order(labels, ratio, size, seed, epoch)


def exercise_3(setup, ratios=(1, 2, 5, 20)):
    """Runs at each positive:negative ratio and with the ramp, on the same steps."""
    labels = setup.train.labels()
    natural = (len(labels) - sum(labels)) / max(sum(labels), 1)
    runs = [run(setup, f"1:{k}", fixed_ratio(k, setup.epoch_size, setup.seed)) for k in ratios]
    ramp = [ramp_ratio(e, setup.epochs, natural) for e in range(1, setup.epochs + 1)]
    runs.append(run(setup, "ramp 1:" + ", 1:".join(map(str, ramp)),
                    ramp_order(setup.epochs, natural, setup.epoch_size, setup.seed)))
    again = run(setup, f"1:{ratios[0]}, seed {setup.seed + 1}",
                fixed_ratio(ratios[0], setup.epoch_size, setup.seed + 1), seed=setup.seed + 1)
    return {"runs": runs, "again": again, "natural": natural, "ramp": ramp, "ratios": ratios}


def report_3(r, setup):
    runs, base = r["runs"], r["runs"][0]
    noise = noise_of(base, r["again"])
    print(f"Exercise 12.3: balancing ratios (positives:negatives), {setup_line(setup)}; the "
          f"training set's natural ratio is 1:{r['natural']:.0f}")
    table([*runs, r["again"]])
    top, top_auc = best(runs), best(runs, "auc")
    ratios = r["ratios"]
    first, last = runs[0].scores, runs[len(ratios) - 1].scores
    print(f"  a. best after {setup.epochs} epochs by F1: {top.name} "
          f"({against(top, base, noise) if top is not base else 'the baseline'}); by AUC: "
          f"{top_auc.name}. From 1:{ratios[0]} to 1:{ratios[-1]}, fewer nodules are seen: "
          f"mean P(nodule) on validation {first['mean_p']:.3f} -> {last['mean_p']:.3f}, recall "
          f"{first['pr/recall']:.2f} -> {last['pr/recall']:.2f}, precision "
          f"{first['pr/precision']:.2f} -> {last['pr/precision']:.2f} at the 0.5 threshold.")
    print("     after 20 epochs (the book's question) needs LUNA16 and hours: python "
          "ch10_luna/exercises_ch12.py --exercise 3 --epochs 20 --epoch-size 200000 "
          "--val-size 0")
    ramp = runs[-1]
    print(f"  b. ramp_ratio: 1:1 in epoch 1, then towards 1:{r['natural']:.0f} ({ramp.name}): "
          f"{against(ramp, base, noise)}, {against(ramp, base, noise, 'auc')} against 1:1.")


# ----------------------------------------------------------------------------- 12.4
AGGRESSIVE = AugmentSpec(flip=True, offset=0.2, scale=0.4, rotate=True, noise=75.0)


def augmenter(spec, seed):
    """train_short's `augment`: the epoch's per-batch augmentation (augment.batch_augmenter)."""
    return lambda epoch: batch_augmenter(spec, seed, epoch)


def mix(x, y, index, partner, lam):
    """x[index] = lam x[index] + (1 - lam) x[partner], and the labels y (one-hot, float) with
    the same weights; the other samples as they were. New tensors."""
    x, y = x.clone(), y.clone()
    wx = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    wy = lam.view(-1, 1).to(y.dtype)
    x[index] = wx * x[index] + (1 - wx) * x[partner]
    y[index] = wy * y[index] + (1 - wy) * y[partner]
    return x, y


def mixup_positives(x, label, rng, alpha=0.4):
    """Mixup among the batch's nodules only: each blended with another nodule of the batch,
    lam ~ Beta(alpha, alpha). (x, soft labels, index, partner, lam); with fewer than two
    nodules nothing changes."""
    index = torch.nonzero(label[:, 1] == 1).flatten()
    if len(index) < 2:
        return x, label.float(), index[:0], index[:0], torch.zeros(0)
    index = index[torch.as_tensor(rng.permutation(len(index)))]
    partner = index.roll(1)                                   # another nodule, never itself
    lam = torch.as_tensor(rng.beta(alpha, alpha, len(index)), dtype=torch.float32)
    x, soft = mix(x, label.float(), index, partner, lam)
    return x, soft, index, partner, lam


class PositiveMixup:
    """A DataLoader collate_fn: default_collate, then mixup_positives. Two nodules mixed are
    still a nodule, so the labels stay [0, 1] and chapter 11's loop (class-index labels)
    trains on them unchanged."""

    def __init__(self, seed, alpha=0.4):
        self.rng, self.alpha = np.random.default_rng(seed), alpha

    def __call__(self, samples):
        x, label, uid, center_irc = default_collate(samples)
        x, soft, *_ = mixup_positives(x, label, self.rng, self.alpha)
        return x, soft.round().long(), uid, center_irc       # exact: both labels are [0, 1]


def crop_stats(dataset, indices, batch_size=32):
    """Mean and standard deviation (HU) of the crops at `indices`."""
    total = square = count = 0.0
    for x, *_ in make_loader(dataset, indices, batch_size, 0, "cpu"):
        x = x.double()
        total, square, count = total + x.sum(), square + (x * x).sum(), count + x.numel()
    mean = float(total / count)
    return mean, math.sqrt(max(float(square / count) - mean * mean, 0.0))


def exercise_4(setup):
    """No augmentation, the book's, a more aggressive one, the book's without noise, mixup of
    nodules; the baseline again with the next seed."""
    s = setup.seed
    runs = [run(setup, "none"),
            run(setup, "book (noise 25 HU)", augment=augmenter(BOOK_AUGMENTATION, s)),
            run(setup, "aggressive (x2, noise 75)", augment=augmenter(AGGRESSIVE, s)),
            run(setup, "book without noise",
                augment=augmenter(replace(BOOK_AUGMENTATION, noise=0.0), s)),
            run(setup, "mixup of nodules", collate=PositiveMixup(s))]
    again = run(setup, f"none, seed {s + 1}", seed=s + 1)
    order = balanced_order(setup.epoch_size, s)(setup.train.labels(), 1)[:256]
    return {"runs": runs, "again": again, "hu": crop_stats(setup.train, order)}


def report_4(r, setup):
    runs, base = r["runs"], r["runs"][0]
    by = {x.name.split(" (")[0]: x for x in runs}
    noise = noise_of(base, r["again"])
    b = BOOK_AUGMENTATION
    print(f"Exercise 12.4: augmentation, {setup_line(setup)}")
    table([*runs, r["again"]])
    print(f"  a. more aggressive (offset {AGGRESSIVE.offset}, scale {AGGRESSIVE.scale}, noise "
          f"{AGGRESSIVE.noise:g} HU against the book's {b.offset}, {b.scale}, {b.noise:g}): "
          f"{against(by['aggressive'], by['book'], noise)} against the book's")
    mean, std = r["hu"]
    print(f"  b. noise: the book's with noise against without: "
          f"{against(by['book'], by['book without noise'], noise)}. Its {b.noise:g} HU std "
          f"is {b.noise / std:.0%} of the crops' spread ({std:.0f} HU around {mean:.0f}); what "
          "changes the verdict is that ratio (the input normalization, 12.5, scales both), "
          "the training length (a regularizer pays off once the model overfits, not in "
          f"{setup.epochs * setup.epoch_size:,} samples) and the other augmentations.")
    print("  c. other projects use intensity shifts and windowing, elastic deformation, cutout "
          "(random erasing), mixup and cutmix, random crops at other scales. Mixup here "
          "blends pairs of nodules only (lam ~ Beta(0.4, 0.4)); both labels are 1, so the "
          f"label stays 1: {against(by['mixup of nodules'], base, noise)}, "
          f"{against(by['mixup of nodules'], base, noise, 'auc')} against no augmentation.")


# ----------------------------------------------------------------------------- 12.5
class FixedNorm(nn.Module):
    """(x - offset) / scale, then `fn` (None: nothing): a fixed input normalization."""

    def __init__(self, offset, scale, fn=None):
        super().__init__()
        self.offset, self.scale, self.fn = float(offset), float(scale), fn

    def forward(self, x):
        x = (x - self.offset) / self.scale
        return x if self.fn is None else self.fn(x)


class FixedNormLunaModel(LunaModel):
    """LunaModel whose BatchNorm tail is replaced by `norm` (tail_norm); the blocks and the
    head keep the book's parameter names."""

    def __init__(self, norm, **kwargs):
        super().__init__(**kwargs)
        del self.tail_batchnorm
        self.tail_norm = norm

    def forward(self, x):                                       # x: (N, 1, 32, 48, 48) in HU
        x = self.tail_norm(x)
        for block in (self.block1, self.block2, self.block3, self.block4):
            x = block(x)
        logits = self.head_linear(x.flatten(1))
        return logits, self.head_activation(logits)


def sqrt_hu(x):
    """[-1, 1] (HU clipped to [-1000, 1000], scaled by 1000) -> sqrt of the shifted value,
    back to [-1, 1]: spreads the dark end (lung) and compresses the bright end."""
    return 2 * torch.sqrt((x + 1).clamp(min=0) / 2) - 1


def sigmoid_window(x):
    """A soft window around -400 HU (x in HU / 1000): lung near -1, soft tissue near +1."""
    return 2 * torch.sigmoid((x + 0.4) / 0.15) - 1


def exercise_5(setup):
    """BatchNorm against fixed normalizations: the training crops' mean/std, the clip range
    mapped to [-1, 1], a square root and a sigmoid window; BatchNorm again with the next seed."""
    order = balanced_order(setup.epoch_size, setup.seed)(setup.train.labels(), 1)[:256]
    mean, std = crop_stats(setup.train, order)
    variants = {"fixed: crops' mean/std": FixedNorm(mean, std),
                "fixed: [-1000,1000] -> [-1,1]": FixedNorm(0.0, 1000.0),
                "sqrt of shifted HU": FixedNorm(0.0, 1000.0, sqrt_hu),
                "sigmoid window at -400": FixedNorm(0.0, 1000.0, sigmoid_window)}
    runs = [run(setup, "BatchNorm (the book)")]
    for name, norm in variants.items():
        runs.append(run(setup, name, make_model=lambda norm=norm: FixedNormLunaModel(norm)))
    again = run(setup, f"BatchNorm, seed {setup.seed + 1}", seed=setup.seed + 1)
    bn = runs[0].model.tail_batchnorm
    learned = (float(bn.running_mean), math.sqrt(float(bn.running_var)),
               float(bn.weight.detach()), float(bn.bias.detach()))
    return {"runs": runs, "again": again, "hu": (mean, std), "bn": learned}


def report_5(r, setup):
    runs, base = r["runs"], r["runs"][0]
    noise = noise_of(base, r["again"])
    mean, std = r["hu"]
    m, s, w, b = r["bn"]
    print(f"Exercise 12.5: a fixed input normalization instead of BatchNorm, {setup_line(setup)}")
    table([*runs, r["again"]])
    fixed = runs[1:3]
    print("  a. " + "; ".join(f"{x.name}: {against(x, base, noise)}" for x in fixed) +
          " against BatchNorm")
    print(f"  b. the training crops measure {mean:.0f} +- {std:.0f} HU (256 samples of a "
          f"balanced epoch): that offset and scale is what BatchNorm computes from each batch "
          f"(its running estimate ended at {m:.0f} +- {s:.0f}) before its learned scale "
          f"{w:.2f} and shift {b:.2f}; the clip range [-1000, 1000] -> [-1, 1] (offset 0, "
          "scale 1000) needs no data and keeps air at -1 and water at 0")
    print("  c. " + "; ".join(f"{x.name}: {against(x, base, noise)}" for x in runs[3:5]) +
          f". answer: best here by F1: {best(runs).name}, by AUC: {best(runs, 'auc').name}.")


# ----------------------------------------------------------------------------- 12.6
BLOCKS = ("block1", "block2", "block3", "block4")


def weight_histograms(writer):
    """train_short's `after_epoch`: every parameter as a histogram, weights/<name>, per epoch."""
    def log(model, epoch):
        for name, param in model.named_parameters():
            writer.add_histogram(f"weights/{name}", param.detach().cpu(), epoch.epoch)
    return log


def block_outputs(model, x, names=BLOCKS):
    """{block name: its output} for one forward of `x`, caught by forward hooks (removed
    after)."""
    caught = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda _m, _in, out, name=name: caught.__setitem__(name, out.detach().cpu()))
        for name in names]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return caught


def feature_grid(features, channels=8, pad=1):
    """(1, C, I, R, C) feature maps -> one (H, W) image in [0, 1]: the middle index slice of the
    first `channels` channels side by side, each scaled to its own range."""
    maps = features[0, :channels, features.shape[2] // 2].float()        # (C, R, C)
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = (maps.amax(dim=(1, 2), keepdim=True) - low).clamp(min=1e-12)
    maps = nn.functional.pad((maps - low) / span, (pad, pad, pad, pad))
    return torch.cat(list(maps), dim=1)


def features_figure(crop, caught):
    """The crop's middle slice and each block's first feature maps, for a person to look at."""
    fig = new_figure(figsize=(12, 2 + 1.6 * len(caught)))
    axes = fig.subplots(len(caught) + 1, 1)
    axes[0].imshow(crop[0, crop.shape[1] // 2].numpy(), cmap="gray", vmin=-1000, vmax=400)
    axes[0].set_title("input crop, middle slice (HU)")
    for ax, (name, out) in zip(axes[1:], caught.items(), strict=True):
        ax.imshow(feature_grid(out).numpy(), cmap="viridis")
        ax.set_title(f"{name}: {tuple(out.shape[1:])}, first 8 channels, middle slice")
    for ax in axes:
        ax.axis("off")
    return fig


def exercise_6(setup, out, size=256):
    """A short run whose weights go to TensorBoard as histograms every epoch, then one
    validation nodule's block outputs (forward hooks) as images (the first candidate where
    validation holds no nodule); the event file read back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(out) / "tensorboard_weights"
    writer = SummaryWriter(log_dir=str(folder))
    small = setup._replace(epoch_size=min(size, setup.epoch_size))
    try:
        r = run(small, "weights logged", after_epoch=weight_histograms(writer))
        index = next((i for i, c in enumerate(setup.val.candidates) if c.is_nodule), 0)
        crop = setup.val[index][0]
        caught = block_outputs(r.model, crop[None])
        for name, features in caught.items():
            writer.add_image(f"features/{name}", feature_grid(features), small.epochs,
                             dataformats="HW")
    finally:
        writer.close()
    figure = save_figure(features_figure(crop, caught), Path(out) / "features.png")
    acc = EventAccumulator(str(folder), size_guidance={"histograms": 0, "images": 0})
    acc.Reload()
    return {"histograms": sorted(acc.Tags()["histograms"]), "images": sorted(acc.Tags()["images"]),
            "steps": sorted({e.step for t in acc.Tags()["histograms"] for e in acc.Histograms(t)}),
            "shapes": {k: tuple(v.shape[1:]) for k, v in caught.items()}, "folder": folder,
            "figure": figure, "parameters": len(list(r.model.named_parameters()))}


def report_6(r):
    print(f"Exercise 12.6: more TensorBoard (event file in {r['folder']}, read back)")
    print(f"  a. weights: {len(r['histograms'])} histograms (weights/<parameter name>, one per "
          f"parameter of {r['parameters']}) at epochs {r['steps']}, e.g. "
          f"{', '.join(r['histograms'][:2])}")
    print(f"  b. one validation nodule through the trained model: images {', '.join(r['images'])}"
          f" (the middle slice of the first 8 channels); figure {r['figure']}")
    shapes = "; ".join(f"{k} {v}" for k, v in r["shapes"].items())
    print(f"     block outputs: {shapes}")
    print(f"  answer: the hooks needed the blocks' names and nothing else: {len(r['shapes'])} "
          "register_forward_hook calls on model.block1..block4, removed after one forward. "
          "The backbone here is four named blocks called in a loop, not an nn.Sequential; a "
          "Sequential would have let backbone[:k](x) give block k's output without hooks, "
          "but its children are named 0, 1, 2..., so tags and checkpoint keys lose the "
          "names. Hooks work on either, so the named blocks help more than they hinder.")


REPORTS = {1: report_1, 2: report_2, 3: report_3, 4: report_4, 5: report_5,
           6: lambda r, setup: report_6(r)}


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[luna_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES, metavar="M",
                   help="which exercise(s) of chapter 12 (repeatable; default: all)")
    add_device_argument(p)
    p.add_argument("--epochs", type=int, default=2,
                   help="epochs per compared run (12.1: twice as many; default: %(default)s)")
    p.add_argument("--epoch-size", type=int, default=256,
                   help="training samples per epoch (default: %(default)s)")
    p.add_argument("--val-size", type=int, default=192,
                   help="validation candidates, every nodule kept (0: all; default: "
                        "%(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/ch10/exercises_ch12/<time>)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    require_at_least("--epochs", args.epochs, 1)
    require_at_least("--epoch-size", args.epoch_size, 2)
    require_at_least("--val-size", args.val_size, 0)
    require_at_least("--batch-size", args.batch_size, 1)
    device = pick_device(args.device)
    out = output_dir(args.out or runs_dir("ch10") / "exercises_ch12" /
                     f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}", "--out")
    luna = locate_luna(args.data_dir, args.synthetic)
    train, val = short_data(luna, args.val_size, args.val_stride, args.fold)
    setup = Setup(train, val, args.epochs, args.epoch_size, args.batch_size, args.lr, args.seed,
                  device)
    print(f"training set: {len(train):,} candidates ({sum(train.labels()):,} nodules); "
          f"validation: {len(val):,} ({sum(val.labels()):,} nodules); device {device}; "
          f"run folder {out}")
    results = {}
    for m in sorted(set(args.exercise or EXERCISES)):
        started = time.perf_counter()
        results[m] = {1: lambda: exercise_1(setup, out), 2: lambda: exercise_2(setup),
                      3: lambda: exercise_3(setup), 4: lambda: exercise_4(setup),
                      5: lambda: exercise_5(setup), 6: lambda: exercise_6(setup, out)}[m]()
        REPORTS[m](results[m], setup)
        print(f"  ({time.perf_counter() - started:.0f} s)\n")
    return results


if __name__ == "__main__":
    keep_freed_memory()                 # glibc keeps freed blocks: see runtime.py
    run_cli(main)
