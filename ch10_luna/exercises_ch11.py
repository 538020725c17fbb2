"""Chapter 11's exercises (section 11.12): the DataLoader, the candidate order, TensorBoard keys.

    python ch10_luna/exercises_ch11.py                    # 11.1-11.3 on the built-in sample
    python ch10_luna/exercises_ch11.py --exercise 2 --epoch-size 0 --val-size 0   # book-sized

11.1 times the dataset through a DataLoader with 0, 1 and 2 workers (beside chapter 10's plain
pass) and works out from measured per-sample bytes which batch size and worker count fit in this
machine's memory. 11.2 trains one unbalanced epoch on the candidate list in its sorted order
(nodules first), reversed (nodules last) and shuffled, and measures the bias each leaves.
11.3 writes one short run's metrics to TensorBoard under four namings and reads them back.
`train_short` is the small training helper the chapter 12 exercises share: chapter 11's
train_one_epoch and evaluate, unchanged, around the exercise's own loader and model.
"""
import argparse
import datetime
import os
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from torch.utils.data import DataLoader, Dataset

from ch10_luna.dsets import LunaDataset, epoch_order, locate_luna, luna_parser, make_loader
from ch10_luna.exercises_ch10 import Timing, clear_caches, rate, raw_files, time_samples, times
from ch10_luna.metrics import LABEL, PRED, summarize
from ch10_luna.model import LunaModel
from ch10_luna.runtime import (
    keep_freed_memory,
    memory_format,
    mixed_precision,
    use_memory_format,
)
from ch10_luna.train_cls import evaluate, make_datasets, train_one_epoch
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import require_at_least, run_cli
from common.files import output_dir, runs_dir

EXERCISES = (1, 2, 3)
# One epoch of train_short: its number and the (3, N) metrics rows of training and validation.
Epoch = namedtuple("Epoch", ["epoch", "trn", "val"])


# ----------------------------------------------------------------------------- shared helpers
def thin(candidates, size):
    """At most `size` candidates in their list order: every nodule (at most half of `size`)
    and evenly spaced non-nodules for the rest; all of them when `size` is 0 or more."""
    if not size or size >= len(candidates):
        return list(candidates)
    pos = [i for i, c in enumerate(candidates) if c.is_nodule][:size // 2]
    neg = [i for i, c in enumerate(candidates) if not c.is_nodule]
    keep = set(pos) | {neg[int(k)] for k in np.linspace(0, len(neg) - 1, size - len(pos))}
    return [c for i, c in enumerate(candidates) if i in keep]


def short_data(luna, val_size, val_stride=10, fold=None):
    """(training LunaDataset, validation LunaDataset thinned to `val_size`: every nodule kept)."""
    train, val = make_datasets(luna, val_stride, fold)
    return train, LunaDataset(thin(val.candidates, val_size), val.series_paths)


def balanced_order(size, seed):
    """Chapter 12's balanced epochs of `size` samples, as train_short's `order`."""
    return lambda labels, epoch: epoch_order(labels, size, balanced=True, seed=seed, epoch=epoch)


def train_short(train_ds, val_ds, epochs, order, make_model=LunaModel, augment=None,
                collate=None, seed=0, lr=1e-3, batch_size=32, device="cpu", after_epoch=None):
    """A fresh `make_model()` trained with chapter 11's train_one_epoch and evaluate, unchanged:
    each epoch the samples `order(labels, epoch)` of `train_ds` in batches (through `collate`
    when given), `augment(epoch)` the epoch's per-batch augmentation (or None), then the whole
    of `val_ds`, then `after_epoch(model, Epoch)` when given. Adam (the book's SGD needs far
    more steps), fp32. (model, [Epoch, ...])."""
    seed_everything(seed)
    device = torch.device(device)
    amp = mixed_precision(device, enabled=False)
    model = use_memory_format(make_model().to(device), memory_format(device, amp))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    val_dl = make_loader(val_ds, range(len(val_ds)), batch_size, 0, device)
    history = []
    for epoch in range(1, epochs + 1):
        indices = [int(i) for i in order(train_ds.labels(), epoch)]
        train_dl = DataLoader(train_ds, batch_size=batch_size, sampler=indices,
                              collate_fn=collate)
        trn = train_one_epoch(model, train_dl, optimizer, amp,
                              augment(epoch) if augment else None)
        history.append(Epoch(epoch, trn, evaluate(model, val_dl, amp)))
        if after_epoch is not None:
            after_epoch(model, history[-1])
    return model, history


def auc(metrics):
    """ROC AUC of P(nodule): the chance a nodule scores above a non-nodule (ties count half);
    NaN when a class is missing."""
    label, pred = metrics[LABEL].numpy() > 0.5, metrics[PRED].numpy()
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(pred)
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def scores(metrics):
    """summarize's numbers plus the AUC and the mean P(nodule) over all samples."""
    return {**summarize(metrics), "auc": auc(metrics), "mean_p": float(metrics[PRED].mean())}


def score_line(s):
    """'F1 0.412 (precision 0.30, recall 0.86), AUC 0.950, loss 0.123'."""
    return (f"F1 {s['pr/f1_score']:.3f} (precision {s['pr/precision']:.2f}, recall "
            f"{s['pr/recall']:.2f}), AUC {s['auc']:.3f}, loss {s['loss/all']:.3f}")


# ----------------------------------------------------------------------------- 11.1
def loader_pass(dataset, indices, batch_size, num_workers):
    """One pass of a DataLoader over `indices` (batches in that order): a Timing."""
    loader = make_loader(dataset, indices, batch_size, num_workers, "cpu")
    started, n, series = time.perf_counter(), 0, set()
    for _x, label, uids, _irc in loader:
        n += len(label)
        series.update(uids)
    return Timing(n, time.perf_counter() - started, len(series))


def private_bytes():
    """This process's private memory (Private_Clean + Private_Dirty of smaps_rollup, bytes):
    what a forked worker costs beyond the pages it shares with its parent; None off Linux."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return None
    return sum(int(line.split()[1]) * 1024 for line in text.splitlines()
               if line.startswith(("Private_Clean:", "Private_Dirty:")))


class WithProcessMemory(Dataset):
    """A dataset's samples with one more field: the private bytes of the process that read it."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return (*self.dataset[i], private_bytes() or 0)


def activation_bytes(model, batch_size=2):
    """Bytes autograd keeps for the backward pass, per sample of a training forward (distinct
    saved tensors, counted once), on zero crops."""
    saved = {}

    def keep(t):
        saved[(t.data_ptr(), t.nbytes)] = t.nbytes
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        logits, _ = model(torch.zeros(batch_size, 1, 32, 48, 48))
    logits.sum().backward()
    return sum(saved.values()) / batch_size


def meminfo():
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo; None off Linux."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text()
                      .splitlines())
    except OSError:
        return None
    return tuple(int(fields[k].split()[0]) * 1024 for k in ("MemTotal", "MemAvailable"))


def largest_batch(available, sample_bytes, activations, worker_bytes, workers, prefetch=2):
    """The largest batch size whose memory fits in `available` bytes with `workers` workers:
    each worker holds `prefetch` batches and its own `worker_bytes`, the training process one
    batch and its activations (0 workers: one batch, loaded in the training process)."""
    in_flight = workers * prefetch + 1
    per_sample = sample_bytes * in_flight + activations
    return max(0, int((available - workers * worker_bytes) // per_sample))


def exercise_1(dataset, limit, batch_size, workers=(0, 1, 2)):
    """Samples/s of a DataLoader with each worker count (a pass with the caches cleared, then a
    second), chapter 10's plain pass beside them; the measured bytes behind 11.1b."""
    raws = raw_files(dataset)
    indices = list(range(min(limit, len(dataset))))
    clear_caches(raws)
    runs = {"plain": (time_samples(dataset, indices), time_samples(dataset, indices))}
    for w in workers:
        clear_caches(raws)
        runs[w] = (loader_pass(dataset, indices, batch_size, w),
                   loader_pass(dataset, indices, batch_size, w))
    probe = make_loader(WithProcessMemory(dataset), indices[:4 * batch_size], batch_size, 1,
                        "cpu")
    batches = list(probe)
    x, label, _uids, irc, private = batches[-1]
    sample_bytes = (x.nbytes + label.nbytes + irc.nbytes) / len(label)
    return {"runs": runs, "sample_bytes": sample_bytes, "worker_bytes": int(private.max()),
            "activations": activation_bytes(LunaModel()), "memory": meminfo(),
            "batch_size": batch_size}


def report_1(r, limit):
    runs, bs = r["runs"], r["batch_size"]
    print(f"Exercise 11.1: a DataLoader over the training set, N = {limit:,}, batch size {bs}")
    plain = runs["plain"]
    print(f"  chapter 10's plain pass: {rate(plain[0])} with the caches cleared, {rate(plain[1])}"
          " the second time")
    for w in (k for k in runs if k != "plain"):
        print(f"  a. num_workers {w}: {rate(runs[w][0])} with the caches cleared; second pass "
              f"{rate(runs[w][1])} ({times(plain[1], runs[w][1], 'the plain second pass')})")
    best = max((k for k in runs if k != "plain"), key=lambda k: runs[k][1].n / runs[k][1].seconds)
    print(f"     fastest second pass: num_workers {best}. Each pass forks new workers "
          "(persistent_workers is off), each starting with the training process's CT cache as "
          "it is at the fork (empty here), so every worker reopens the CTs it reads on every "
          "pass; the OS page cache is shared by all.")
    total, available = r["memory"] or (None, None)
    print(f"  b. measured: {r['sample_bytes'] / 1024:,.0f} KiB per sample in a batch (the "
          f"float32 crop), {r['activations'] / 2**20:,.1f} MiB of activations kept for the "
          f"backward per training sample, {r['worker_bytes'] / 2**20:,.0f} MiB private to a "
          "worker process; each worker keeps prefetch_factor 2 batches ready")
    if available is None:
        print("     /proc/meminfo is not readable here: no memory figures")
        return
    print(f"     memory: {total / 2**30:,.1f} GiB in all, {available / 2**30:,.1f} GiB available "
          "now (/proc/meminfo); the largest batch that fits, before any margin:")
    for w in (0, 1, 2, 4, 8):
        b = largest_batch(available, r["sample_bytes"], r["activations"], r["worker_bytes"], w)
        print(f"       num_workers {w}: batch size {b:,}")
    bs_act, bs_batches = r["activations"] * bs, r["sample_bytes"] * bs * (2 * 2 + 1)
    print(f"  answer: at batch size {bs} the activations take {bs_act / 2**20:,.0f} MiB against "
          f"{bs_batches / 2**20:,.0f} MiB for the batches in flight with 2 workers: the "
          "activations decide the batch size. A worker adds its "
          f"{r['worker_bytes'] / 2**20:,.0f} MiB and wants a core of its own ({os.cpu_count()} "
          f"here); the fastest second pass here had num_workers {best}.")


# ----------------------------------------------------------------------------- 11.2
def list_order(kind, seed=0):
    """train_short's `order` for chapter 11's unbalanced epoch: the list as sorted
    ('sorted': nodules first, largest first), 'reversed', or 'shuffled' (epoch_order)."""
    def order(labels, epoch):
        if kind == "shuffled":
            return epoch_order(labels, None, balanced=False, seed=seed, epoch=epoch)
        indices = np.arange(len(labels))
        return indices[::-1] if kind == "reversed" else indices
    return order


def exercise_2(train_ds, val_ds, epoch_size, seed, device):
    """One unbalanced epoch on the candidate list (thinned to `epoch_size`, order kept) in each
    order; the validation scores and the mean P(nodule) each leaves."""
    train = LunaDataset(thin(train_ds.candidates, epoch_size), train_ds.series_paths)
    results = {}
    for kind in ("sorted", "reversed", "shuffled"):
        _, history = train_short(train, val_ds, 1, list_order(kind, seed), seed=seed,
                                 device=device)
        results[kind] = scores(history[-1].val)
    return {"scores": results, "train": len(train), "nodules": sum(train.labels())}


def report_2(r):
    s = r["scores"]
    print(f"Exercise 11.2: one unbalanced epoch ({r['train']:,} candidates, {r['nodules']:,} of "
          "them nodules, in list order) with the sort order reversed")
    for kind, what in (("sorted", "sorted (nodules first)"), ("reversed", "reversed (nodules "
                                                                         "last)"),
                       ("shuffled", "shuffled (chapter 11)")):
        v = s[kind]
        print(f"  {what:24s} val: neg {v['correct/neg']:5.1f}% pos {v['correct/pos']:5.1f}% "
              f"correct, mean P(nodule) {v['mean_p']:.3f}, {score_line(v)}")
    rev, srt = s["reversed"], s["sorted"]
    if rev["mean_p"] <= srt["mean_p"]:
        verdict = (f"here {r['train']:,} samples were too few for the last class seen to pull "
                   "the outputs; try a longer --epoch-size")
    elif rev["correct/pos"] > srt["correct/pos"]:
        verdict = ("the model ends where the epoch ends, the last class it saw wins: reversed "
                   f"calls {rev['correct/pos']:.0f}% of the validation nodules nodules against "
                   f"{srt['correct/pos']:.0f}% sorted. A shuffled epoch (or chapter 12's "
                   "balancing) mixes the classes")
    else:
        verdict = ("the outputs lean towards the class the epoch ended on, though not past the "
                   f"0.5 threshold in {r['train']:,} samples: reversed finds no more validation "
                   f"nodules than sorted ({rev['correct/pos']:.0f}% against "
                   f"{srt['correct/pos']:.0f}%). A shuffled epoch (or chapter 12's balancing) "
                   "mixes the classes")
    print(f"  answer: reversed, the epoch ends on nodules: mean P(nodule) {rev['mean_p']:.3f} "
          f"on validation against {srt['mean_p']:.3f} sorted (ending on non-nodules), "
          f"{100 - rev['correct/neg']:.0f}% of the non-nodules called nodules against "
          f"{100 - srt['correct/neg']:.0f}%: {verdict}.")


# ----------------------------------------------------------------------------- 11.3
NAMINGS = {
    "book": "two writers (runs trn, val), keys metric/class: loss/all, correct/neg, pr/recall",
    "a": "slashes placed the other way: class/metric: all/loss, neg/correct, recall/pr",
    "b": "one writer, the phase in the key: trn/loss/all, val/loss/all",
    "c": "own: two writers, keys by what is read together, numbered sections: 1_pr/recall, "
         "2_loss/all, 3_correct/neg, 4_count/tp",
}
TB_SIZE = 128                   # 11.3's epochs and validation: at most this many samples
OWN_SECTIONS = {"pr": "1_pr", "loss": "2_loss", "correct": "3_correct", "count": "4_count"}


def tag_for(naming, phase, key):
    """(run folder, TensorBoard tag) of a summary `key` ('loss/all') in `phase` ('trn')."""
    group, name = key.split("/", 1)
    if naming == "a":
        return phase, f"{name}/{group}"
    if naming == "b":
        return "trnval", f"{phase}/{key}"
    if naming == "c":
        return phase, f"{OWN_SECTIONS.get(group, group)}/{name}"
    return phase, key


def write_namings(folder, history, namings=tuple(NAMINGS)):
    """Each epoch's trn and val summaries as scalars under every naming, one folder each
    (`folder/<naming>/<run>`); the folders."""
    from torch.utils.tensorboard import SummaryWriter  # TensorBoard: only when used

    written = {}
    for naming in namings:
        writers = {}
        for e in history:
            for phase, metrics in (("trn", e.trn), ("val", e.val)):
                for key, value in summarize(metrics).items():
                    run, tag = tag_for(naming, phase, key)
                    if run not in writers:
                        writers[run] = SummaryWriter(log_dir=str(Path(folder) / naming / run))
                    writers[run].add_scalar(tag, value, e.epoch)
        for w in writers.values():
            w.close()
        written[naming] = Path(folder) / naming
    return written


def read_tags(folder):
    """{run folder: sorted scalar tags} of the event files under `folder`, read back with
    TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for run in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        acc = EventAccumulator(str(run))
        acc.Reload()
        tags[run.name] = sorted(acc.Tags()["scalars"])
    return tags


def exercise_3(train_ds, val_ds, out, epoch_size, seed, device):
    """A run of two balanced epochs of `epoch_size` samples, its metrics written under each
    naming and read back: {naming: {run: tags}}."""
    _, history = train_short(train_ds, val_ds, 2, balanced_order(epoch_size, seed), seed=seed,
                             device=device)
    folders = write_namings(Path(out) / "tensorboard", history)
    return {"tags": {naming: read_tags(f) for naming, f in folders.items()},
            "folder": Path(out) / "tensorboard"}


def report_3(r):
    print(f"Exercise 11.3: TensorBoard key naming (event files under {r['folder']}, read back "
          "with EventAccumulator)")
    for naming, runs in r["tags"].items():
        tags = sorted({t for ts in runs.values() for t in ts})
        sections = sorted({t.split("/")[0] for t in tags})
        shared = sum(1 for t in tags if sum(t in ts for ts in runs.values()) > 1)
        label = "" if naming == "book" else f"{naming}. "
        print(f"  {label}{NAMINGS[naming]}")
        print(f"     runs {', '.join(runs)}; {len(tags)} tags, e.g. {', '.join(tags[:3])}; "
              f"TensorBoard sections (before the first slash): {', '.join(sections)}; "
              f"charts where trn and val overlay: {shared}")
    print("  answer: TensorBoard draws one chart per tag and overlays the runs (writers) on it, "
          "and groups charts by the tag's first part. The book's metric/class keys with one "
          "writer per phase put trn and val on one chart, grouped by metric; class/metric (a) "
          "groups by class; one writer (b) splits trn and val into separate charts, which is "
          "why the book has two; numbered sections (c) put the scores to watch first, as "
          "TensorBoard sorts sections by name.")


REPORTS = {1: lambda r, args: report_1(r, args.limit), 2: lambda r, args: report_2(r),
           3: lambda r, args: report_3(r)}


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[luna_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES, metavar="M",
                   help="which exercise(s) of chapter 11 (repeatable; default: all)")
    add_device_argument(p)
    p.add_argument("--limit", type=int, default=1000,
                   help="11.1: samples per timed pass (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    p.add_argument("--epoch-size", type=int, default=1024,
                   help="11.2: training candidates, thinned in list order, every nodule kept "
                        "up to half (0: the whole list, the book's epoch; default: %(default)s);"
                        f" 11.3 trains two epochs of at most {TB_SIZE}")
    p.add_argument("--val-size", type=int, default=512,
                   help="validation candidates, every nodule kept (0: all; default: "
                        f"%(default)s; 11.3: at most {TB_SIZE})")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/ch10/exercises_ch11/<time>)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    require_at_least("--limit", args.limit, 1)
    require_at_least("--batch-size", args.batch_size, 1)
    require_at_least("--epoch-size", args.epoch_size, 0)
    require_at_least("--val-size", args.val_size, 0)
    device = pick_device(args.device)
    out = output_dir(args.out or runs_dir("ch10") / "exercises_ch11" /
                     f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}", "--out")
    luna = locate_luna(args.data_dir, args.synthetic)
    train_ds, val_ds = short_data(luna, args.val_size, args.val_stride, args.fold)
    print(f"training set: {len(train_ds):,} candidates ({sum(train_ds.labels()):,} nodules); "
          f"validation: {len(val_ds):,} ({sum(val_ds.labels()):,} nodules); device {device}")
    results = {}
    for m in sorted(set(args.exercise or EXERCISES)):
        started = time.perf_counter()
        results[m] = {
            1: lambda: exercise_1(train_ds, args.limit, args.batch_size),
            2: lambda: exercise_2(train_ds, val_ds, args.epoch_size, args.seed, device),
            3: lambda: exercise_3(train_ds, LunaDataset(thin(val_ds.candidates, TB_SIZE),
                                                        val_ds.series_paths), out,
                                  min(args.epoch_size or TB_SIZE, TB_SIZE), args.seed, device),
        }[m]()
        REPORTS[m](results[m], args)
        print(f"  ({time.perf_counter() - started:.0f} s)\n")
    return results


if __name__ == "__main__":
    keep_freed_memory()                 # glibc keeps freed blocks: see runtime.py
    run_cli(main)
