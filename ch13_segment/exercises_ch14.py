"""Chapter 14's exercises (section 14.9), answered and measured: 14.1 .. 14.3 here, 14.4 and
14.5 (the U-Net's edges, overlapping patches) in exercises_ch14_patches.py; this script runs all.

    python ch13_segment/exercises_ch14.py                  # all five on the synthetic sample
    python ch13_segment/exercises_ch14.py --exercise 2     # one of them
    python ch13_segment/exercises_ch14.py --exercise 5 --stride 8,12,12 --patch-cts 1
    python ch13_segment/exercises_ch14.py --epochs 10 --epoch-size 20000 --val-negatives 0 \
        --max-cts 100 --seg-model S --cls-model C          # book-sized, on LUNA16

The networks are chapter 14's: the book's U-Net and nodule classifier by default (--seg-model,
--cls-model take ones trained here). The classifiers the exercises train start from --cls-model
and fine-tune its last --finetune-depth blocks (0: all of a fresh LunaModel) with Adam, in short
runs (--epochs, --epoch-size) through chapter 14's loop (train_malignancy.train_one_epoch) or,
for the three-class model, a loop of its own. The analysis is nodule_analysis.py's, called
unchanged. Answers and timings: README.md and NOTES.md ("Exercises, chapter 14").
"""
import argparse
import copy
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ch10_luna.checkpoints import save_checkpoint
from ch10_luna.dsets import (
    LunaDataset,
    epoch_order,
    locate_luna,
    luna_parser,
    make_loader,
    validation_uids,
)
from ch10_luna.metrics import PRED
from ch10_luna.model import LunaModel
from ch10_luna.runtime import keep_freed_memory, memory_format, mixed_precision, use_memory_format
from ch13_segment import exercises_ch14_patches as patches
from ch13_segment import precision as prec
from ch13_segment.dsets import mask_cache_dir
from ch13_segment.dsets_cls import MalCandidate, MalignantLunaDataset, read_candidates_ch14
from ch13_segment.exercises_ch14_patches import DEFAULT_STRIDES, EDGE_WIDTH, bar, table_scores
from ch13_segment.model import BOOK_CLS_MODEL, BOOK_SEG_MODEL
from ch13_segment.nodule_analysis import (
    NODULE_THRESHOLD,
    SEG_THRESHOLD,
    Detection,
    analyze_series,
    classify,
    clean_mask,
    format_table,
    group_candidates,
    load_models,
    match_and_score,
    match_detections,
    read_ct,
    read_nodules,
    segment_ct,
)
from ch13_segment.train_malignancy import (
    epoch_indexes,
    evaluate,
    make_optimizer,
    prepare_finetune,
    train_one_epoch,
)
from common.ct import load_ct
from common.data import book_file
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import DataError, require_at_least, run_cli
from common.files import output_dir, runs_dir

EXERCISES = (1, 2, 3, 4, 5)
CLASSES = ("non-nodule", "benign", "malignant")     # the three-class model's outputs
# Three-class epochs: the classes drawn in turn (None: the list's own ratio, shuffled).
BALANCINGS = {
    "equal thirds": (0, 1, 2),               # non-nodule, benign, malignant, ...
    "malignancy pattern": (1, 2, 0, 2),      # MalignantLunaDataset's: ben, mal, neg, mal, ...
    "natural ratio": None,
}

# A short training run: epochs of `epoch_size` samples in batches; Adam at `lr`; `depth`: the
# last parameterised blocks fine-tuned from the start checkpoint (0: every block, from scratch).
Budget = namedtuple("Budget", ["epochs", "epoch_size", "batch_size", "lr", "depth"])


# ----------------------------------------------------------------------------- shared pieces
def three_way_split(series, val_stride=10, fold=None):
    """(train, validation, test) series uids, sorted and disjoint: the chapter's validation
    series (every val_stride-th, or LUNA16's subset `fold`), and as many for testing (the series
    halfway between two validation ones, or subset fold + 1); the rest train."""
    if fold is None and val_stride < 3:
        raise DataError(f"--val-stride {val_stride}: a three-way split needs at least 3")
    val = set(validation_uids(series, val_stride, fold))
    if fold is None:
        test = set(sorted(series)[val_stride // 2::val_stride]) - val
    else:
        test = set(validation_uids(series, fold=(fold + 1) % 10)) - val
    train = set(series) - val - test
    if not train or not test:
        raise DataError(f"{len(series)} series on disk: too few for a training, validation and "
                        "test set (" + (f"--fold {fold}" if fold is not None else
                                        f"--val-stride {val_stride}") + ")")
    return sorted(train), sorted(val), sorted(test)


def of_series(candidates, uids):
    """The candidates that belong to the series `uids`."""
    keep = set(uids)
    return [c for c in candidates if c.series_uid in keep]


def validation_sample(candidates, negatives, seed=0):
    """Every nodule of `candidates` and `negatives` of its non-nodules drawn at random (all of
    them for 0 or more than there are), in the list's order: the listed validation, sized."""
    others = [i for i, c in enumerate(candidates) if not c.is_nodule]
    keep = set(others)
    if 0 < negatives < len(others):
        keep = set(np.random.default_rng(seed).choice(others, negatives, replace=False).tolist())
    return [c for i, c in enumerate(candidates) if c.is_nodule or i in keep]


def start_model(init, n_classes=2, depth=2, device="cpu"):
    """A LunaModel with `n_classes` outputs: `init`'s weights but a fresh head, only the last
    `depth` blocks trainable (train_malignancy.prepare_finetune); depth 0: a fresh model, every
    block trainable. Channels-last on a CPU, as the trainers run it."""
    model = LunaModel(conv_channels=init.block1.conv1.out_channels, n_classes=n_classes)
    if depth:
        prepare_finetune(model, init.state_dict(), depth, "--cls-model")
    return use_memory_format(model.to(device), memory_format(device, False))


def fit_binary(model, dataset, order_of, budget, on_epoch=None):
    """Chapter 14's loop (train_malignancy.train_one_epoch, unchanged) for budget.epochs
    epochs of the indexes `order_of(epoch)` gives; `on_epoch(epoch, model)` after each."""
    device = next(model.parameters()).device
    amp, optimizer = mixed_precision(device, False), make_optimizer(model, "adam", budget.lr)
    for epoch in range(1, budget.epochs + 1):
        loader = make_loader(dataset, order_of(epoch), budget.batch_size, 0, device)
        train_one_epoch(model, bar(loader, f"E{epoch} trn"), optimizer, amp)
        if on_epoch is not None:
            on_epoch(epoch, model)
    return model


def balanced_orders(dataset, budget, seed):
    """epoch -> chapter 12's balanced order (nodule, non-nodule, ...) of budget.epoch_size."""
    return lambda epoch: epoch_order(dataset.labels(), budget.epoch_size, True, seed, epoch)


def p_class1(model, dataset, batch_size=32):
    """P(class 1) of a binary LunaModel for every item of `dataset`, as (N,) numpy."""
    device = next(model.parameters()).device
    loader = make_loader(dataset, range(len(dataset)), batch_size, 0, device)
    metrics = evaluate(model, bar(loader, "scoring"), mixed_precision(device, False))
    return metrics[PRED].numpy()


def binary_scores(p, labels, threshold=NODULE_THRESHOLD):
    """Recall, false positives, precision and F1 of P(nodule) on labelled candidates."""
    p, labels = np.asarray(p), np.asarray(labels, dtype=bool)
    tp, fp = int((p > threshold)[labels].sum()), int((p > threshold)[~labels].sum())
    pos = int(labels.sum())
    return {"tp": tp, "pos": pos, "fp": fp, "neg": int((~labels).sum()),
            "recall": tp / pos if pos else 0.0, "precision": tp / (tp + fp) if tp + fp else 0.0,
            "f1": 2 * tp / (tp + fp + pos) if tp + fp + pos else 0.0}


def analyse(uids, luna, nodules, models, device, batch_size=4):
    """analyze_series (chapter 14's, unchanged) on each CT: the 3x4 tables summed."""
    table = np.zeros((3, 4), dtype=np.int64)
    for uid in bar(uids, "analysis"):                  # one CT's volumes in memory at a time
        table += analyze_series(read_ct(luna.series[uid]), models, nodules.get(uid, []), device,
                                batch_size)["table"]
    return table


def side_by_side(left, right, titles, gap=4):
    """Two blocks of text as columns."""
    a, b = left.splitlines(), right.splitlines()
    width = max(map(len, a + [titles[0]]))
    rows = [(titles[0], titles[1])] + list(zip(a, b))
    return "\n".join(f"{x.ljust(width)}{' ' * gap}{y}" for x, y in rows)


def verdict_same(diff, spread, what):
    """'agree' when |diff| is within 2 standard errors `spread`, with the figures."""
    agree = abs(diff) <= 2 * spread
    return (f"{what} differ by {diff:+.3f}; 2 standard errors of that difference are "
            f"{2 * spread:.3f}, so validation and test {'agree' if agree else 'disagree'} "
            f"{'within' if agree else 'beyond'} the sampling spread")


# ----------------------------------------------------------------------------- 14.1
def exercise_1(luna, seg, init, budget, device, seed=0, out=None, val_stride=10, fold=None,
               max_cts=10, val_negatives=0):
    """14.1: train a nodule classifier on a three-way split, pick its epoch by the end-to-end
    analysis of the validation CTs, then analyse the test CTs once with that checkpoint."""
    train_uids, val_uids, test_uids = three_way_split(luna.series, val_stride, fold)
    val_uids, test_uids = val_uids[:max_cts], test_uids[:max_cts]
    candidates = read_candidates_ch14(luna)
    train_ds = LunaDataset(of_series(candidates, train_uids), luna.series)
    val_ds = LunaDataset(validation_sample(of_series(candidates, val_uids), val_negatives, seed),
                         luna.series)
    nodules, seg_run = read_nodules(luna), prec.prepare(seg, "fp32")
    rows, states = [], {}

    def after_epoch(epoch, model):
        states[epoch] = copy.deepcopy(model.state_dict())
        listed = binary_scores(p_class1(model, val_ds), val_ds.labels())
        table = analyse(val_uids, luna, nodules, (seg_run, prec.prepare(model, "fp32"), None),
                        device)
        rows.append({"epoch": epoch, "listed_f1": listed["f1"],
                     "val": {**table_scores(table, len(val_uids)), "table": table}})

    seed_everything(seed)
    model = start_model(init, 2, budget.depth, device)
    fit_binary(model, train_ds, balanced_orders(train_ds, budget, seed), budget, after_epoch)
    picked = max(rows, key=lambda r: (r["val"]["f1"], -r["epoch"]))
    model.load_state_dict(states[picked["epoch"]])
    table = analyse(test_uids, luna, nodules, (seg_run, prec.prepare(model, "fp32"), None),
                    device)                               # the test CTs, once
    v, t = picked["val"], {**table_scores(table, len(test_uids)), "table": table}
    pooled = (v["found"] + t["found"]) / max(v["nodules"] + t["nodules"], 1)
    recall_se = np.sqrt(pooled * (1 - pooled) * (1 / max(v["nodules"], 1)
                                                  + 1 / max(t["nodules"], 1)))
    rate = (v["fp"] + t["fp"]) / (len(val_uids) + len(test_uids))       # pooled FPs per CT
    fp_se = np.sqrt(rate / len(val_uids) + rate / len(test_uids))
    saved = None
    if out is not None:
        saved = save_checkpoint(Path(out) / "ex14_1_cls.best.state", model,
                                make_optimizer(model, "adam", budget.lr), {"exercise": "14.1"},
                                picked["epoch"], picked["epoch"] * budget.epoch_size)
    return {"split": {"train": len(train_uids), "val": len(val_uids), "test": len(test_uids)},
            "listed": (sum(val_ds.labels()), len(val_ds) - sum(val_ds.labels())),
            "epochs": rows, "picked_epoch": picked["epoch"], "val": v, "test": t,
            "recall_diff": t["recall"] - v["recall"], "recall_se": float(recall_se),
            "fp_diff": t["fp_per_ct"] - v["fp_per_ct"], "fp_se": float(fp_se),
            "checkpoint": saved}


def report_1(a):
    s = a["split"]
    print(f"  split by series: {s['train']} training, {s['val']} validation (the chapter's), "
          f"{s['test']} test series (halfway between validation ones); the listed validation "
          f"candidates: {a['listed'][0]} nodules, {a['listed'][1]} non-nodules")
    print("  epoch | F1 on the listed validation candidates | the analysis of the validation "
          "CTs: found/nodules  recall  FP/CT  F1")
    for r in a["epochs"]:
        v = r["val"]
        print(f"  {r['epoch']:5d} | {r['listed_f1']:38.3f} | {v['found']:40d}/{v['nodules']:<7d}"
              f"{v['recall']:6.3f} {v['fp_per_ct']:6.2f} {v['f1']:.3f}")
    print(f"  picked on validation (F1 of the analysis' detections): epoch {a['picked_epoch']}; "
          "the test CTs analysed once, with that checkpoint:")
    v, t = a["val"], a["test"]
    print(side_by_side(format_table(v["table"]), format_table(t["table"]),
                       (f"  validation: recall {v['recall']:.3f} ({v['found']}/{v['nodules']}), "
                        f"{v['fp_per_ct']:.2f} FP/CT",
                        f"  test: recall {t['recall']:.3f} ({t['found']}/{t['nodules']}), "
                        f"{t['fp_per_ct']:.2f} FP/CT")))
    print("  Do they agree? " + verdict_same(a["recall_diff"], a["recall_se"],
                                             "recall (test - validation)"))
    print("                 " + verdict_same(a["fp_diff"], a["fp_se"],
                                             "FP per CT (test - validation)"))
    if a["checkpoint"]:
        print(f"  the picked checkpoint: {a['checkpoint']} (nodule_analysis.py --cls-model)")


# ----------------------------------------------------------------------------- 14.2
def three_class_label(candidate):
    """0 non-nodule, 1 benign, 2 malignant, from chapter 14's candidate list."""
    return 0 if not candidate.is_nodule else 2 if candidate.is_malignant else 1


class ThreeClassLunaDataset(LunaDataset):
    """Candidate i -> (crop (1, 32, 48, 48) HU, class index 0/1/2 (CLASSES), uid, center_irc)."""

    def __getitem__(self, i):
        crop, _two_class, uid, center_irc = super().__getitem__(i)
        return crop, torch.tensor(three_class_label(self.candidates[i])), uid, center_irc

    def classes(self):
        return np.array([three_class_label(c) for c in self.candidates], dtype=np.int64)


def class_order(classes, pattern, size, seed=0, epoch=1):
    """One epoch's `size` dataset indexes: position i draws class pattern[i % len(pattern)],
    each class's items cycled in an order reshuffled per (seed, epoch); pattern None: every
    item in turn, shuffled (the list's natural ratio)."""
    rng = np.random.default_rng([seed, epoch])
    classes = np.asarray(classes)
    if pattern is None:
        return np.concatenate([rng.permutation(len(classes))
                               for _ in range(-(-size // len(classes)))])[:size]
    kinds = np.resize(np.asarray(pattern), size)          # the class each position draws
    order = np.empty(size, dtype=np.int64)
    for k in sorted(set(pattern)):
        members = np.flatnonzero(classes == k)
        if not len(members):
            raise DataError(f"no {CLASSES[k]} candidate in the training series: a balanced "
                            "three-class epoch needs all three classes")
        wanted = int((kinds == k).sum())
        order[kinds == k] = np.concatenate([rng.permutation(members)
                                            for _ in range(-(-wanted // len(members)))])[:wanted]
    return order


def train_three_class(model, loader, optimizer):
    """One pass of the three-class model: cross-entropy over 3 classes; the (N,) losses."""
    model.train()
    device = next(model.parameters()).device
    losses = []
    for x, y, *_ in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        logits, _probs = model(x)                            # (N, 3)
        loss = F.cross_entropy(logits, y, reduction="none")
        loss.mean().backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.cat(losses).cpu()


def predict_three_class(model, loader):
    """(N, 3) class probabilities and (N,) true classes, without gradients."""
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    with torch.inference_mode():
        for x, y, *_ in loader:
            probs.append(model(x.to(device))[1].float().cpu())
            labels.append(y)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def confusion(true, predicted, n=3):
    """(n, n) counts: rows the true class, columns the predicted one."""
    table = np.zeros((n, n), dtype=np.int64)
    np.add.at(table, (np.asarray(true), np.asarray(predicted)), 1)
    return table


def class_recalls(table):
    """Per-class recall (NaN for a class with no sample) and their mean over present classes."""
    totals = table.sum(axis=1)
    recalls = np.where(totals > 0, np.diag(table) / np.maximum(totals, 1), np.nan)
    return recalls, float(np.nanmean(recalls))


def two_pass_classes(p_nodule, p_malignant, nodule_threshold=NODULE_THRESHOLD,
                     malignant_threshold=0.5):
    """The book's two passes as classes: non-nodule unless P(nodule) passes, then malignant
    when P(malignant) passes, else benign."""
    p_nodule, p_malignant = np.asarray(p_nodule), np.asarray(p_malignant)
    return np.where(p_nodule <= nodule_threshold, 0,
                    np.where(p_malignant > malignant_threshold, 2, 1))


def exercise_2(luna, init, budget, device, seed=0, val_stride=10, fold=None, val_negatives=0):
    """14.2: one three-class model under each balancing (a), and the best against the book's
    two passes, nodule then malignancy classifier, on the same validation candidates (b)."""
    candidates = read_candidates_ch14(luna)
    val_uids = validation_uids(luna.series, val_stride, fold)
    train_c = of_series(candidates, set(luna.series) - set(val_uids))
    val_c = validation_sample(of_series(candidates, val_uids), val_negatives, seed)
    train_ds = ThreeClassLunaDataset(train_c, luna.series)
    val_ds = ThreeClassLunaDataset(val_c, luna.series)
    val_loader = make_loader(val_ds, range(len(val_ds)), 32, 0, device)
    classes = train_ds.classes()
    runs = {}
    for name, pattern in BALANCINGS.items():
        seed_everything(seed)
        model = start_model(init, 3, budget.depth, device)
        optimizer = make_optimizer(model, "adam", budget.lr)
        started = time.perf_counter()
        for epoch in range(1, budget.epochs + 1):
            order = class_order(classes, pattern, budget.epoch_size, seed, epoch)
            train_three_class(model, bar(make_loader(train_ds, order, budget.batch_size, 0,
                                                     device), f"{name} E{epoch}"), optimizer)
        seconds = time.perf_counter() - started
        probs, true = predict_three_class(model, bar(val_loader, f"{name} val"))
        table = confusion(true, probs.argmax(axis=1))
        recalls, mean = class_recalls(table)
        drawn = np.bincount(classes[np.concatenate([class_order(
            classes, pattern, budget.epoch_size, seed, e) for e in range(1, budget.epochs + 1)])],
            minlength=3)
        runs[name] = {"table": table, "recalls": recalls, "mean_recall": mean,
                      "drawn": drawn, "seconds": seconds, "model": model}
    best = max(runs, key=lambda n: (np.nan_to_num(runs[n]["mean_recall"], nan=-1.0)))

    # b: the book's two passes, trained as the chapter does: a nodule classifier (balanced
    # epochs), then a malignancy classifier fine-tuned from it (MalignantLunaDataset's epochs).
    seed_everything(seed)
    nodule_ds, val_binary = LunaDataset(train_c, luna.series), LunaDataset(val_c, luna.series)
    nodule_model = fit_binary(start_model(init, 2, budget.depth, device), nodule_ds,
                              balanced_orders(nodule_ds, budget, seed), budget)
    mal_ds = MalignantLunaDataset(train_c, luna.series, balanced=True,
                                  epoch_size=budget.epoch_size, seed=seed)
    mal_model = fit_binary(start_model(nodule_model, 2, budget.depth or 2, device), mal_ds,
                           lambda epoch: epoch_indexes(mal_ds, epoch, True, seed, 1), budget)
    p_nod, p_mal = p_class1(nodule_model, val_binary), p_class1(mal_model, val_binary)
    true = val_ds.classes()
    two_pass = confusion(true, two_pass_classes(p_nod, p_mal))
    for r in runs.values():
        del r["model"]
    return {"runs": runs, "best": best, "two_pass": {"table": two_pass,
                                                     **dict(zip(("recalls", "mean_recall"),
                                                                class_recalls(two_pass)))},
            "val_counts": np.bincount(true, minlength=3),
            "samples": {"one_pass": budget.epochs * budget.epoch_size,
                        "two_pass": 2 * budget.epochs * budget.epoch_size}}


def format_confusion(table):
    head = "  true \\ predicted " + "".join(f"{c:>12}" for c in CLASSES) + "   recall"
    recalls, _ = class_recalls(table)
    return "\n".join([head] + [f"  {CLASSES[k]:>17} " + "".join(f"{v:12d}" for v in table[k])
                               + f"   {recalls[k]:.3f}" for k in range(3)])


def report_2(a):
    counts = a["val_counts"]
    print(f"  validation candidates: {counts[0]} non-nodules (--val-negatives), {counts[1]} "
          f"benign, {counts[2]} malignant nodules (per-class recall of so few nodules moves in "
          "big steps)")
    print("  a. Which balancing works best? per-class recall on the validation candidates")
    print(f"  {'balancing':>20} | drawn: non-nodule  benign  malignant | recall: non-nodule  "
          "benign  malignant | mean")
    for name, r in a["runs"].items():
        d, rec = r["drawn"], r["recalls"]
        print(f"  {name:>20} | {d[0]:17d} {d[1]:7d} {d[2]:10d} | {rec[0]:18.3f} {rec[1]:7.3f} "
              f"{rec[2]:10.3f} | {r['mean_recall']:.3f}")
    best = a["runs"][a["best"]]
    print(f"  -> best: {a['best']} (mean per-class recall {best['mean_recall']:.3f})")
    two = a["two_pass"]
    print("  b. One pass against the book's two (nodule classifier, then malignancy classifier "
          "fine-tuned from it), the same validation candidates:")
    print(side_by_side(format_confusion(best["table"]), format_confusion(two["table"]),
                       (f"  one pass, {a['best']} ({a['samples']['one_pass']:,} training "
                        "samples)", f"  two passes ({a['samples']['two_pass']:,} training "
                        "samples)")))
    verdict = ("the one-pass model is better" if best["mean_recall"] > two["mean_recall"] else
               "the two passes are better" if two["mean_recall"] > best["mean_recall"] else
               "they tie")
    right = {name: (int(t[1, 1] + t[2, 2]), int(t[0, 0]))
             for name, t in (("one", best["table"]), ("two", two["table"]))}
    print(f"  -> mean per-class recall: one pass {best['mean_recall']:.3f}, two passes "
          f"{two['mean_recall']:.3f}: {verdict}; one pass grades {right['one'][0]} of the "
          f"{counts[1] + counts[2]} nodules right (two passes: {right['two'][0]}) and "
          f"{right['one'][1]} of the {counts[0]} non-nodules (two passes: {right['two'][1]}); "
          "one pass runs one network per candidate, the analysis' two passes run two")


# ----------------------------------------------------------------------------- 14.3
def mine_non_nodules(seg_run, luna, uids, nodules, device="cpu", batch_size=4):
    """The segmentation pipeline's detections on the CTs `uids` (segment_ct, clean_mask,
    group_candidates) that match no annotated nodule (match_detections), as chapter 14
    non-nodule candidates; and how many detections did match one."""
    mined, matched = [], 0
    for uid in bar(uids, "mining"):
        ct = load_ct(luna.series[uid])
        probs = segment_ct(seg_run, ct, batch_size, device)
        centers_irc, _labels = group_candidates(
            clean_mask(probs > SEG_THRESHOLD, ct.spacing_xyz[::-1]), ct.hu)
        detections = [Detection(ct.irc_to_xyz(c), c, float("nan"), None) for c in centers_irc]
        hits = match_detections(detections, nodules.get(uid, [])).any(axis=0)
        mined += [MalCandidate(False, False, False, 0.0, uid, tuple(d.center_xyz))
                  for d, hit in zip(detections, hits) if not hit]
        matched += int(hits.sum())
    return mined, matched


def exercise_3(luna, seg, init, budget, device, seed=0, val_stride=10, fold=None, max_cts=10,
               val_negatives=0):
    """14.3: non-nodules mined by the segmentation pipeline instead of candidates.csv's: does
    the classifier improve (a), and which candidates change most (b)?"""
    candidates = read_candidates_ch14(luna)
    val_uids = validation_uids(luna.series, val_stride, fold)
    train_uids = sorted(set(luna.series) - set(val_uids))
    mine_uids, val_uids = train_uids[:max_cts], val_uids[:max_cts]
    train_c = of_series(candidates, train_uids)
    val_c = validation_sample(of_series(candidates, val_uids), val_negatives, seed)
    nodules, seg_run = read_nodules(luna), prec.prepare(seg, "fp32")
    mined, matched = mine_non_nodules(seg_run, luna, mine_uids, nodules, device)
    if not mined:
        raise DataError(f"the segmentation found no non-nodule in the {len(mine_uids)} "
                        "training CTs mined: nothing to train on (another --seg-model?)")
    positives = [c for c in train_c if c.is_nodule]
    sets = {"listed": positives + [c for c in train_c if not c.is_nodule],
            "mined": positives + mined}
    models = {}
    for name, train_list in sets.items():
        seed_everything(seed)
        ds = LunaDataset(train_list, luna.series)
        models[name] = fit_binary(start_model(init, 2, budget.depth, device), ds,
                                  balanced_orders(ds, budget, seed), budget)
    val_ds = LunaDataset(val_c, luna.series)
    listed_p = {name: p_class1(m, val_ds) for name, m in models.items()}
    runs = {name: prec.prepare(m, "fp32") for name, m in models.items()}
    own = {name: np.zeros((3, 4), dtype=np.int64) for name in models}
    shifts = []
    for uid in bar(val_uids, "analysis"):
        result = analyze_series(read_ct(luna.series[uid]), (seg_run, runs["listed"], None),
                                nodules.get(uid, []), device)
        own["listed"] += result["table"]
        centers = [d.center_irc for d in result["detections"]]
        p_mined = classify(runs["mined"], result["ct"], centers)
        mined_detections = [d._replace(prob_nodule=float(p))
                            for d, p in zip(result["detections"], p_mined)]
        own["mined"] += match_and_score(mined_detections, result["annotations"])
        is_nodule = result["matches"].any(axis=0)
        shifts += [("analysis", uid, d.center_xyz, bool(n), d.prob_nodule, float(p))
                   for d, p, n in zip(result["detections"], p_mined, is_nodule)]
    shifts += [("listed", c.series_uid, c.center_xyz, c.is_nodule, float(pa), float(pb))
               for c, pa, pb in zip(val_c, listed_p["listed"], listed_p["mined"])]
    labels = [c.is_nodule for c in val_c]
    return {"mined": len(mined), "matched": matched, "mined_cts": len(mine_uids),
            "listed_negatives": len(sets["listed"]) - len(positives), "positives": len(positives),
            "listed": {n: binary_scores(p, labels) for n, p in listed_p.items()},
            "own": {n: table_scores(t, len(val_uids)) for n, t in own.items()},
            "own_tables": own, "shifts": sorted(shifts, key=lambda s: -abs(s[5] - s[4])),
            "val_cts": len(val_uids)}


def mean_shift(shifts, source, nodule):
    values = [s[5] - s[4] for s in shifts if s[0] == source and s[3] == nodule]
    return (float(np.mean(values)) if values else float("nan")), len(values)


def report_3(a, top=10):
    print(f"  mined: {a['mined']:,} non-nodules from the segmentation of {a['mined_cts']} "
          f"training CTs ({a['matched']} detections matched an annotated nodule and were left "
          f"out); candidates.csv lists {a['listed_negatives']:,}; both runs train on the same "
          f"{a['positives']} nodules")
    print("  a. Does it improve? the same validation, two ways:")
    print(f"  {'trained on':>22} | listed candidates: recall (found)  FP of non-nodules  F1 |"
          f" the analysis' own ({a['val_cts']} CTs): recall (found)  FP/CT  F1")
    for name in ("listed", "mined"):
        s, o = a["listed"][name], a["own"][name]
        print(f"  {name + ' non-nodules':>22} | {s['recall']:24.3f} ({s['tp']}/{s['pos']})"
              f" {s['fp']:9d}/{s['neg']:<8d} {s['f1']:.3f} | {o['recall']:33.3f} "
              f"({o['found']}/{o['nodules']}) {o['fp_per_ct']:6.2f} {o['f1']:.3f}")
    for where, key in (("listed candidates", "listed"), ("the analysis' own", "own")):
        f1 = {n: a[key][n]["f1"] for n in ("listed", "mined")}
        word = ("improves" if f1["mined"] > f1["listed"] else
                "does not change" if f1["mined"] == f1["listed"] else "worsens")
        print(f"  -> on {where}: mining {word} F1 ({f1['listed']:.3f} -> {f1['mined']:.3f})")
    print(f"  b. Which candidates change most? the {top} largest shifts of P(nodule), listed "
          "-> mined non-nodules:")
    print(f"  {'source':>8} {'series':>30} {'centre xyz (mm)':>26} {'nodule':>6} "
          f"{'P listed':>8} {'P mined':>8} {'shift':>7}")
    for source, uid, xyz, nodule, pa, pb in a["shifts"][:top]:
        centre = "(" + ", ".join(f"{v:.1f}" for v in xyz) + ")"
        print(f"  {source:>8} {uid[-30:]:>30} {centre:>26} {'yes' if nodule else 'no':>6} "
              f"{pa:8.3f} {pb:8.3f} {pb - pa:+7.3f}")
    parts = []
    for source in ("analysis", "listed"):
        for nodule, what in ((False, "non-nodules"), (True, "nodules")):
            mean, n = mean_shift(a["shifts"], source, nodule)
            if n:
                parts.append(f"{source} {what} {mean:+.3f} (n={n})")
    print("  -> mean shift of P(nodule) by group: " + "; ".join(parts))


# ----------------------------------------------------------------------------- main
def parse_stride(text):
    """'16,24,24' -> (16, 24, 24) voxels (index, row, column)."""
    try:
        stride = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three integers I,R,C") from None
    if len(stride) != 3 or min(stride) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: three integers I,R,C of at least 1")
    return stride


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[luna_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES,
                   help="14.M to run (repeatable; default: all)")
    p.add_argument("--seg-model", default=None,
                   help=f"U-Net checkpoint (default: the book's {Path(BOOK_SEG_MODEL).name})")
    p.add_argument("--cls-model", default=None,
                   help="nodule classifier: what 14.5 runs and 14.1-14.3 fine-tune from "
                        f"(default: the book's {Path(BOOK_CLS_MODEL).name})")
    p.add_argument("--epochs", type=int, default=2, help="per training run (default: %(default)s)")
    p.add_argument("--epoch-size", type=int, default=320,
                   help="training samples per epoch (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's (default: %(default)s)")
    p.add_argument("--finetune-depth", type=int, choices=(0, 1, 2), default=2,
                   help="blocks fine-tuned from --cls-model: 1 the head, 2 block4 and the head, "
                        "0 a fresh model trained whole (default: %(default)s)")
    p.add_argument("--max-cts", type=int, default=10,
                   help="CTs analysed at most per set (14.1's validation and test, 14.3's mined "
                        "and validated; default: %(default)s)")
    p.add_argument("--val-negatives", type=int, default=200,
                   help="listed validation non-nodules scored by 14.1-14.3, drawn at random "
                        "beside every nodule (0: all of them; default: %(default)s)")
    p.add_argument("--edge-width", type=int, default=EDGE_WIDTH,
                   help="14.4: pixels from the border that count as edge (default: %(default)s)")
    p.add_argument("--stride", type=parse_stride, action="append", metavar="I,R,C",
                   help="14.5: the patch grid's step in voxels (repeatable; default: "
                        + " and ".join(",".join(map(str, s)) for s in DEFAULT_STRIDES) + ")")
    p.add_argument("--patch-cts", type=int, default=3,
                   help="14.5: validation CTs classified patch by patch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--out", default=None,
                   help="folder for the PNGs and the checkpoint (default: "
                        "runs/ch14/exercises_ch14/<time>)")
    add_device_argument(p)
    args = p.parse_args(argv)
    for flag in ("epochs", "epoch_size", "batch_size", "max_cts", "patch_cts"):
        require_at_least("--" + flag.replace("_", "-"), getattr(args, flag), 1)
    require_at_least("--edge-width", args.edge_width, 1)
    require_at_least("--val-negatives", args.val_negatives, 0)
    if not args.lr > 0:
        raise DataError(f"--lr {args.lr}: must be above 0")
    args.exercise = sorted(set(args.exercise or EXERCISES))
    args.stride = args.stride or list(DEFAULT_STRIDES)
    for stride in args.stride:
        if any(s > p for s, p in zip(stride, patches.PATCH_IRC)):
            raise DataError(f"--stride {','.join(map(str, stride))}: at most the patch, "
                            f"{','.join(map(str, patches.PATCH_IRC))}, along each axis (a "
                            "larger step leaves voxels no patch sees)")
    return args


QUESTIONS = {
    1: "A test set: pick the epoch on validation, then the end-to-end analysis on the test "
       "set; do they agree?",
    2: "One model for non-nodule / benign / malignant: a. which balancing; b. against the "
       "book's two passes",
    3: "Non-nodules mined by the segmentation instead of the listed ones: a. better? b. which "
       "candidates change most?",
    4: "Padded convolutions see less context at the edges: is the loss near the slice's edges "
       "measurably different?",
    5: "The whole CT in overlapping 32x48x48 patches against the segmentation approach",
}


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out) if args.out else runs_dir("ch14") / "exercises_ch14" / time.strftime(
        "%Y-%m-%d_%H.%M.%S")
    output_dir(out, "--out")
    seg_path = args.seg_model or book_file(BOOK_SEG_MODEL, args.data_dir, "luna-models")
    cls_path = args.cls_model or book_file(BOOK_CLS_MODEL, args.data_dir, "luna-models")
    seg, cls, _ = load_models(seg_path, cls_path)
    device = pick_device(args.device)
    seg, cls = seg.to(device), cls.to(device)
    luna = locate_luna(args.data_dir, args.synthetic)
    budget = Budget(args.epochs, args.epoch_size, args.batch_size, args.lr, args.finetune_depth)
    print(f"U-Net {Path(seg_path).name}, classifier {Path(cls_path).name}; training runs: "
          f"{budget.epochs} epoch(s) of {budget.epoch_size:,} samples, "
          + (f"fine-tuning the last {budget.depth} block(s)" if budget.depth else
             "a fresh model trained whole") + f", Adam lr {budget.lr:g}; device {device}")
    if luna.synthetic:
        print("(the synthetic sample: the answers show the mechanics; their sizes mean something "
              "on LUNA16 with longer runs, see the README)")
    split = {"val_stride": args.val_stride, "fold": args.fold}
    listed = {"val_negatives": args.val_negatives}
    answers = {}
    for n in args.exercise:
        print(f"\nExercise 14.{n}: {QUESTIONS[n]}", flush=True)
        started, cpu = time.perf_counter(), time.process_time()
        if n == 1:
            answers[1] = exercise_1(luna, seg, cls, budget, device, args.seed, out,
                                    max_cts=args.max_cts, **split, **listed)
            report_1(answers[1])
        elif n == 2:
            answers[2] = exercise_2(luna, cls, budget, device, args.seed, **split, **listed)
            report_2(answers[2])
        elif n == 3:
            answers[3] = exercise_3(luna, seg, cls, budget, device, args.seed,
                                    max_cts=args.max_cts, **split, **listed)
            report_3(answers[3])
        elif n == 4:
            answers[4] = patches.exercise_4(luna, seg, mask_cache_dir(args.data_dir),
                                            args.edge_width, device, args.seed, out, **split)
            patches.report_4(answers[4])
        else:
            answers[5] = patches.exercise_5(luna, seg, cls, args.stride, args.patch_cts, device,
                                            out, **split)
            patches.report_5(answers[5])
        answers[n]["seconds"] = time.perf_counter() - started
        answers[n]["cpu_seconds"] = time.process_time() - cpu
        print(f"  ({answers[n]['seconds']:.0f} s, {answers[n]['cpu_seconds']:.0f} s of CPU time)",
              flush=True)
    return answers


if __name__ == "__main__":
    keep_freed_memory()                 # glibc keeps freed blocks: see runtime.py
    run_cli(main)
