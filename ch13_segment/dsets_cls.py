"""Chapter 14: the candidate list with malignancy, and the malignancy dataset.

    python ch13_segment/dsets_cls.py --synthetic        # or --data-dir with LUNA16 under it

    candidates = read_candidates_ch14(luna)     # nodules from annotations_with_malignancy.csv
    train, val = split_by_series(candidates, val_stride=10)          # ch10_luna/dsets.py
    lists = class_lists(val)                    # {"neg", "pos", "ben", "mal"}
    nodule_ds = LunaDataset(train, luna.series)                      # ch14's nodule classifier
    mal_train = MalignantLunaDataset(train, luna.series, balanced=True)   # mal, ben, mal, neg, ...
    mal_val = MalignantLunaDataset(val, luna.series)                 # benign + malignant nodules

The nodules are the rows of `annotations_with_malignancy.csv` (with its `mal_bool`), the
non-nodules `candidates.csv`'s class-0 rows. Items are chapter 11's tuple (crop, one-hot label,
series_uid, center_irc), with the label [not malignant, malignant], so train_malignancy.py's
loops keep chapter 11's shape. More in NOTES.md ("Malignancy").
"""
import argparse
from collections import namedtuple

import numpy as np
import torch

from ch10_luna.dsets import (
    CROP_IRC,
    LunaDataset,
    cached_ct,
    finite_fields,
    locate_luna,
    luna_parser,
    read_csv_rows,
    split_by_series,
    validation_uids,
)
from common.errors import DataError, run_cli

BOOK_MAL_EPOCH = 100_000        # the book's balanced MalignantLunaDataset length
BOOK_NODULE_EPOCH = 50_000      # the book's balanced chapter 14 LunaDataset length

# The book's chapter 14 CandidateInfoTuple, without type suffixes. Sorting (reverse) puts the
# nodules first, malignant before benign, big before small.
MalCandidate = namedtuple("MalCandidate", ["is_nodule", "has_annotation", "is_malignant",
                                           "diameter_mm", "series_uid", "center_xyz"])


def read_malignancy_annotations(path):
    """The rows of annotations_with_malignancy.csv as nodule MalCandidates."""
    nodules = []
    for line, row in read_csv_rows(path, ["seriesuid", "coordX", "coordY", "coordZ",
                                          "diameter_mm", "mal_bool"]):
        x, y, z, diameter = finite_fields(path, line, row, ["coordX", "coordY", "coordZ",
                                                      "diameter_mm"])
        if row["mal_bool"] not in ("True", "False"):
            raise DataError(f"{path}, line {line}: mal_bool is {row['mal_bool']!r}, "
                            "expected True or False")
        nodules.append(MalCandidate(True, True, row["mal_bool"] == "True", diameter,
                                    row["seriesuid"], (x, y, z)))
    return nodules


def read_candidates_ch14(luna, require_on_disk=True):
    """Annotated nodules (with malignancy) + candidates.csv's non-nodules, nodules first.

    candidates.csv's class-1 rows are left out: each nodule appears once, at its annotated
    centre and with its annotated diameter (the book's chapter 14 list).
    """
    if luna.malignancy_csv is None:
        raise DataError(f"{luna.root}: no annotations_with_malignancy.csv (get it with: "
                        "python -m common.data download luna-csv)")
    on_disk = (lambda uid: uid in luna.series) if require_on_disk else (lambda uid: True)
    candidates = [n for n in read_malignancy_annotations(luna.malignancy_csv)
                  if on_disk(n.series_uid)]
    path = luna.candidates_csv
    for line, row in read_csv_rows(path, ["seriesuid", "coordX", "coordY", "coordZ", "class"]):
        if row["class"] == "0" and on_disk(row["seriesuid"]):
            center_xyz = finite_fields(path, line, row, ["coordX", "coordY", "coordZ"])
            candidates.append(MalCandidate(False, False, False, 0.0, row["seriesuid"],
                                           center_xyz))
    if not candidates:
        raise DataError(f"{path}: no candidate belongs to a series on disk under {luna.root}")
    candidates.sort(reverse=True)
    return candidates


def class_lists(candidates):
    """The book's lists: neg (non-nodules), pos (nodules), ben (benign), mal (malignant)."""
    return {"neg": [c for c in candidates if not c.is_nodule],
            "pos": [c for c in candidates if c.is_nodule],
            "ben": [c for c in candidates if c.is_nodule and not c.is_malignant],
            "mal": [c for c in candidates if c.is_malignant]}


def balanced_kind(i):
    """Which list item i of a balanced malignancy epoch draws from (the book's pattern)."""
    if i % 2:
        return "mal"                 # every odd index: half the epoch is malignant
    return "ben" if i % 4 == 0 else "neg"   # a quarter benign, a quarter non-nodules


class MalignantLunaDataset(LunaDataset):
    """Malignancy samples: (crop, [not malignant, malignant], uid, center_irc).

    Unbalanced (validation): benign nodules then malignant ones. Balanced (training, the book's
    ratio 1): item i is malignant for odd i, benign for i % 4 == 0, else a non-nodule, each list
    cycled in an order reshuffled by `set_epoch`; the length is `epoch_size`.
    """

    def __init__(self, candidates, series_paths, balanced=False, epoch_size=BOOK_MAL_EPOCH,
                 seed=0, crop_irc=CROP_IRC, load_ct=cached_ct):
        lists = class_lists(candidates)
        self.ben, self.mal, self.neg = lists["ben"], lists["mal"], lists["neg"]
        # ch10's LunaDataset crops self.candidates[k]; items map to k through the lists below.
        super().__init__(self.ben + self.mal + self.neg, series_paths, crop_irc, load_ct)
        self.balanced, self.epoch_size, self.seed = balanced, epoch_size, seed
        if balanced and not (self.ben and self.mal and self.neg):
            raise DataError(f"a balanced malignancy epoch needs benign, malignant and non-nodule "
                            f"candidates; have {len(self.ben)}, {len(self.mal)}, {len(self.neg)}")
        start = {"ben": 0, "mal": len(self.ben), "neg": len(self.ben) + len(self.mal)}
        self.index = {kind: start[kind] + np.arange(len(getattr(self, kind)))
                      for kind in ("ben", "mal", "neg")}
        self.set_epoch(0)

    def set_epoch(self, epoch):
        """Reshuffle the order each list is cycled in (the book's shuffleSamples), reproducibly."""
        rng = np.random.default_rng([self.seed, epoch])
        self.order = {kind: rng.permutation(idx) for kind, idx in self.index.items()}

    def __len__(self):
        return self.epoch_size if self.balanced else len(self.ben) + len(self.mal)

    def candidate_index(self, i):
        """Item i -> index into self.candidates."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        if not self.balanced:
            return i                                  # ben + mal come first in self.candidates
        kind = balanced_kind(i)
        order = self.order[kind]
        return int(order[(i // (2 if kind == "mal" else 4)) % len(order)])

    def candidate(self, i):
        return self.candidates[self.candidate_index(i)]

    def __getitem__(self, i):
        c = self.candidate(i)
        crop, _label, uid, center_irc = super().__getitem__(self.candidate_index(i))
        label = torch.tensor([not c.is_malignant, c.is_malignant], dtype=torch.long)
        return crop, label, uid, center_irc

    def labels(self):
        """is_malignant per item of the unbalanced dataset (for ch10's epoch_order)."""
        return [c.is_malignant for c in self.ben + self.mal]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[luna_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    args = p.parse_args(argv)
    luna = locate_luna(args.data_dir, args.synthetic)
    candidates = read_candidates_ch14(luna)
    train, val = split_by_series(candidates, val_uids=validation_uids(
        luna.series, args.val_stride, args.fold))
    counts = {}
    for phase, part in (("training", train), ("validation", val)):
        lists = class_lists(part)
        counts[phase] = {k: len(v) for k, v in lists.items()}
        print(f"{phase}: {len({c.series_uid for c in part})} series, {len(lists['pos'])} nodules "
              f"({len(lists['mal'])} malignant, {len(lists['ben'])} benign), "
              f"{len(lists['neg']):,} non-nodules")
    return counts


if __name__ == "__main__":
    run_cli(main)
