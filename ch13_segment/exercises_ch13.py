"""Chapter 13's exercises (section 13.9), answered and measured: the built-in sample if no LUNA16.

    python ch13_segment/exercises_ch13.py                  # all five, a few minutes on 2 cores
    python ch13_segment/exercises_ch13.py --exercise 3 --epochs 6 --epoch-size 8000

13.1 chapter 12's augmentation as a module inside the classifier (the book's
SegmentationAugmentation, for chapter 11's model), its compromises and its cost in samples/s;
13.2 a training / validation / test split by series; 13.3 a three-class U-Net (background,
benign, malignant) against a diameter rule; 13.4 training on 64 x 64 crops mixed with whole
slices, batches of one shape each; 13.5 other data sources. The U-Nets train with train_seg.py's
loop and are scored by its evaluate, unchanged; the twists (the augmenting model, the split, the
three classes, the mixed batches) are written out here. Answers and times: NOTES.md.
"""
import argparse
import copy
import itertools
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from ch10_luna.augment import BOOK_AUGMENTATION, augment_batch, batch_augmenter
from ch10_luna.dsets import (
    LunaDataset,
    epoch_order,
    locate_luna,
    make_loader,
    read_candidates,
    split_by_series,
    validation_uids,
)
from ch10_luna.model import LunaModel
from ch10_luna.runtime import keep_freed_memory, memory_format, mixed_precision, use_memory_format
from ch13_segment.dsets import (
    THRESHOLD_HU,
    TRAIN_BOX,
    TRAIN_CROP,
    Luna2dSegmentationDataset,
    TrainingLuna2dSegmentationDataset,
    annotation_box,
    annotation_centers,
    annotation_centers_irc,
    context_slices,
    load_masks,
    mask_cache_dir,
    mask_slice,
    series_mask,
    split_series,
    training_crop,
)
from ch13_segment.dsets_cls import read_malignancy_annotations
from ch13_segment.model import UNetWrapper
from ch13_segment.train_seg import (
    MODEL_KWARGS,
    dice_loss,
    evaluate,
    summarize,
    train_one_epoch,
)
from common.ct import crop_bounds, to_hu
from common.data import add_data_dir_argument
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import DataError, require_at_least, run_cli
from common.figures import lung_gray, new_figure, save_figure
from common.files import check_writable, runs_dir

EXERCISES = (1, 2, 3, 4, 5)
# How big the runs are (main's flags): U-Net epochs of `epoch_size` crops in batches of
# `batch_size`, the U-Net's width (2**width filters at the top) and depth, Adam's lr, the seed.
Sizes = namedtuple("Sizes", "epochs epoch_size batch_size lr seed width depth")
CLASSES = ("background", "benign", "malignant")
BENIGN_COLOR, MALIGNANT_COLOR = (0.2, 0.6, 1.0), (1.0, 0.25, 0.75)   # blue, magenta


# ----------------------------------------------------------------------------- shared pieces
def new_unet(sizes, device, n_classes=1):
    """The book's UNetWrapper at `sizes`' width and depth, seeded, channels-last on CPU."""
    seed_everything(sizes.seed)
    model = UNetWrapper(**{**MODEL_KWARGS, "wf": sizes.width, "depth": sizes.depth,
                           "n_classes": n_classes})
    return use_memory_format(model.to(device), memory_format(device, False, 2))


def train_unet(model, train_ds, sizes, desc):
    """train_seg.train_one_epoch, unchanged, for sizes.epochs epochs; each epoch's summary."""
    device = next(model.parameters()).device
    amp, optimizer = mixed_precision(device, False), torch.optim.Adam(model.parameters(),
                                                                      lr=sizes.lr)
    history = []
    for epoch in range(1, sizes.epochs + 1):
        train_ds.set_epoch(epoch)
        loader = make_loader(train_ds, range(len(train_ds)), sizes.batch_size, 0, device)
        rows = train_one_epoch(model, bar(loader, f"{desc} E{epoch}"), optimizer, amp)
        history.append(summarize(rows))
    return history


def score(model, dataset, batch_size):
    """train_seg.evaluate, unchanged, over a whole dataset: the (5, N) per-sample rows."""
    device = next(model.parameters()).device
    loader = make_loader(dataset, range(len(dataset)), batch_size, 0, device)
    return evaluate(model, loader, mixed_precision(device, False))


def bar(iterable, desc):
    """A progress bar with its ETA on stderr (gone when done)."""
    return tqdm(iterable, desc=desc, unit="batch", leave=False, mininterval=2.0,
                dynamic_ncols=True)


def seg_data(luna, cache_dir, val_stride):
    """(masks, training uids, validation uids) of the chapter's two-way split."""
    masks = load_masks(luna.series, annotation_centers(luna), cache_dir, progress=False)
    train_uids, val_uids = split_series(luna.series, val_stride)
    if not train_uids or not val_uids:
        raise DataError(f"{len(luna.series)} series on disk: too few to split with "
                        f"--val-stride {val_stride}")
    return masks, train_uids, val_uids


def metrics_line(s):
    """Dice loss, precision, recall and F1 of a train_seg.summarize dict, in one phrase."""
    return (f"dice loss {s['loss/all']:.3f}, precision {s['pr/precision']:.3f}, recall "
            f"{s['pr/recall']:.3f}, F1 {s['pr/f1_score']:.3f}")


# ----------------------------------------------------------------------------- 13.1
class AugmentationModule(nn.Module):
    """Chapter 12's batch augmentation as a module, as the book's SegmentationAugmentation:
    augments in forward while training, passes the batch through in eval mode.

    Each batch's transforms come from augment.batch_augmenter (seeded by seed, epoch, rank and
    batch number), so the module draws exactly what the chapter's callable draws. It has no
    parameters or buffers; its batch counter is Python state, outside the state_dict.
    """

    def __init__(self, spec=BOOK_AUGMENTATION, seed=0, rank=0):
        super().__init__()
        self.spec, self.seed, self.rank = spec, seed, rank
        self.set_epoch(1)

    def set_epoch(self, epoch, first_batch=0):
        """Start `epoch`'s draws (at `first_batch` for a run resumed mid-epoch)."""
        self.draw = batch_augmenter(self.spec, self.seed, epoch, self.rank, first_batch)

    def forward(self, x):
        if not self.training or self.draw is None:
            return x
        return self.draw(x)


class AugmentedClassifier(nn.Module):
    """The classifier with the augmentation in front: (logits, probabilities) as LunaModel."""

    def __init__(self, model, augmentation):
        super().__init__()
        self.augmentation, self.model = augmentation, model

    def forward(self, x):
        return self.model(self.augmentation(x))


def per_sample_augmenter(spec, seed):
    """The book's chapter 12 way: each sample augmented alone (in its Dataset), one at a time."""
    generators = {}

    def augment(x):
        generator = generators.setdefault(x.device, torch.Generator(x.device).manual_seed(seed))
        return torch.cat([augment_batch(x[i:i + 1], spec, generator) for i in range(len(x))])
    return augment


def train_classifier(model, batches, optimizer, augment=None):
    """Chapter 11's training step over in-memory (x, y) batches; samples per second from the
    second batch on (the first warms up)."""
    model.train()
    started, done = None, 0
    for k, (x, y) in enumerate(batches):
        if k == 1:
            started = time.perf_counter()
        if augment is not None:
            x = augment(x)
        optimizer.zero_grad()
        logits, _probs = model(x)
        F.cross_entropy(logits, y).backward()
        optimizer.step()
        done += len(x) if k else 0
    return done / (time.perf_counter() - started)


def classifier_batches(luna, n_batches, batch_size, seed, device):
    """`n_batches` balanced batches of chapter 11's training crops, read once into memory."""
    candidates = read_candidates(luna)
    train, _val = split_by_series(candidates, val_uids=validation_uids(luna.series))
    dataset = LunaDataset(train, luna.series)
    order = epoch_order(dataset.labels(), n_batches * batch_size, balanced=True, seed=seed)
    return [(x.to(device), label[:, 1].to(device))
            for x, label, *_ in make_loader(dataset, order, batch_size, 0, device)]


def exercise_1(luna, cls_batches, sizes, device, rounds=2):
    """13.1: the augmenting module inside the classifier: what it changes (a) and its training
    speed against chapter 12's callable, the per-sample way and none (b), on the same
    cls_batches = (number, size) batches."""
    n_batches, batch_size = cls_batches
    batches = classifier_batches(luna, n_batches, batch_size, sizes.seed, device)
    seed_everything(sizes.seed)
    fmt = memory_format(device, False, 3)
    initial = use_memory_format(LunaModel().to(device), fmt)

    def fresh():
        return copy.deepcopy(initial)

    variants = {
        "none": lambda: (fresh(), None),
        "module in the model": lambda: (AugmentedClassifier(fresh(), AugmentationModule(
            BOOK_AUGMENTATION, sizes.seed)), None),
        "batch_augmenter (chapter 12)": lambda: (fresh(), batch_augmenter(
            BOOK_AUGMENTATION, sizes.seed, 1)),
        "per sample (book ch. 12)": lambda: (fresh(), per_sample_augmenter(
            BOOK_AUGMENTATION, sizes.seed)),
    }
    speed, trained = {}, {}
    for _round in range(rounds):               # best of `rounds`: the machine's noise
        for name, make in variants.items():
            model, augment = make()
            optimizer = torch.optim.Adam(model.parameters(), lr=sizes.lr)
            rate = train_classifier(model, bar(batches, f"13.1 {name}"), optimizer, augment)
            speed[name] = max(speed.get(name, 0.0), rate)
            trained[name] = model
    module_weights = trained["module in the model"].model.state_dict()
    same_training = max(float((module_weights[k].float() - v.float()).abs().max())
                        for k, v in trained["batch_augmenter (chapter 12)"].state_dict().items())
    wrapped = trained["module in the model"]
    x = batches[0][0]
    wrapped.eval()
    with torch.no_grad():
        eval_diff = float((wrapped(x)[1] - wrapped.model(x)[1]).abs().max())
        wrapped.train()
        twice = float((wrapped.augmentation(x) - wrapped.augmentation(x)).abs().max())
    keys = list(wrapped.state_dict())
    return {"samples_per_s": speed, "relative": {k: v / speed["none"] for k, v in speed.items()},
            "batches": n_batches, "batch_size": batch_size, "device": str(device),
            "module_tensors": len(list(wrapped.augmentation.parameters()))
            + len(list(wrapped.augmentation.buffers())),
            "state_keys": len(keys), "state_keys_prefixed": sum(k.startswith("model.")
                                                                 for k in keys),
            "eval_max_diff": eval_diff, "train_two_calls_max_diff": twice,
            "module_vs_callable_weights_max_diff": same_training}


def format_1(a):
    s, r = a["samples_per_s"], a["relative"]
    rows = "\n".join(f"      {name:30s} {s[name]:7.1f} samples/s  {r[name]:5.2f}x"
                     for name in s)
    module, chapter = r["module in the model"], r["batch_augmenter (chapter 12)"]
    single = r["per sample (book ch. 12)"]
    return (
        "a. compromises of the augmentation inside the model:\n"
        f"   - saved with it? It holds {a['module_tensors']} parameters or buffers: nothing of it "
        f"is saved, but the wrapper renames the classifier's {a['state_keys']} tensors to "
        f"'model.*' ({a['state_keys_prefixed']} of {a['state_keys']}), so a bare LunaModel "
        "checkpoint (the book's) loads into .model, not into the wrapper.\n"
        f"   - off at validation only through eval(): in eval mode the wrapper's output equals the "
        f"bare model's (max |diff| {a['eval_max_diff']:.1g}); in train mode two calls on one "
        f"batch differ (max |diff| {a['train_two_calls_max_diff']:.1f} HU), so a loop that "
        "forgets model.eval() validates on augmented crops.\n"
        "   - runs where the batch is (its generator is made on the batch's device), after the "
        "loader: no worker time, but the device does the work.\n"
        "   - seeding: its batch counter is Python state outside the state_dict; a run resumed "
        "mid-epoch must call set_epoch(epoch, first_batch), each DDP rank needs its own rank, "
        "exactly as with batch_augmenter; trained through the module or through the callable, "
        f"the weights agree to {a['module_vs_callable_weights_max_diff']:.1g}.\n"
        f"b. training speed, the same {a['batches']} in-memory batches of {a['batch_size']} "
        f"({a['device']}; best of 2 rounds, the first batch not timed):\n{rows}\n"
        f"   the module and the callable do the same computation (the same weights after "
        f"training): {module:.2f}x and {chapter:.2f}x of no augmentation, their difference the "
        f"machine's noise; augmenting sample by sample ran at {single:.2f}x, "
        + ("slower than either" if single < min(module, chapter) else "not slower than both")
        + ": the batch is what makes it cheap")


# ----------------------------------------------------------------------------- 13.2
def three_way_split(series, val_stride=10, test_stride=10, test_offset=5):
    """(train, val, test) series uids, sorted: the chapter's validation series (every
    val_stride-th, from the first) and, of the others, those at positions test_offset,
    test_offset + test_stride, ... of the sorted uids as the test series."""
    if not 0 <= test_offset < test_stride:
        raise DataError(f"--test-offset {test_offset}: must be in 0 .. --test-stride - 1 "
                        f"({test_stride - 1})")
    uids = sorted(series)
    _train, val = split_series(uids, val_stride)
    in_val = set(val)
    test = [u for i, u in enumerate(uids) if i % test_stride == test_offset and u not in in_val]
    in_test = set(test)
    train = [u for u in uids if u not in in_val and u not in in_test]
    if not test or not train:
        raise DataError(f"{len(uids)} series: --val-stride {val_stride}, --test-stride "
                        f"{test_stride}, --test-offset {test_offset} leave "
                        f"{len(train)} for training and {len(test)} for test")
    return train, val, test


def per_series_f1(rows, dataset):
    """series_uid -> F1 of its samples, from evaluate's per-sample rows in dataset order."""
    uids = np.array([uid for uid, _index in dataset.samples])
    return {uid: summarize(rows[:, torch.from_numpy(uids == uid)])["pr/f1_score"]
            for uid in dataset.series_uids}


def exercise_2(luna, cache_dir, sizes, device, strides=(10, 10, 5)):
    """13.2: a test split by series: its fraction (a), validation against test (b), and the
    training lost to it (c: the same steps on the two-way split's training series)."""
    train3, val, test = three_way_split(luna.series, *strides)
    masks, train2, val2 = seg_data(luna, cache_dir, strides[0])
    assert val == val2                                    # the chapter's validation series
    results = {}
    for name, uids in (("three-way", train3), ("two-way", train2)):
        model = new_unet(sizes, device)
        train_ds = TrainingLuna2dSegmentationDataset(uids, luna.series, masks, sizes.epoch_size,
                                                     seed=sizes.seed)
        history = train_unet(model, train_ds, sizes, f"13.2 {name}")
        phases = {"val": Luna2dSegmentationDataset(val, luna.series, masks)}
        if name == "three-way":
            phases["test"] = Luna2dSegmentationDataset(test, luna.series, masks)
        scored = {phase: score(model, ds, sizes.batch_size) for phase, ds in phases.items()}
        results[name] = {"series": len(uids), "nodules": len(train_ds.nodules),
                         "train": history[-1],
                         **{phase: summarize(rows) for phase, rows in scored.items()},
                         **{f"{phase}_per_series_f1": per_series_f1(rows, phases[phase])
                            for phase, rows in scored.items()}}
    n = len(luna.series)
    three = results["three-way"]
    spread = max(float(np.std(list(three[f"{p}_per_series_f1"].values()))) for p in
                 ("val", "test"))
    return {"series": n, "train": len(train3), "val": len(val), "test": len(test),
            "test_fraction": len(test) / n, "val_fraction": len(val) / n,
            "strides": strides, "runs": results, "f1_gap": abs(three["val"]["pr/f1_score"]
                                                               - three["test"]["pr/f1_score"]),
            "per_series_f1_std": spread, "epochs": sizes.epochs, "epoch_size": sizes.epoch_size}


def format_2(a):
    three, two = a["runs"]["three-way"], a["runs"]["two-way"]
    consistent = a["f1_gap"] <= a["per_series_f1_std"]
    lost = two["val"]["pr/f1_score"] - three["val"]["pr/f1_score"]
    series_f1 = lambda d: ", ".join(f"{v:.2f}" for v in d.values())  # noqa: E731
    return (
        f"a. test fraction: {a['test']} of {a['series']} series ({a['test_fraction']:.0%}; "
        f"validation {a['val']}, {a['val_fraction']:.0%}; training {a['train']}), every "
        f"{a['strides'][1]}-th series from position {a['strides'][2]}, none of them validation's\n"
        f"b. one U-Net trained on the {a['train']} training series ({a['epochs']} x "
        f"{a['epoch_size']:,} crops), scored by train_seg.evaluate:\n"
        f"   validation: {metrics_line(three['val'])}  (per series F1 "
        f"{series_f1(three['val_per_series_f1'])})\n"
        f"   test:       {metrics_line(three['test'])}  (per series F1 "
        f"{series_f1(three['test_per_series_f1'])})\n"
        f"   {'consistent' if consistent else 'not consistent'}: the F1 gap {a['f1_gap']:.3f} is "
        f"{'within' if consistent else 'beyond'} the spread between single series (std "
        f"{a['per_series_f1_std']:.3f}); with so few series either set is a noisy estimate\n"
        f"c. the same steps on the two-way split's {two['series']} training series "
        f"({two['nodules']} nodules against {three['nodules']}):\n"
        f"   training loss (fn-weighted, last epoch): three-way "
        f"{three['train']['loss/fn_weighted']:.3f}, two-way {two['train']['loss/fn_weighted']:.3f}"
        f"\n   validation (the same series): two-way {metrics_line(two['val'])}\n"
        f"   holding out the test series changed validation F1 by {-lost:+.3f} "
        f"({'a loss' if lost > 0 else 'no loss'} on this sample; LUNA16's figure: the same "
        "command with --data-dir)")


# ----------------------------------------------------------------------------- 13.3
def malignancy_by_series(luna):
    """series_uid -> [MalCandidate] of annotations_with_malignancy.csv (chapter 14's reader)."""
    if luna.malignancy_csv is None:
        raise DataError(f"{luna.root}: no annotations_with_malignancy.csv, which exercise 13.3 "
                        "needs (get it with: python -m common.data download luna-csv)")
    nodules = {}
    for n in read_malignancy_annotations(luna.malignancy_csv):
        if n.series_uid in luna.series:
            nodules.setdefault(n.series_uid, []).append(n)
    return nodules


def class_masks(luna, nodules, cache_dir):
    """series_uid -> (benign SeriesMask, malignant SeriesMask): the chapter's masks built from
    each class's nodules alone (cached beside the chapter's, under seg_masks_benign and
    seg_masks_malignant); their union is the chapter's mask."""
    masks = {}
    for uid in bar(sorted(luna.series), "13.3 class masks"):
        found = nodules.get(uid, [])
        masks[uid] = tuple(series_mask(uid, luna.series[uid], [n.center_xyz for n in found
                                                                if n.is_malignant == malignant],
                                       Path(f"{cache_dir}_{kind}"))
                           for kind, malignant in (("benign", False), ("malignant", True)))
    return masks


def class_label(benign, malignant):
    """(R, C) int64 class per pixel from two bool masks: 0 background, 1 benign, 2 malignant
    (malignant where their boxes overlap)."""
    label = np.asarray(benign, dtype=np.int64)
    label[np.asarray(malignant, dtype=bool)] = 2
    return label


class ThreeClassTrainingDataset(TrainingLuna2dSegmentationDataset):
    """The chapter's training crops with a class per pixel: (7, 64, 64) HU, (1, 64, 64) int64."""

    def __init__(self, series_uids, series_paths, masks, classes, epoch_size, seed=0):
        super().__init__(series_uids, series_paths, masks, epoch_size, seed=seed)
        self.classes = classes

    def __getitem__(self, i):
        uid, center_irc = self.nodules[self.order[i % len(self.nodules)]]
        rng = np.random.default_rng([self.seed, self.epoch, i])          # the chapter's draw
        offsets = rng.integers(0, TRAIN_BOX - TRAIN_CROP + 1, size=2)
        voxels = self.load_ct(self.series_paths[uid]).voxels
        benign_mask, malignant_mask = self.classes[uid]
        image, benign = training_crop(voxels, benign_mask, center_irc, offsets, self.context)
        _image, malignant = training_crop(voxels, malignant_mask, center_irc, offsets,
                                          self.context)
        return (torch.from_numpy(image), torch.from_numpy(class_label(benign, malignant))[None],
                uid, center_irc[0])


class ThreeClassSlices(Luna2dSegmentationDataset):
    """The chapter's whole slices holding nodule voxels, with a class per pixel."""

    def __init__(self, series_uids, series_paths, masks, classes):
        super().__init__(series_uids, series_paths, masks)
        self.classes = classes

    def __getitem__(self, i):
        image, _label, uid, index = super().__getitem__(i)
        benign_mask, malignant_mask = self.classes[uid]
        label = class_label(mask_slice(benign_mask, index), mask_slice(malignant_mask, index))
        return image, torch.from_numpy(label)[None], uid, index


def class_loss(logits, label):
    """(N,) per sample: the pixels' cross-entropy over the three classes plus the chapter's soft
    Dice of the benign and of the malignant channel, averaged. label: (N, H, W) class indexes."""
    logits = logits.float()
    probs = logits.softmax(dim=1)
    dice = sum(dice_loss(probs[:, c:c + 1], (label == c).float()[:, None]) for c in (1, 2)) / 2
    return F.cross_entropy(logits, label, reduction="none").mean(dim=(1, 2)) + dice


def train_three_class(model, loader, optimizer):
    """Chapter 13's loop with three classes (logits out, class_loss); the per-sample losses of
    the epoch."""
    model.train()
    device = next(model.parameters()).device
    losses = []
    for x, label, *_ in loader:
        x, label = x.to(device, non_blocking=True), label[:, 0].to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = class_loss(model(x), label)
        loss.mean().backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.cat(losses).cpu()


def three_class_unet(sizes, device):
    """A UNetWrapper with 3 outputs whose Sigmoid is replaced: logits out (softmax them)."""
    model = new_unet(sizes, device, n_classes=3)
    model.final = nn.Identity()
    return model


Nodule = namedtuple("Nodule", "series_uid malignant diameter_mm center_irc voxels_irc")


def nodule_voxels(luna, nodules, uids, load_ct):
    """[Nodule] of the series `uids`, each with its own mask voxels: the chapter's box grown
    from its centre, the voxels in it denser than THRESHOLD_HU."""
    found = []
    for uid in uids:
        ct = load_ct(luna.series[uid])
        for n in nodules.get(uid, []):
            (center_irc,) = annotation_centers_irc(ct, [n.center_xyz])
            box = annotation_box(ct.voxels, center_irc)
            voxels = np.argwhere(to_hu(ct.voxels[box]) > THRESHOLD_HU) + [s.start for s in box]
            found.append(Nodule(uid, n.is_malignant, n.diameter_mm, center_irc, voxels))
    return found


def evaluate_three_class(model, dataset, nodules, batch_size):
    """Over whole slices: the (3, 3) voxel confusion (rows: label, columns: predicted class) and
    per nodule the votes (3,) of the classes predicted on its voxels."""
    model.eval()
    device = next(model.parameters()).device
    on_slice = {}                                  # (uid, index) -> [(nodule k, rows, cols)]
    for k, n in enumerate(nodules):
        for index in np.unique(n.voxels_irc[:, 0]):
            at = n.voxels_irc[n.voxels_irc[:, 0] == index]
            on_slice.setdefault((n.series_uid, int(index)), []).append((k, at[:, 1], at[:, 2]))
    confusion, votes = torch.zeros(3, 3, dtype=torch.int64), np.zeros((len(nodules), 3), int)
    loader = make_loader(dataset, range(len(dataset)), batch_size, 0, device)
    with torch.inference_mode():
        for x, label, uids, indexes in bar(loader, "13.3 validation"):
            predicted = model(x.to(device)).argmax(dim=1).cpu()
            confusion += torch.bincount(3 * label[:, 0].flatten() + predicted.flatten(),
                                        minlength=9).reshape(3, 3)
            for pred, uid, index in zip(predicted.numpy(), uids, indexes.tolist()):
                for k, rows, cols in on_slice.get((uid, index), []):
                    votes[k] += np.bincount(pred[rows, cols], minlength=3)
    return confusion, votes


def nodule_calls(votes):
    """Per nodule: 'missed' when no voxel is called a nodule, else the majority nodule class."""
    return ["missed" if v[1] + v[2] == 0 else ("malignant" if v[2] > v[1] else "benign")
            for v in votes]


def diameter_rule(train_nodules):
    """The diameter threshold (mm) that best separates the training nodules: malignant above."""
    diameters = np.array([n.diameter_mm for n in train_nodules])
    malignant = np.array([n.malignant for n in train_nodules])
    cuts = np.concatenate([[0.0], np.sort(diameters)])
    right = [((diameters > cut) == malignant).sum() for cut in cuts]
    return float(cuts[int(np.argmax(right))])


def class_rates(confusion):
    """Per class (benign, malignant, and 'nodule': either): voxel precision and recall."""
    c = confusion.double()
    rates = {}
    for name, idx in (("benign", [1]), ("malignant", [2]), ("nodule", [1, 2])):
        tp = float(c[idx][:, idx].sum())
        rates[name] = {"precision": tp / max(float(c[:, idx].sum()), 1.0),
                       "recall": tp / max(float(c[idx].sum()), 1.0)}
    return rates


def draw_three_class(model, luna, nodules, path, load_ct, rows=6):
    """A PNG: for up to `rows` validation nodules (benign and malignant in turn, largest first)
    the slice through the centre, its labelled classes and the predicted ones, 64 x 64 around."""
    by_kind = [sorted([n for n in nodules if n.malignant == m], key=lambda n: -n.diameter_mm)
               for m in (False, True)]
    picked = [n for pair in itertools.zip_longest(*by_kind) for n in pair if n][:rows]
    fig = new_figure(figsize=(7.5, 2.5 * len(picked)))
    axes = fig.subplots(len(picked), 3, squeeze=False)
    model.eval()
    device = next(model.parameters()).device
    for row, n in zip(axes, picked):
        voxels = load_ct(luna.series[n.series_uid]).voxels
        index = n.center_irc[0]
        x = torch.from_numpy(context_slices(voxels, index))[None]
        with torch.inference_mode():
            predicted = model(x.to(device)).argmax(dim=1)[0].cpu().numpy()
        label = np.zeros(predicted.shape, dtype=np.int64)
        for m in nodules:
            if m.series_uid == n.series_uid:
                at = m.voxels_irc[m.voxels_irc[:, 0] == index]
                label[at[:, 1], at[:, 2]] = np.maximum(label[at[:, 1], at[:, 2]],
                                                       2 if m.malignant else 1)
        (r0, r1), (c0, c1) = crop_bounds(n.center_irc[1:], (64, 64), predicted.shape)
        window = (slice(r0, r1), slice(c0, c1))
        gray = lung_gray(x[0, x.shape[1] // 2].numpy())[window]
        kind = "malignant" if n.malignant else "benign"
        for ax, image, title in ((row[0], gray, f"{kind}, {n.diameter_mm:.1f} mm"),
                                 (row[1], class_overlay(gray, label[window]), "label"),
                                 (row[2], class_overlay(gray, predicted[window]), "predicted")):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    from matplotlib.patches import Patch
    fig.legend(handles=[Patch(color=BENIGN_COLOR, label="benign"),
                        Patch(color=MALIGNANT_COLOR, label="malignant")],
               loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save_figure(fig, path, tight_layout=False)


def class_overlay(gray, classes):
    """(H, W, 3) gray in [0, 1] with benign pixels blue and malignant magenta, half and half."""
    image = gray.copy()
    for cls, color in ((1, BENIGN_COLOR), (2, MALIGNANT_COLOR)):
        where = classes == cls
        image[where] = 0.5 * image[where] + 0.5 * np.asarray(color, dtype=np.float32)
    return image


def exercise_3(luna, cache_dir, sizes, device, out_dir, val_stride=10):
    """13.3: a three-class U-Net; voxel precision and recall per class, each validation
    nodule's majority class against a diameter rule, and a PNG of the classes (a, b)."""
    masks, train_uids, val_uids = seg_data(luna, cache_dir, val_stride)
    nodules = malignancy_by_series(luna)
    classes = class_masks(luna, nodules, cache_dir)
    train_ds = ThreeClassTrainingDataset(train_uids, luna.series, masks, classes,
                                         sizes.epoch_size, seed=sizes.seed)
    model = three_class_unet(sizes, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=sizes.lr)
    losses = []
    for epoch in range(1, sizes.epochs + 1):
        train_ds.set_epoch(epoch)
        loader = make_loader(train_ds, range(len(train_ds)), sizes.batch_size, 0, device)
        losses.append(float(train_three_class(model, bar(loader, f"13.3 E{epoch}"),
                                              optimizer).mean()))
    val_nodules = nodule_voxels(luna, nodules, val_uids, train_ds.load_ct)
    confusion, votes = evaluate_three_class(
        model, ThreeClassSlices(val_uids, luna.series, masks, classes), val_nodules,
        sizes.batch_size)
    calls = nodule_calls(votes)
    cut = diameter_rule(nodule_voxels(luna, nodules, train_uids, train_ds.load_ct))
    truth = ["malignant" if n.malignant else "benign" for n in val_nodules]
    by_diameter = ["malignant" if n.diameter_mm > cut else "benign" for n in val_nodules]
    table = {kind: {call: sum(t == kind and c == call for t, c in zip(truth, calls))
                    for call in ("benign", "malignant", "missed")}
             for kind in ("benign", "malignant")}
    png = draw_three_class(model, luna, val_nodules, Path(out_dir) / "exercise_13_3_classes.png",
                           train_ds.load_ct)
    return {"loss_per_epoch": losses, "confusion": confusion.tolist(),
            "rates": class_rates(confusion), "nodules": len(val_nodules), "calls": table,
            "segmentation_right": sum(t == c for t, c in zip(truth, calls)),
            "diameter_cut_mm": cut,
            "diameter_right": sum(t == d for t, d in zip(truth, by_diameter)),
            "png": str(png), "epochs": sizes.epochs, "epoch_size": sizes.epoch_size}


def format_3(a):
    r, c, calls = a["rates"], a["confusion"], a["calls"]
    n, seg, diam = a["nodules"], a["segmentation_right"], a["diameter_right"]
    outside = c[0][1] + c[0][2]
    marked = outside + sum(c[i][j] for i in (1, 2) for j in (1, 2))
    verdict = ("better than" if seg > diam else "no better than" if seg == diam else
               "worse than")
    wrong = outside / max(marked, 1)
    skip = ("yes on this run, for both steps" if seg > diam and wrong < 0.5 else
            "for the malignancy step at most; most of what it marks is not nodule, so the "
            "nodule classifier stays" if seg > diam else
            "no: its malignancy call does no better than size alone"
            + ("" if wrong < 0.5 else ", and most of what it marks is not nodule"))
    return (
        f"a. three outputs, softmax over {', '.join(CLASSES)}; loss: cross-entropy + the Dice of "
        f"each nodule class ({a['epochs']} x {a['epoch_size']:,} crops; mean loss per epoch "
        + ", ".join(f"{v:.3f}" for v in a["loss_per_epoch"]) + ")\n"
        "   metrics now per class (voxels of the validation slices):\n"
        + "".join(f"      {k:9s} precision {r[k]['precision']:.3f}  recall {r[k]['recall']:.3f}\n"
                  for k in ("benign", "malignant", "nodule"))
        + f"   benign voxels called malignant {c[1][2]:,}, malignant called benign {c[2][1]:,}; "
        f"the images get a colour per class: {a['png']}\n"
        f"b. per validation nodule, the majority class of its voxels: benign {calls['benign']}, "
        f"malignant {calls['malignant']}\n"
        f"   right for {seg} of {n}; a diameter rule fitted on the training nodules (malignant "
        f"above {a['diameter_cut_mm']:.1f} mm) gets {diam} of {n}\n"
        f"   the segmentation's class vote is {verdict} the diameter rule; {outside:,} of the "
        f"{marked:,} voxels it calls nodule ({wrong:.0%}) lie outside every nodule\n"
        f"   skip classification? {skip}")


# ----------------------------------------------------------------------------- 13.4
def unet_multiple(depth):
    """What a padded U-Net's input sides must divide by: 2**(depth - 1), one halving per pool."""
    return 2 ** (depth - 1)


class MixedShapeBatchSampler:
    """Batches of one shape each over ConcatDataset([crops, slices]): `crops_per_slice` batches
    of crops (in order), then one batch of whole slices of a single shape, and so on.

    `slice_shapes` holds the (rows, cols) of each whole-slice item; slices are grouped by shape,
    shuffled per epoch from (seed, epoch), and cycled when the crops outlast them.
    """

    def __init__(self, n_crops, slice_shapes, crop_batch, slice_batch, crops_per_slice=3,
                 seed=0):
        self.n_crops, self.crop_batch, self.slice_batch = n_crops, crop_batch, slice_batch
        self.crops_per_slice, self.seed, self.epoch = crops_per_slice, seed, 1
        self.groups = {}
        for i, shape in enumerate(slice_shapes):
            self.groups.setdefault(tuple(shape), []).append(n_crops + i)
        if not self.groups:
            raise DataError("no whole slices to mix with the crops")

    def set_epoch(self, epoch):
        self.epoch = epoch

    def batches(self):
        """[(kind, indices)] of this epoch, kind 'crop' or 'slice'."""
        rng = np.random.default_rng([self.seed, self.epoch])
        crop_batches = [list(range(start, min(start + self.crop_batch, self.n_crops)))
                        for start in range(0, self.n_crops, self.crop_batch)]
        n_slice = len(crop_batches) // self.crops_per_slice
        slice_batches = []
        while len(slice_batches) < n_slice:                   # cycle, reshuffled each pass
            one_pass = [list(group[start:start + self.slice_batch])
                        for group in (rng.permutation(g) for g in self.groups.values())
                        for start in range(0, len(group), self.slice_batch)]
            slice_batches += [one_pass[k] for k in rng.permutation(len(one_pass))]
        out = []
        for k, crops in enumerate(crop_batches):
            out.append(("crop", crops))
            if (k + 1) % self.crops_per_slice == 0:
                out.append(("slice", [int(i) for i in slice_batches[k // self.crops_per_slice]]))
        return out

    def __iter__(self):
        return iter([indices for _kind, indices in self.batches()])

    def __len__(self):
        n_crop = -(-self.n_crops // self.crop_batch)
        return n_crop + n_crop // self.crops_per_slice


def slice_shape(dataset, i):
    """(rows, cols) of whole-slice item i, read off its mask (no CT read)."""
    uid, _index = dataset.samples[i]
    return dataset.masks[uid].shape[1:]


def exercise_4(luna, cache_dir, sizes, device, mix=(3, 4), val_stride=10):
    """13.4: crops mixed with whole slices (mix: crop batches per slice batch, slices per
    batch) against crops alone, the same crops and seed; loss on both kinds of sample."""
    crops_per_slice, slice_batch = mix
    masks, train_uids, val_uids = seg_data(luna, cache_dir, val_stride)
    slices = Luna2dSegmentationDataset(train_uids, luna.series, masks)
    multiple = unet_multiple(sizes.depth)
    shapes = [slice_shape(slices, i) for i in range(len(slices))]
    unfit = sorted({s for s in shapes if s[0] % multiple or s[1] % multiple})
    if unfit:
        raise DataError(f"whole slices of {unfit[0][0]} x {unfit[0][1]} do not fit a depth "
                        f"{sizes.depth} U-Net (--depth): padded, its sides must be multiples "
                        f"of {multiple}")
    val_sets = {"crops": TrainingLuna2dSegmentationDataset(
        val_uids, luna.series, masks, epoch_size=max(256, sizes.batch_size), seed=sizes.seed + 1),
        "whole slices": Luna2dSegmentationDataset(val_uids, luna.series, masks)}
    results = {}
    for name in ("crops only", "mixed"):
        crops = TrainingLuna2dSegmentationDataset(train_uids, luna.series, masks,
                                                  sizes.epoch_size, seed=sizes.seed)
        model = new_unet(sizes, device)
        started = time.perf_counter()
        if name == "crops only":
            history, by_kind = train_unet(model, crops, sizes, "13.4 crops"), None
        else:
            history, by_kind = train_mixed(model, crops, slices, shapes, sizes, mix)
        seconds = time.perf_counter() - started
        results[name] = {"train": history[-1], "by_kind": by_kind, "seconds": seconds,
                         **{phase: summarize(score(model, ds, sizes.batch_size))
                            for phase, ds in val_sets.items()}}
    return {"runs": results, "crops_per_slice": crops_per_slice, "slice_batch": slice_batch,
            "slice_shapes": sorted(set(shapes)), "multiple": multiple,
            "epochs": sizes.epochs, "epoch_size": sizes.epoch_size}


def train_mixed(model, crops, slices, shapes, sizes, mix):
    """train_seg.train_one_epoch, unchanged, over the mixed batches; (each epoch's summary, the
    last epoch's summary per kind of batch)."""
    device = next(model.parameters()).device
    amp = mixed_precision(device, False)
    optimizer = torch.optim.Adam(model.parameters(), lr=sizes.lr)
    sampler = MixedShapeBatchSampler(len(crops), shapes, sizes.batch_size, mix[1], mix[0],
                                     sizes.seed)
    loader = DataLoader(ConcatDataset([crops, slices]), batch_sampler=sampler, num_workers=0,
                        pin_memory=device.type == "cuda")
    history = []
    for epoch in range(1, sizes.epochs + 1):
        crops.set_epoch(epoch)
        sampler.set_epoch(epoch)
        rows = train_one_epoch(model, bar(loader, f"13.4 mixed E{epoch}"), optimizer, amp)
        history.append(summarize(rows))
    kinds = np.concatenate([[kind == "slice"] * len(idx) for kind, idx in sampler.batches()])
    by_kind = {kind: summarize(rows[:, torch.from_numpy(kinds == is_slice)])
               for kind, is_slice in (("crops", False), ("whole slices", True))}
    return history, by_kind


def format_4(a):
    only, mixed = a["runs"]["crops only"], a["runs"]["mixed"]
    shapes = ", ".join(f"{r} x {c}" for r, c in a["slice_shapes"])
    lines = [f"{a['crops_per_slice']} batches of {TRAIN_CROP} x {TRAIN_CROP} crops, then one "
             f"of {a['slice_batch']} whole slices ({shapes}; a padded U-Net of this depth needs "
             f"sides that are multiples of {a['multiple']}); every batch one shape; "
             f"{a['epochs']} x {a['epoch_size']:,} crops in both runs",
             "   training loss (Dice) in the mixed run's last epoch: crop batches "
             f"{mixed['by_kind']['crops']['loss/all']:.3f}, whole-slice batches "
             f"{mixed['by_kind']['whole slices']['loss/all']:.3f}",
             "   validation (train_seg.evaluate):"]
    for name, r in (("crops only", only), ("mixed", mixed)):
        lines.append(f"   {name:10s} ({r['seconds']:5.1f} s)  crops: {metrics_line(r['crops'])}")
        lines.append(f"   {'':10s}            whole slices: {metrics_line(r['whole slices'])}")
    gain = mixed["whole slices"]["pr/precision"] - only["whole slices"]["pr/precision"]
    crop_change = mixed["crops"]["loss/all"] - only["crops"]["loss/all"]
    lines.append(f"   whole slices in training {'raise' if gain > 0 else 'do not raise'} the "
                 f"precision on whole slices ({gain:+.3f})"
                 + ("; they show the model tissue far from nodules that crops never show"
                    if gain > 0 else "") + f"; the crops' Dice loss moves {crop_change:+.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 13.5
DATA_SOURCES = (
    ("LIDC-IDRI (The Cancer Imaging Archive)",
     "1,018 thoracic CTs; each read by four radiologists in two phases; nodules of 3 mm and "
     "more outlined slice by slice (XML), rated for malignancy likelihood (1-5), subtlety, "
     "spiculation and more; LUNA16's 888 CTs are its scans with slices of 2.5 mm or thinner. "
     "Free download, Creative Commons Attribution 3.0. Its outlines could replace the box-grown "
     "masks of dsets.build_annotation_mask."),
    ("NLST, the National Lung Screening Trial (TCIA, NCI's CDAS)",
     "low-dose screening CTs of about 26,000 participants (about 75,000 exams, over 10 TB) "
     "with the trial's outcomes (lung cancer diagnoses); the trial recorded findings but not "
     "their coordinates, so no nodule positions. The CTs and a subset of the clinical data are "
     "downloadable without a request; the full data set is requested through NCI's CDAS."),
    ("Kaggle Data Science Bowl 2017",
     "well over a thousand low-dose CTs (DICOM) of high-risk patients labelled per patient: "
     "lung cancer diagnosed within a year of the scan (pathology-confirmed), no nodule "
     "positions. Under Kaggle's competition rules; reported as no longer downloadable."),
    ("NSCLC-Radiomics, 'Lung1' (TCIA)",
     "pre-treatment CTs of about 420 non-small-cell lung cancer patients with the tumour "
     "outlined by a radiation oncologist, and survival data: tumours, not screening nodules. "
     "TCIA's terms (see the collection's page)."),
    ("LNDb (grand-challenge.org, 2020)",
     "294 CTs from a hospital in Porto, each read by one or more of 5 radiologists: nodules of "
     "3 mm and more segmented and rated as in LIDC-IDRI (malignancy likelihood included), "
     "smaller nodules and non-nodules marked; a second population with its readers' "
     "variability. Terms on its page."),
    ("Tianchi lung nodule detection (Alibaba Cloud, 2017)",
     "about 1,000 patients' CTs in LUNA16's MetaImage format with a LUNA16-style CSV (centre, "
     "diameter) of nodules 5-30 mm; competition data, so access depends on the platform."),
    ("Medical Segmentation Decathlon, Task06_Lung",
     "about 60 labelled CTs (and unlabelled test CTs) of non-small-cell lung cancer, the "
     "tumour segmented, in NIfTI; Creative Commons Attribution-ShareAlike 4.0."),
    ("More TCIA collections",
     "the archive holds other lung CT collections (for example RIDER Lung CT, repeat scans "
     "of the same patients; Lung-PET-CT-Dx; NSCLC Radiogenomics); each page states its "
     "labels and licence."),
)


def exercise_5():
    """13.5: other data sources, as far as this repository can state them (no network)."""
    return {"sources": [{"name": name, "offers": offers} for name, offers in DATA_SOURCES]}


def format_5(a):
    import textwrap

    lines = ["beyond LUNA16 (facts stated only as far as they are sure; check each source's "
             "page before use):"]
    for s in a["sources"]:
        lines.append(textwrap.fill(f"- {s['name']}: {s['offers']}", 100, initial_indent="   ",
                                   subsequent_indent="     "))
    lines.append("   what carries over: LUNA16's layout (MetaImage CTs, a candidates/annotations "
                 "CSV) is what locate_luna reads, so a set converted to it trains here unchanged;"
                 " a DICOM CT is read by nodule_analysis.py --ct")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
FORMATTERS = {1: format_1, 2: format_2, 3: format_3, 4: format_4, 5: format_5}
TITLES = {1: "augmentation as a module of the classifier",
          2: "a training / validation / test split",
          3: "segmenting benign and malignant nodules",
          4: "crops mixed with whole slices",
          5: "other data sources"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES, metavar="M",
                   help="exercise 13.M to run (repeatable; default: all five)")
    add_data_dir_argument(p)
    p.add_argument("--synthetic", action="store_true",
                   help="use the built-in synthetic sample even if LUNA16 is present")
    add_device_argument(p)
    p.add_argument("--epochs", type=int, default=2, help="U-Net epochs (default: %(default)s)")
    p.add_argument("--epoch-size", type=int, default=2500,
                   help="training crops per U-Net epoch (default: %(default)s; the book: 300,000)")
    p.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=MODEL_KWARGS["wf"],
                   help="the U-Net's first level has 2**WIDTH filters (default: the book's "
                        "%(default)s)")
    p.add_argument("--depth", type=int, default=MODEL_KWARGS["depth"],
                   help="the U-Net's levels (default: the book's %(default)s)")
    p.add_argument("--cls-batches", type=int, default=12,
                   help="13.1: classifier batches per variant (default: %(default)s)")
    p.add_argument("--cls-batch-size", type=int, default=32,
                   help="13.1: the classifier's batch (default: the chapter's %(default)s)")
    p.add_argument("--val-stride", type=int, default=10,
                   help="every N-th series validates (default: %(default)s)")
    p.add_argument("--test-stride", type=int, default=10,
                   help="13.2: every N-th series tests (default: %(default)s)")
    p.add_argument("--test-offset", type=int, default=5,
                   help="13.2: ... from position K of the sorted uids (default: %(default)s)")
    p.add_argument("--crops-per-slice", type=int, default=3,
                   help="13.4: crop batches per whole-slice batch (default: %(default)s)")
    p.add_argument("--slice-batch", type=int, default=4,
                   help="13.4: whole slices per batch (default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="where 13.3's PNG goes (default: runs/ch13/exercises_ch13/<time>)")
    args = p.parse_args(argv)
    for flag, least in (("epochs", 1), ("epoch_size", 1), ("batch_size", 1), ("width", 1),
                        ("depth", 2), ("cls_batches", 2), ("cls_batch_size", 1),
                        ("test_stride", 2),
                        ("crops_per_slice", 1), ("slice_batch", 1)):
        require_at_least(f"--{flag.replace('_', '-')}", getattr(args, flag), least)
    return args


def main(argv=None):
    args = parse_args(argv)
    chosen = sorted(set(args.exercise or EXERCISES))
    out = Path(args.out) if args.out else (runs_dir("ch13") / "exercises_ch13"
                                           / time.strftime("%Y-%m-%d_%H.%M.%S"))
    if 3 in chosen:
        check_writable(out, "--out")
    device = pick_device(args.device)
    sizes = Sizes(args.epochs, args.epoch_size, args.batch_size, args.lr, args.seed, args.width,
                  args.depth)
    luna = locate_luna(args.data_dir, args.synthetic) if set(chosen) - {5} else None
    cache_dir = mask_cache_dir(args.data_dir)
    runs = {1: lambda: exercise_1(luna, (args.cls_batches, args.cls_batch_size), sizes, device),
            2: lambda: exercise_2(luna, cache_dir, sizes, device,
                                  (args.val_stride, args.test_stride, args.test_offset)),
            3: lambda: exercise_3(luna, cache_dir, sizes, device, out, args.val_stride),
            4: lambda: exercise_4(luna, cache_dir, sizes, device,
                                  (args.crops_per_slice, args.slice_batch), args.val_stride),
            5: exercise_5}
    answers, total = {}, time.perf_counter()
    for m in chosen:
        started = time.perf_counter()
        answers[m] = runs[m]()
        answers[m]["seconds"] = time.perf_counter() - started
        print(f"\nExercise 13.{m}: {TITLES[m]}  ({answers[m]['seconds']:.1f} s)")
        print(FORMATTERS[m](answers[m]), flush=True)
    print(f"\n{len(chosen)} exercise(s) in {time.perf_counter() - total:.1f} s on {device}"
          + ("" if luna is None or not luna.synthetic else
             "; on the synthetic sample: for LUNA16's answers run with --data-dir, "
             "--epochs 10 --epoch-size 30000 (NOTES.md)"))
    return answers


if __name__ == "__main__":
    keep_freed_memory()                 # glibc keeps freed blocks: see ch10_luna/runtime.py
    run_cli(main)
