"""Chapter 13: nodule masks from the annotations, and the 2-D segmentation datasets.

    python ch13_segment/dsets.py --synthetic          # build the mask cache once, print a summary

    luna = locate_luna(data_dir)                              # ch10_luna/dsets.py
    masks = load_masks(luna.series, annotation_centers(luna), mask_cache_dir(args.data_dir))
    train_uids, val_uids = split_series(luna.series, val_stride=10)
    train_ds = TrainingLuna2dSegmentationDataset(train_uids, luna.series, masks)  # (7,64,64) crops
    val_ds = Luna2dSegmentationDataset(val_uids, luna.series, masks)          # whole slices

LUNA16 gives nodule centres, not outlines: each annotated centre grows a box while the CT stays
denser than -700 HU on both sides, and the mask keeps the dense voxels inside the boxes. Masks
are cached per series under <data root>/cache/seg_masks and held as voxel coordinates
(SeriesMask). A sample is one slice with 3 neighbours on each side as 7 input channels; its
label is the mask of the centre slice. The cache, the sizes and the departures: NOTES.md.
"""
import argparse
import json
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from ch10_luna.dsets import (
    cached_ct,
    locate_luna,
    luna_parser,
    read_annotations,
    validation_uids,
)
from common.ct import HU_MIN, crop_bounds, to_hu
from common.data import data_root
from common.errors import DataError, run_cli
from common.files import atomic_open

MASK_VERSION = 1               # bump when build_annotation_mask changes: cached masks rebuild
THRESHOLD_HU = -700.0          # the book's: denser than this counts as nodule
CONTEXT_SLICES = 3             # neighbours on each side -> 7 input channels
TRAIN_BOX, TRAIN_CROP = 96, 64  # the book's training samples: 64x64 at random from 96x96
BOOK_EPOCH = 300_000           # the book's TrainingLuna2dSegmentationDataset length

# One series' mask in a compact form: voxels_irc holds the (index, row, col) of every mask voxel,
# sorted by index; centers_irc the annotated nodule centres (the training crops' anchors).
SeriesMask = namedtuple("SeriesMask", ["shape", "positive_indexes", "voxels_irc", "centers_irc"])


# ----------------------------------------------------------------------------- annotations
def annotation_centers(luna):
    """series_uid -> [center_xyz, ...] of the annotated nodules.

    The book's chapter 13 reads annotations_with_malignancy.csv (LUNA16's annotations with
    duplicate readings merged); annotations.csv stands in when that file is absent.
    """
    path = luna.malignancy_csv or luna.annotations_csv
    return {uid: [xyz for xyz, _diameter in rows] for uid, rows in read_annotations(path).items()}


def annotation_centers_irc(ct, annotations_xyz):
    """Nodule centres as voxel indexes; a centre outside the volume is a DataError."""
    centers = []
    for xyz in annotations_xyz:
        irc = ct.xyz_to_irc(xyz)
        if not all(0 <= v < n for v, n in zip(irc, ct.shape)):
            raise DataError(f"{ct.path or 'CT'}: annotated nodule at xyz {tuple(xyz)} lies "
                            f"outside the volume (irc {tuple(irc)}, shape {ct.shape})")
        centers.append(tuple(int(v) for v in irc))
    return centers


# ----------------------------------------------------------------------------- masks
def grow_radius(voxels, center_irc, axis, threshold_hu=THRESHOLD_HU):
    """Half-size of the box along one axis: from 2, grow while both sides are above threshold.

    The radius stops at the first step where a voxel inside the volume is at or below the
    threshold (the book's rule). A side that has left the volume no longer stops the growth, so
    a nodule cut by the first or last slice still gets its whole box; the book's loop wrapped
    to the far end of the volume on the low side instead.
    """
    c, n = center_irc[axis], voxels.shape[axis]

    def stops(position):                        # inside the volume and not dense enough
        p = list(center_irc)
        p[axis] = position
        return 0 <= position < n and float(to_hu(voxels[tuple(p)])) <= threshold_hu

    radius = 2
    while (c - radius >= 0 or c + radius < n) and not (stops(c - radius) or stops(c + radius)):
        radius += 1
    return radius


def annotation_box(voxels, center_irc, threshold_hu=THRESHOLD_HU):
    """The box [c - r, c + r] on each axis, clipped to the volume, as a tuple of slices."""
    radii = [grow_radius(voxels, center_irc, axis, threshold_hu) for axis in range(3)]
    return tuple(slice(max(0, c - r), min(n, c + r + 1))
                 for c, r, n in zip(center_irc, radii, voxels.shape))


def build_annotation_mask(ct, annotations_xyz, threshold_hu=THRESHOLD_HU):
    """(I, R, C) bool: the union of the nodules' boxes AND (HU > threshold). Book chapter 13.

    Only the boxes are read from the CT (a memmap for LUNA), not the whole volume.
    """
    mask = np.zeros(ct.shape, dtype=bool)
    for center_irc in annotation_centers_irc(ct, annotations_xyz):
        box = annotation_box(ct.voxels, center_irc, threshold_hu)
        mask[box] |= to_hu(ct.voxels[box]) > threshold_hu
    return mask


def positive_indexes(mask):
    """Slices (index axis) holding any mask voxel."""
    return np.flatnonzero(mask.any(axis=(1, 2))).tolist()


def to_series_mask(mask, centers_irc):
    """Dense bool volume -> SeriesMask."""
    voxels_irc = np.argwhere(mask).astype(np.int32)       # C order: already sorted by index
    return SeriesMask(tuple(mask.shape), positive_indexes(mask), voxels_irc,
                      [tuple(c) for c in centers_irc])


def dense_mask(series_mask):
    """SeriesMask -> (I, R, C) bool."""
    mask = np.zeros(series_mask.shape, dtype=bool)
    mask[tuple(series_mask.voxels_irc.T)] = True
    return mask


def mask_slice(series_mask, index):
    """(R, C) bool mask of one slice."""
    irc = series_mask.voxels_irc
    start, end = np.searchsorted(irc[:, 0], [index, index + 1])
    label = np.zeros(series_mask.shape[1:], dtype=bool)
    label[irc[start:end, 1], irc[start:end, 2]] = True
    return label


# ----------------------------------------------------------------------------- mask cache
def mask_cache_dir(data_dir=None):
    """`<data root>/cache/seg_masks`."""
    return data_root(data_dir) / "cache" / "seg_masks"


def mask_cache_key(annotations_xyz, threshold_hu=THRESHOLD_HU):
    """What a cached mask depends on: the builder's version, the threshold, the centres."""
    return json.dumps({"version": MASK_VERSION, "threshold_hu": float(threshold_hu),
                       "centers_xyz": [[round(float(v), 6) for v in xyz]
                                       for xyz in annotations_xyz]})


def read_cached_mask(path, key):
    """The SeriesMask stored at `path`, or None when absent, unreadable or built for another key."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return SeriesMask(tuple(int(v) for v in f["shape"]),
                              f["positive_indexes"].tolist(), f["voxels_irc"],
                              [tuple(int(v) for v in c) for c in f["centers_irc"]])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, broken
        return None


def write_cached_mask(path, key, series_mask):
    """Compressed .npz through the atomic writer (never half a file)."""
    with atomic_open(path, "wb", "mask cache") as f:      # a file object: no ".npz" appended
        np.savez_compressed(
            f, key=np.array(key), shape=np.array(series_mask.shape, dtype=np.int64),
            positive_indexes=np.array(series_mask.positive_indexes, dtype=np.int64),
            voxels_irc=series_mask.voxels_irc,
            centers_irc=np.array(series_mask.centers_irc, dtype=np.int64).reshape(-1, 3))
    return Path(path)


def series_mask(series_uid, ct_path, annotations_xyz, cache_dir, threshold_hu=THRESHOLD_HU,
                load_ct=cached_ct):
    """One series' SeriesMask: from the cache, else built from the CT and cached."""
    key = mask_cache_key(annotations_xyz, threshold_hu)
    path = Path(cache_dir) / f"{series_uid}.npz"
    cached = read_cached_mask(path, key)
    if cached is not None:
        return cached
    ct = load_ct(ct_path)
    mask = build_annotation_mask(ct, annotations_xyz, threshold_hu)
    result = to_series_mask(mask, annotation_centers_irc(ct, annotations_xyz))
    write_cached_mask(path, key, result)
    return result


def load_masks(series_paths, centers, cache_dir, threshold_hu=THRESHOLD_HU, load_ct=cached_ct,
               progress=True):
    """series_uid -> SeriesMask for every series in `series_paths` (uid -> .mhd path)."""
    uids = sorted(series_paths)
    bar = tqdm(uids, desc="nodule masks", unit="series", disable=not progress, leave=False)
    return {uid: series_mask(uid, series_paths[uid], centers.get(uid, []), cache_dir,
                             threshold_hu, load_ct) for uid in bar}


# ----------------------------------------------------------------------------- samples
def split_series(series, val_stride=10, fold=None):
    """(train_uids, val_uids), sorted: chapter 11's split (every val_stride-th series), or with
    `fold` LUNA16's (`series` then maps uid -> .mhd path, whose subset folder decides)."""
    series = series if isinstance(series, dict) else dict.fromkeys(series)
    val = validation_uids(series, val_stride, fold)
    return sorted(set(series) - set(val)), val


def check_context(series_uid, n_slices, context=CONTEXT_SLICES):
    """A CT needs at least 2 * context + 1 slices to fill the input channels."""
    if n_slices < 2 * context + 1:
        raise DataError(f"series {series_uid} has {n_slices} slices; the 2-D segmentation "
                        f"needs at least {2 * context + 1} ({context} context slices each side)")


def context_indexes(index, n_slices, context=CONTEXT_SLICES):
    """index - context .. index + context, clamped to the volume (edge slices repeat)."""
    return np.clip(np.arange(index - context, index + context + 1), 0, n_slices - 1)


def context_slices(ct_voxels, index, context=CONTEXT_SLICES, rows=slice(None), cols=slice(None)):
    """(2 * context + 1, R, C) float32 HU around slice `index`; reads only those slices."""
    return to_hu(ct_voxels[context_indexes(index, ct_voxels.shape[0], context), rows, cols])


def training_crop(ct_voxels, series_mask, center_irc, offsets, context=CONTEXT_SLICES,
                  box=TRAIN_BOX, crop=TRAIN_CROP):
    """((7, crop, crop) HU, (crop, crop) label): a box x box square around the nodule centre
    (shifted inward at the edges), then the crop at `offsets` (row, col) inside it.

    The book took its 7 slices as a 3-D box shifted inward too, so near the first or last slice
    the label slice left the middle channel; here the slices clamp like the validation items'.
    """
    index, row, col = center_irc
    (r0, _), (c0, _) = crop_bounds((row, col), (box, box), series_mask.shape[1:])
    rows = slice(r0 + offsets[0], r0 + offsets[0] + crop)
    cols = slice(c0 + offsets[1], c0 + offsets[1] + crop)
    image = context_slices(ct_voxels, index, context, rows, cols)
    label = mask_slice(series_mask, index)[rows, cols]
    if image.shape[1:] != (crop, crop):                     # a CT narrower than the crop
        pad = [(0, crop - image.shape[1]), (0, crop - image.shape[2])]
        image = np.pad(image, [(0, 0)] + pad, constant_values=HU_MIN)
        label = np.pad(label, pad)
    return image, label


class Luna2dSegmentationDataset(Dataset):
    """(series_uid, slice) -> ((7, R, C) float32 HU, (1, R, C) bool label, series_uid, index).

    Samples are the slices holding mask voxels, or every slice with full_ct (book chapter 13).
    """

    def __init__(self, series_uids, series_paths, masks, context_slices=CONTEXT_SLICES,
                 full_ct=False, load_ct=cached_ct):
        self.series_paths, self.masks, self.load_ct = series_paths, masks, load_ct
        self.series_uids, self.context = sorted(series_uids), context_slices
        self.samples = []
        for uid in self.series_uids:
            n_slices = masks[uid].shape[0]
            check_context(uid, n_slices, context_slices)
            indexes = range(n_slices) if full_ct else masks[uid].positive_indexes
            self.samples.extend((uid, int(i)) for i in indexes)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        uid, index = self.samples[i]
        ct = self.load_ct(self.series_paths[uid])
        image = context_slices(ct.voxels, index, self.context)
        label = mask_slice(self.masks[uid], index)[None]
        return torch.from_numpy(image), torch.from_numpy(label), uid, index


class TrainingLuna2dSegmentationDataset(Dataset):
    """Item i -> ((7, 64, 64) HU, (1, 64, 64) bool label, series_uid, index) around a nodule.

    Items cycle through the annotated nodules in an order reshuffled each epoch; the random
    crop offsets come from a generator seeded by (seed, epoch, i), so a run can be repeated.
    """

    def __init__(self, series_uids, series_paths, masks, epoch_size=BOOK_EPOCH,
                 context_slices=CONTEXT_SLICES, seed=0, load_ct=cached_ct):
        self.series_paths, self.masks, self.load_ct = series_paths, masks, load_ct
        self.epoch_size, self.context, self.seed = epoch_size, context_slices, seed
        for uid in series_uids:
            check_context(uid, masks[uid].shape[0], context_slices)
        self.series_uids = sorted(series_uids)
        self.nodules = [(uid, c) for uid in self.series_uids for c in masks[uid].centers_irc]
        if not self.nodules:
            raise DataError(f"no annotated nodule in the {len(series_uids)} training series")
        self.set_epoch(1)

    def set_epoch(self, epoch):
        """Reshuffle the nodule order (the book's shuffleSamples) and reseed the crops."""
        self.epoch = epoch
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.nodules))

    def __len__(self):
        return self.epoch_size

    def __getitem__(self, i):
        uid, center_irc = self.nodules[self.order[i % len(self.nodules)]]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        offsets = rng.integers(0, TRAIN_BOX - TRAIN_CROP + 1, size=2)   # 0..32 each
        voxels = self.load_ct(self.series_paths[uid]).voxels
        image, label = training_crop(voxels, self.masks[uid], center_irc, offsets, self.context)
        return torch.from_numpy(image), torch.from_numpy(label)[None], uid, center_irc[0]


def make_seg_datasets(luna, cache_dir, val_stride=10, epoch_size=BOOK_EPOCH, seed=0,
                      progress=True, fold=None):
    """(training crops, validation slices, masks) for a LunaFiles, split by series (or fold)."""
    masks = load_masks(luna.series, annotation_centers(luna), cache_dir, progress=progress)
    train_uids, val_uids = split_series(luna.series, val_stride, fold)
    if not train_uids or not val_uids:
        raise DataError(f"{len(luna.series)} series on disk: too few to split with "
                        + (f"--fold {fold}" if fold is not None else f"--val-stride {val_stride}"))
    return (TrainingLuna2dSegmentationDataset(train_uids, luna.series, masks, epoch_size,
                                              seed=seed),
            Luna2dSegmentationDataset(val_uids, luna.series, masks), masks)


# ----------------------------------------------------------------------------- summary
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[luna_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=None,
                   help="mask cache (default: <data root>/cache/seg_masks)")
    args = p.parse_args(argv)
    luna = locate_luna(args.data_dir, args.synthetic)
    cache_dir = Path(args.cache_dir) if args.cache_dir else mask_cache_dir(args.data_dir)
    train_ds, val_ds, masks = make_seg_datasets(luna, cache_dir, args.val_stride, fold=args.fold)
    voxels = sum(len(m.voxels_irc) for m in masks.values())
    slices = sum(m.shape[0] for m in masks.values())
    positives = sum(len(m.positive_indexes) for m in masks.values())
    print(f"{len(masks)} series, {len(train_ds.nodules)} training nodules; masks cached in "
          f"{cache_dir}\n{positives} of {slices} slices hold nodule voxels "
          f"({voxels:,} voxels); validation: {len(val_ds)} slices of "
          f"{len(val_ds.series_uids)} series")
    return train_ds, val_ds, masks


if __name__ == "__main__":
    run_cli(main)
