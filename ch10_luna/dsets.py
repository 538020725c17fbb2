"""Chapters 10-12: the LUNA16 files, the candidate list, the split by series, the crop dataset.

    luna = locate_luna(data_dir)                 # LUNA16 on disk, else the synthetic sample
    candidates = read_candidates(luna)           # Candidate tuples, nodules and big ones first
    train, val = split_by_series(candidates, val_stride=10)   # or LUNA16's folds: fold=K
    ds = LunaDataset(train, luna.series)         # (1x32x48x48 HU, one-hot label, uid, center_irc)
    loader = make_loader(ds, order, batch_size=32, num_workers=0, device=device)

Crops come straight from the memory-mapped `.raw` files (common/ct.py), so there is no cache
to prepare: the book's prepcache step and its ~165 GB of cache are not needed.
"""
import argparse
import csv
import functools
import math
import sys
import warnings
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ch10_luna.runtime import barrier, is_main_process, is_node_leader, rank_share
from ch10_luna.synthetic import MARKER, generate_sample, sample_is_current
from common.ct import check_mhd, load_ct
from common.data import add_data_dir_argument, data_root
from common.errors import DataError

CROP_IRC = (32, 48, 48)

# The book's CandidateInfoTuple, without type suffixes. Sorting puts nodules first, big ones first.
Candidate = namedtuple("Candidate", ["is_nodule", "diameter_mm", "series_uid", "center_xyz"])


@dataclass
class LunaFiles:
    """Where LUNA16 (or the synthetic sample) lives, and which series are on disk."""
    root: Path
    candidates_csv: Path
    annotations_csv: Path
    malignancy_csv: Path | None
    series: dict = field(default_factory=dict)   # series_uid -> .mhd path
    synthetic: bool = False
    skipped: dict = field(default_factory=dict)  # uid or subset -> why unusable (names the file)


def luna_parser():
    """--data-dir, --synthetic, --val-stride and --fold: which LUNA data a script reads and how
    it splits it (a parent parser for argparse)."""
    p = argparse.ArgumentParser(add_help=False)
    add_data_dir_argument(p)
    p.add_argument("--synthetic", action="store_true",
                   help="use the built-in synthetic sample even if LUNA16 is present")
    p.add_argument("--val-stride", type=int, default=10,
                   help="every N-th series (sorted by uid) validates (default: %(default)s)")
    p.add_argument("--fold", type=int, default=None, metavar="K", choices=range(10),
                   help="LUNA16's 10-fold protocol instead: validate on subsetK, train on the "
                        "other nine")
    return p


def warn(message):
    """A warning line on stderr (rank 0 only under torchrun)."""
    if is_main_process():
        print(f"warning: {message}", file=sys.stderr)


def locate_luna(data_dir=None, synthetic=False, announce=print, warn_skipped=True):
    """LunaFiles for a run: LUNA16 when present, else the synthetic sample (generated once).

    A LUNA folder that is there must be usable (a DataError says what is missing); series that
    are not (a missing or truncated .raw, a broken header) are skipped, with a warning each
    unless `warn_skipped` is False (a script that uses one named series says it itself).
    """
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataError(f"--data-dir {data_dir} does not exist")
    real = luna_dir(data_dir)
    if not synthetic and real.is_dir():
        luna = find_luna(real)
    else:
        sample = data_root(data_dir) / "synthetic" / "luna"
        # One process per node makes it (a node may not share the others' disk), then all wait.
        if is_node_leader() and not sample_is_current(sample):
            announce(f"generating the synthetic LUNA sample in {sample} (once) ...")
            generate_sample(sample)
        barrier()
        announce("=" * 78 + "\n SYNTHETIC DATA: " + ("--synthetic given" if synthetic else
                 f"no LUNA16 found under {real}") + f".\n Using the built-in sample in {sample}"
                 " (generated CTs in LUNA16's format).\n For the real data: python -m "
                 "common.data download luna-csv luna-subset0  (then more subsets)\n" + "=" * 78)
        luna = find_luna(sample, synthetic=True)
    for _name, why in sorted(luna.skipped.items()) if warn_skipped else ():
        warn(f"skipped: {why}")
    return luna


def luna_dir(data_dir=None):
    """`<data root>/luna`, or the folder itself when it already holds subset* folders."""
    root = data_root(data_dir)
    if any(root.glob("subset*")) or (root / "candidates.csv").exists():
        return root
    return root / "luna"


def _first_existing(*paths):
    return next((p for p in paths if p is not None and p.exists()), None)


def find_luna(folder, synthetic=False):
    """Scan a LUNA16 folder: CSVs and the series of every subset on disk. DataError if unusable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"LUNA folder {folder} does not exist")
    book = folder.parent / "part2" / "luna"                 # the book repository's CSV layout
    candidates = _first_existing(folder / "candidates.csv", folder / "candidates_V2.csv",
                                 folder / "candidates_V2" / "candidates_V2.csv",
                                 book / "candidates.csv")
    annotations = _first_existing(folder / "annotations.csv", book / "annotations.csv")
    malignancy = _first_existing(folder / "annotations_with_malignancy.csv",
                                 book / "annotations_with_malignancy.csv")
    subsets = sorted(p for p in folder.glob("subset*") if p.is_dir())
    missing = [name for name, p in (("candidates.csv", candidates),
                                    ("annotations.csv", annotations)) if p is None]
    if not subsets:
        missing.append("subset0..subset9 folders")
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} (download with `python -m "
                        "common.data download luna-csv luna-subset0`, or train on the built-in "
                        "sample with --synthetic)")
    series, skipped = {}, {}
    for subset in subsets:
        mhds = sorted(subset.glob("*.mhd"))
        if not mhds:
            skipped[subset.name] = (f"{subset} holds no .mhd files: finish extracting it or "
                                    "remove it")
        for mhd in mhds:
            try:
                check_mhd(mhd)
                series[mhd.stem] = mhd
            except DataError as e:                       # one broken series: skip it, go on
                skipped[mhd.stem] = str(e)
    if not series:
        raise DataError(f"{folder}: no usable series ({len(skipped)} skipped; "
                        f"{next(iter(skipped.values()))})")
    synthetic = synthetic or (folder / MARKER).exists()       # ch10_luna/synthetic.py made it
    return LunaFiles(folder, candidates, annotations, malignancy, series, synthetic, skipped)


def read_csv_rows(path, columns, what=None):
    """(line number, dict) per data row, with the named columns required; DataError on bad rows.

    A folder, a missing or empty file, bytes that are not UTF-8 and short rows are errors naming
    the file (after `what`, the flag that gave it, when there is one) and the line; extra
    columns are fine, a byte-order mark, spaces around fields and blank rows are passed over.
    """
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise DataError(f"{name}: a folder, not a CSV file")
    if not path.exists():
        raise DataError(f"{name}: no such file")
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{name}: cannot read ({e.strerror})") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{name}: empty file (expected a header with "
                                f"{', '.join(columns)})")
            header = [h.strip() for h in header]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(f"{name}: no column {', '.join(missing)} (its header is "
                                f"{','.join(header)[:120]!r})")
            index = [header.index(c) for c in columns]
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) < len(header):
                    raise DataError(f"{name}, line {reader.line_num}: {len(row)} fields, "
                                    f"expected {len(header)}")
                yield reader.line_num, {c: row[i].strip() for c, i in zip(columns, index)}
        except UnicodeDecodeError as e:
            raise DataError(f"{name}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                            f"offset {e.start} of a read block)") from None
        except csv.Error as e:
            raise DataError(f"{name}, line {reader.line_num}: not CSV ({e})") from None


def finite_fields(path, line, row, names, what=None):
    """The named fields as finite floats; NaN, infinity or text is a DataError naming them."""
    name = f"{what} {path}" if what else str(path)
    values = []
    for n in names:
        try:
            v = float(row[n])
        except ValueError:
            raise DataError(f"{name}, line {line}: {n} is {row[n]!r}, not a number") from None
        if not math.isfinite(v):
            raise DataError(f"{name}, line {line}: {n} is {row[n]!r}, not a finite number")
        values.append(v)
    return tuple(values)


def read_annotations(path):
    """series_uid -> [(center_xyz, diameter_mm), ...] from annotations.csv."""
    by_series = {}
    for line, row in read_csv_rows(path, ["seriesuid", "coordX", "coordY", "coordZ",
                                          "diameter_mm"]):
        x, y, z, d = finite_fields(path, line, row, ["coordX", "coordY", "coordZ", "diameter_mm"])
        by_series.setdefault(row["seriesuid"], []).append(((x, y, z), d))
    return by_series


def match_diameter(center_xyz, annotations):
    """The book's fuzzy match: an annotation within a quarter diameter on every axis, else 0."""
    for ann_xyz, diameter in annotations:
        if all(abs(c - a) <= diameter / 4 for c, a in zip(center_xyz, ann_xyz)):
            return diameter
    return 0.0


def read_candidates(luna, require_on_disk=True):
    """Candidates merged with annotation diameters, sorted nodules-first, largest first.

    Candidates of series that are not on disk are skipped and counted in one warning.
    """
    annotations = read_annotations(luna.annotations_csv)
    candidates, skipped = [], set()
    path = luna.candidates_csv
    for line, row in read_csv_rows(path, ["seriesuid", "coordX", "coordY", "coordZ", "class"]):
        uid = row["seriesuid"]
        if require_on_disk and uid not in luna.series:
            if uid not in luna.skipped:             # a broken series was warned about already
                skipped.add(uid)
            continue
        center_xyz = finite_fields(path, line, row, ["coordX", "coordY", "coordZ"])
        if row["class"] not in ("0", "1"):
            raise DataError(f"{path}, line {line}: class is {row['class']!r}, expected 0 or 1")
        diameter = match_diameter(center_xyz, annotations.get(uid, ()))
        candidates.append(Candidate(row["class"] == "1", diameter, uid, center_xyz))
    if skipped:
        warnings.warn(f"skipped the candidates of {len(skipped)} series not on disk under "
                      f"{luna.root}", stacklevel=2)
    if not candidates:
        raise DataError(f"{path}: no candidate belongs to a series on disk under {luna.root}")
    candidates.sort(reverse=True)
    return candidates


def validation_uids(series, val_stride=10, fold=None):
    """The validation series, sorted: with `fold` K, LUNA16's protocol (the series of subsetK;
    `series` maps uid -> .mhd path), else every `val_stride`-th uid in sorted order (the
    book's chapter 11 split)."""
    if fold is not None:
        uids = sorted(uid for uid, path in series.items() if Path(path).parent.name ==
                      f"subset{fold}")
        if not uids:
            raise DataError(f"--fold {fold}: no series of subset{fold} is on disk")
        if len(uids) == len(series):
            raise DataError(f"--fold {fold}: every series on disk is in subset{fold}; "
                            "nothing is left to train on")
        return uids
    if val_stride < 2:
        raise DataError(f"--val-stride must be at least 2, got {val_stride}")
    return sorted(series)[::val_stride]


def split_by_series(candidates, val_stride=10, val_uids=None):
    """(train, val): every `val_stride`-th series (sorted by uid) goes to validation, whole;
    or the series in `val_uids` (validation_uids with a fold)."""
    if val_uids is None:
        val_uids = validation_uids({c.series_uid: None for c in candidates}, val_stride)
    val_uids = set(val_uids)
    train = [c for c in candidates if c.series_uid not in val_uids]
    val = sorted((c for c in candidates if c.series_uid in val_uids),
                 key=lambda c: (c.series_uid, c.center_xyz))    # by series: reads stay local
    return train, val


def epoch_order(labels, epoch_size=None, balanced=False, seed=0, epoch=1):
    """Dataset indices for one epoch, reproducible from (seed, epoch).

    Unbalanced: a permutation of all samples (cycled or cut to `epoch_size`). Balanced
    (book ch12, ratio 1): positive, negative, positive, ... each class reshuffled every epoch.
    """
    labels = np.asarray(labels, dtype=bool)
    rng = np.random.default_rng([seed, epoch])
    if not balanced:
        size = len(labels) if epoch_size is None else epoch_size
        reps = -(-size // len(labels))
        return np.concatenate([rng.permutation(len(labels)) for _ in range(reps)])[:size]
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    if len(pos) == 0 or len(neg) == 0:
        raise DataError("--balanced needs both nodules and non-nodules in the training set")
    size = 2 * len(neg) if epoch_size is None else epoch_size
    half = -(-size // 2)
    pick = lambda idx: np.concatenate(  # noqa: E731
        [rng.permutation(idx) for _ in range(-(-half // len(idx)))])[:half]
    order = np.empty(2 * half, dtype=np.int64)
    order[0::2], order[1::2] = pick(pos), pick(neg)
    return order[:size]


def make_loader(dataset, order, batch_size, num_workers, device):
    """Batches in exactly `order` (a plain list of indices is a valid sampler); pinned memory
    on CUDA, so the copies to the device do not wait."""
    return DataLoader(dataset, batch_size=batch_size, sampler=list(map(int, order)),
                      num_workers=num_workers, pin_memory=torch.device(device).type == "cuda",
                      persistent_workers=False)


def rank_loader(dataset, order, proc, batch_size, num_workers, first_batch=0):
    """This process's loader for an epoch's `order` (runtime.rank_share: whole batches in
    turn), from batch `first_batch` on (a run resumed mid-epoch)."""
    mine = rank_share(order, proc.rank, proc.world, batch_size)
    if not len(mine):
        raise DataError(f"--epoch-size: an epoch of {len(order)} samples leaves none for each "
                        f"of {proc.world} processes")
    return make_loader(dataset, mine[first_batch * batch_size:], batch_size, num_workers,
                       proc.device)


@functools.lru_cache(maxsize=128)
def cached_ct(path):
    """One Ct per series and process; memmaps are cheap, so many stay open."""
    return load_ct(path)


class LunaDataset(Dataset):
    """Candidate i -> (crop (1, 32, 48, 48) float32 HU, label [not nodule, nodule], uid, irc)."""

    def __init__(self, candidates, series_paths, crop_irc=CROP_IRC, load_ct=cached_ct):
        self.candidates, self.series_paths = list(candidates), series_paths
        self.crop_irc, self.load_ct = tuple(crop_irc), load_ct

    def __len__(self):
        return len(self.candidates)

    def __getitem__(self, i):
        c = self.candidates[i]
        crop, center_irc = self.load_ct(self.series_paths[c.series_uid]).raw_candidate(
            c.center_xyz, self.crop_irc)
        label = torch.tensor([not c.is_nodule, c.is_nodule], dtype=torch.long)
        return (torch.from_numpy(crop).unsqueeze(0), label, c.series_uid,
                torch.tensor(center_irc))

    def labels(self):
        return [c.is_nodule for c in self.candidates]
