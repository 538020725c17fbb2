"""Chapter 10's exercises (section 10.7): how fast a LunaDataset reads, and what its caches do.

    python ch10_luna/exercises_ch10.py                    # 10.1-10.3, N = 1000 samples each
    python ch10_luna/exercises_ch10.py --exercise 1 --limit 5000

10.1 times iterating the training LunaDataset: a first run, a second one, runs after clearing
the caches (the in-memory CT cache, `dsets.cached_ct`, and the OS page cache of the .raw files),
the last N samples instead of the first; beside it the book's design, crops written once to an
on-disk cache and read back. 10.2 shuffles the sample list in `__init__`; 10.3 opens the CT for
every sample (no lru_cache). Each answer is printed with the figures it rests on.
"""
import argparse
import ctypes
import datetime
import gc
import os
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset

from ch10_luna.dsets import LunaDataset, cached_ct, locate_luna, luna_parser
from ch10_luna.train_cls import make_datasets
from common.ct import check_mhd, load_ct, to_hu
from common.errors import require_at_least, run_cli
from common.files import output_dir, runs_dir

EXERCISES = (1, 2, 3)
# One timed pass: samples visited, seconds, distinct series (CTs) they came from.
Timing = namedtuple("Timing", ["n", "seconds", "series"])


# ----------------------------------------------------------------------------- timing
def time_samples(dataset, indices):
    """Read dataset[i] for each of `indices`, in order: a Timing of the pass."""
    started, n, series = time.perf_counter(), 0, set()
    for i in indices:
        _crop, _label, uid, _irc = dataset[int(i)]
        series.add(uid)
        n += 1
    return Timing(n, time.perf_counter() - started, len(series))


def first_n(dataset, n):
    return range(min(n, len(dataset)))


def last_n(dataset, n):
    return range(max(0, len(dataset) - n), len(dataset))


def rate(t):
    """'1,000 samples in 1.74 s (575/s, 27 series)'."""
    return (f"{t.n:,} samples in {t.seconds:.2f} s ({t.n / max(t.seconds, 1e-9):,.0f}/s, "
            f"{t.series} series)")


def times(reference, timing, what):
    """'3.1x faster than <what>' / '1.2x slower than <what>' / 'about as fast as <what>':
    `timing` against `reference` (Timings)."""
    ratio = reference.seconds / max(timing.seconds, 1e-9)
    if 1 / 1.1 <= ratio <= 1.1:
        return f"about as fast as {what}"
    return (f"{ratio:.1f}x faster than {what}" if ratio > 1 else
            f"{1 / ratio:.1f}x slower than {what}")


# ----------------------------------------------------------------------------- caches
def raw_files(dataset):
    """The .raw files behind the dataset's series (the voxels the memmaps read)."""
    uids = {c.series_uid for c in dataset.candidates}
    return sorted(check_mhd(dataset.series_paths[uid]).raw_path for uid in uids)


def drop_page_cache(paths):
    """Ask the kernel to drop the files' pages from its page cache: fsync (dirty pages cannot
    be dropped), then posix_fadvise DONTNEED. No root needed; pages that a process still maps
    stay. Returns the bytes advised."""
    advised = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            advised += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return advised


def resident_bytes(paths):
    """Bytes of the files now in the page cache (mincore(2) on a mapping that reads nothing);
    None where mincore is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    page, prot_read, map_shared, failed = os.sysconf("SC_PAGE_SIZE"), 1, 1, ctypes.c_void_p(-1)
    resident = 0
    for path in paths:
        size = os.path.getsize(path)
        if not size:
            continue
        flags = (ctypes.c_ubyte * -(-size // page))()
        fd = os.open(path, os.O_RDONLY)
        try:
            address = libc.mmap(None, size, prot_read, map_shared, fd, 0)
            if address is None or address == failed.value:
                return None
            ok = libc.mincore(address, size, flags) == 0
            libc.munmap(address, size)
        finally:
            os.close(fd)
        if not ok:
            return None
        resident += min(sum(f & 1 for f in flags) * page, size)
    return resident


def clear_caches(paths, page_cache=True):
    """Empty the in-memory CT cache (dsets.cached_ct), and with `page_cache` drop `paths` from
    the OS page cache too: the files' bytes still resident afterwards (None: unknown)."""
    cached_ct.cache_clear()
    gc.collect()                        # the Ct objects, and so their memmaps, are gone now
    if page_cache:
        drop_page_cache(paths)
    return resident_bytes(paths)


def cold_run(dataset, indices, paths):
    """Both caches cleared, then a timed pass: (Timing, bytes resident before, bytes the pass
    brought into the page cache); the byte counts None where they cannot be measured."""
    before = clear_caches(paths)
    timing = time_samples(dataset, indices)
    after = resident_bytes(paths)
    return timing, before, None if None in (before, after) else after - before


def mib(n):
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


# ------------------------------------------------------------------- the book's disk cache
def write_crop_cache(dataset, indices, folder):
    """The book's design (prepcache + diskcache): each crop read once and saved as its own
    .npy (int16: the clipped HU are whole numbers, nothing is lost), the centres in one more.
    (seconds, bytes written)."""
    started, written, centers = time.perf_counter(), 0, {}
    for i in indices:
        crop, _label, _uid, center_irc = dataset[int(i)]
        path = Path(folder) / f"{int(i)}.npy"
        np.save(path, crop[0].numpy().astype(np.int16))
        written += path.stat().st_size
        centers[int(i)] = center_irc.numpy()
    np.save(Path(folder) / "centers_irc.npy", centers, allow_pickle=True)
    return time.perf_counter() - started, written


class CachedCropDataset(Dataset):
    """The candidates' crops read back from write_crop_cache's files: no CT is opened."""

    def __init__(self, candidates, folder):
        self.candidates, self.folder = list(candidates), Path(folder)
        self.centers_irc = np.load(self.folder / "centers_irc.npy", allow_pickle=True).item()

    def __len__(self):
        return len(self.candidates)

    def __getitem__(self, i):
        c = self.candidates[i]
        crop = to_hu(np.load(self.folder / f"{i}.npy"))
        label = torch.tensor([not c.is_nodule, c.is_nodule], dtype=torch.long)
        return (torch.from_numpy(crop).unsqueeze(0), label, c.series_uid,
                torch.from_numpy(self.centers_irc[i]))


# ----------------------------------------------------------------------------- 10.1
def exercise_1(dataset, limit, workdir):
    """Time the first `limit` samples: a first run with both caches cleared, a second run,
    runs after clearing the CT cache alone and both, the last `limit` samples; then the book's
    on-disk crop cache written once and read back, cold and warm."""
    raws, first, last = raw_files(dataset), first_n(dataset, limit), last_n(dataset, limit)
    runs, paged = {}, {}
    runs["a"], before, paged["a"] = cold_run(dataset, first, raws)
    runs["b"] = time_samples(dataset, first)
    clear_caches(raws, page_cache=False)
    runs["c_ct"] = time_samples(dataset, first)
    runs["c_all"], _, paged["c_all"] = cold_run(dataset, first, raws)
    runs["d"], _, paged["d"] = cold_run(dataset, last, raws)
    runs["d_second"] = time_samples(dataset, last)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="crop-cache-") as folder:
        write_s, written = write_crop_cache(dataset, first, folder)
        files = sorted(Path(folder).glob("*.npy"))
        drop_page_cache(files)
        cached = CachedCropDataset(dataset.candidates, folder)
        dropped_to = resident_bytes(files)
        runs["disk_cold"] = time_samples(cached, first)
        runs["disk_warm"] = time_samples(cached, first)
    return {"runs": runs, "paged_in": paged, "resident_after_drop": before,
            "raw_bytes": sum(p.stat().st_size for p in raws), "cache_write_s": write_s,
            "cache_bytes": written, "cache_resident_after_drop": dropped_to}


def report_1(r, limit):
    runs, paged = r["runs"], r["paged_in"]
    a, b, c_ct, c_all, d = (runs[k] for k in ("a", "b", "c_ct", "c_all", "d"))
    print(f"Exercise 10.1: iterate the training LunaDataset, N = {limit:,} (the sorted list: "
          "nodules first, largest first)")
    print(f"  a. first run (CT cache empty; posix_fadvise dropped the .raw files from the page "
          f"cache: {mib(r['resident_after_drop'])} of {mib(r['raw_bytes'])} left): {rate(a)}, "
          f"{mib(paged['a'])} read from disk")
    print(f"  b. second run: {rate(b)}: {times(a, b, 'a')}")
    print(f"  c. after clearing the CT cache alone (cached_ct.cache_clear()): {rate(c_ct)}: "
          f"{times(b, c_ct, 'b')}; after clearing both: {rate(c_all)}: {times(a, c_all, 'a')}")
    print(f"  d. the last {limit:,} instead, both caches cleared: {rate(d)}, {mib(paged['d'])} "
          f"read from disk; second run {rate(runs['d_second'])}")
    cold, warm = runs["disk_cold"], runs["disk_warm"]
    print(f"  the book's design, an on-disk crop cache: writing {cold.n:,} crops took "
          f"{r['cache_write_s']:.2f} s ({mib(r['cache_bytes'])}, against {mib(r['raw_bytes'])} "
          f"of .raw for every CT of the training set); read back cold "
          f"({mib(r['cache_resident_after_drop'])} left in the page cache): {rate(cold)}, "
          f"{times(a, cold, 'a')}; warm: {rate(warm)}, {times(b, warm, 'b')}")
    reopen_s = c_ct.seconds - b.seconds
    if warm.seconds < b.seconds and cold.seconds < a.seconds:
        cache = "reads faster than the memmapped CTs, cold and warm: it pays for its disk"
    else:
        cache = ("reads no faster than the memmapped CTs (cold or warm): cutting a crop from a "
                 "mapped .raw costs no more than reading a crop file back")
    print(f"  answer: the second run was {times(a, b, 'the first')}. What a cold start "
          f"costs, measured: reopening {c_ct.series} CTs (the CT cache) {reopen_s:+.2f} s, "
          f"{reopen_s / max(c_ct.series, 1) * 1e3:+.1f} ms each; reading {mib(paged['c_all'])} "
          f"of .raw from disk (the page cache) {c_all.seconds - c_ct.seconds:+.2f} s more. The "
          f"last N come from {d.series} series instead of {a.series}: their cold run read "
          f"{mib(paged['d'])} and was {times(a, d, 'the first N')}. The book's crop cache "
          f"({r['cache_bytes'] / max(cold.n, 1) / 1024:,.0f} KiB a crop) {cache}; the book's "
          "getCt read whole CTs (10.3): that is what its cache saved.")


# ----------------------------------------------------------------------------- 10.2
CT_CACHE_SIZE = cached_ct.cache_info().maxsize


class ShuffledLunaDataset(LunaDataset):
    """A LunaDataset whose sample list is shuffled once, in __init__, from `seed`."""

    def __init__(self, candidates, series_paths, seed=0, **kwargs):
        super().__init__(candidates, series_paths, **kwargs)
        order = np.random.default_rng(seed).permutation(len(self.candidates))
        self.candidates = [self.candidates[i] for i in order]


def exercise_2(dataset, limit, seed):
    """The first `limit` samples of the shuffled list: first and second run after clearing
    the caches, beside the sorted list's cold run."""
    raws, first = raw_files(dataset), first_n(dataset, limit)
    shuffled = ShuffledLunaDataset(dataset.candidates, dataset.series_paths, seed)
    runs, paged = {}, {}
    runs["sorted"], _, paged["sorted"] = cold_run(dataset, first, raws)
    runs["first"], _, paged["first"] = cold_run(shuffled, first, raws)
    runs["second"] = time_samples(shuffled, first)
    lists = {"sorted": dataset, "shuffled": shuffled}
    nodules = {name: sum(d.candidates[i].is_nodule for i in first) for name, d in lists.items()}
    opens = {name: opens_with_one_ct([d.candidates[i].series_uid for i in first])
             for name, d in lists.items()}
    return {"runs": runs, "paged_in": paged, "nodules": nodules, "opens_one_ct": opens}


def opens_with_one_ct(uids):
    """CT opens of a pass with a cache of one CT (the book's getCt): one per change of series."""
    return sum(1 for i, uid in enumerate(uids) if i == 0 or uid != uids[i - 1])


def report_2(r, limit):
    runs, paged, nodules = r["runs"], r["paged_in"], r["nodules"]
    print(f"Exercise 10.2: the sample list shuffled in __init__ (seeded), N = {limit:,}")
    print(f"  first run after clearing both caches: {rate(runs['first'])}, {mib(paged['first'])} "
          f"read from disk, {nodules['shuffled']} nodules among them")
    print(f"  second run: {rate(runs['second'])}: "
          f"{times(runs['first'], runs['second'], 'the first')}")
    print(f"  the sorted list's first run, caches cleared: {rate(runs['sorted'])}, "
          f"{mib(paged['sorted'])} read, {nodules['sorted']} nodules")
    more = "more" if (paged["first"] or 0) > (paged["sorted"] or 0) else "no more"
    print(f"  with the book's getCt cache of one CT (lru_cache(1)), the sorted first N would open "
          f"{r['opens_one_ct']['sorted']:,} CTs and the shuffled first N "
          f"{r['opens_one_ct']['shuffled']:,}; cached_ct here keeps {CT_CACHE_SIZE} CTs")
    print(f"  answer: shuffled, the first N come from {runs['first'].series} series (sorted: "
          f"{runs['sorted'].series}) and a cold run reads {more} of the .raw files "
          f"({mib(paged['first'])} against {mib(paged['sorted'])}) and was "
          f"{times(runs['sorted'], runs['first'], 'the sorted one')}. "
          f"Where the order matters is a small CT cache: with the book's one-CT cache the "
          f"shuffled list reopens a CT for {r['opens_one_ct']['shuffled'] / max(limit, 1):.0%} "
          "of its samples.")


# ----------------------------------------------------------------------------- 10.3
def counting(load):
    """`load` that counts its calls in `.calls`."""
    def wrapped(path):
        wrapped.calls += 1
        return load(path)
    wrapped.calls = 0
    return wrapped


def book_uncached_ms(dataset, indices):
    """ms per sample of the book's getCt without a cache: read the whole CT (SimpleITK), turn
    it into HU, cut the crop."""
    started = time.perf_counter()
    for i in indices:
        c = dataset.candidates[int(i)]
        image = sitk.ReadImage(str(dataset.series_paths[c.series_uid]))
        hu = to_hu(sitk.GetArrayFromImage(image))
        hu[:32, :48, :48].copy()
    return (time.perf_counter() - started) / max(len(indices), 1) * 1e3


def exercise_3(dataset, limit, book_samples=10):
    """Without the in-memory CT cache: a dataset whose load_ct opens the CT for every sample
    (read and check the .mhd header, map the .raw). First and second run, beside the cached
    dataset's warm run and the book's whole-CT read."""
    raws, first = raw_files(dataset), first_n(dataset, limit)
    opener = counting(load_ct)
    uncached = LunaDataset(dataset.candidates, dataset.series_paths, load_ct=opener)
    runs = {}
    runs["first"], _, _ = cold_run(uncached, first, raws)
    runs["second"] = time_samples(uncached, first)
    time_samples(dataset, first)                            # fill the CT cache, then time it
    runs["cached"] = time_samples(dataset, first)
    book = list(first)[:book_samples]
    return {"runs": runs, "opens": opener.calls, "book_ms": book_uncached_ms(dataset, book),
            "book_samples": len(book)}


def report_3(r, limit):
    runs = r["runs"]
    extra_ms = (runs["second"].seconds - runs["cached"].seconds) / max(runs["second"].n, 1) * 1e3
    print(f"Exercise 10.3: without the in-memory CT cache (load_ct opens the CT for every "
          f"sample), N = {limit:,}")
    print(f"  first run (page cache dropped): {rate(runs['first'])}; second run: "
          f"{rate(runs['second'])}")
    print(f"  with the CT cache, warm: {rate(runs['cached'])}: the uncached second run is "
          f"{times(runs['cached'], runs['second'], 'it')}, {extra_ms:.2f} ms more per sample "
          f"({r['opens']:,} CT opens for {2 * runs['second'].n:,} samples)")
    print(f"  the book's getCt without a cache read the whole CT for each sample: "
          f"{r['book_ms']:.1f} ms per sample here (measured on {r['book_samples']}), "
          f"{r['book_ms'] * limit / 1e3:,.1f} s for {limit:,}")
    print(f"  answer: opening a CT here reads its .mhd header (SimpleITK and our checks) and maps "
          f"the .raw without reading voxels; without the cache every sample pays that, "
          f"{extra_ms:.2f} ms here, and the second run, its .raw pages cached, was "
          f"{times(runs['first'], runs['second'], 'the first')}. The book's uncached getCt "
          f"read the whole CT ({r['book_ms']:.1f} ms per sample): that is why it had the "
          "lru_cache and the disk cache.")


REPORTS = {1: report_1, 2: report_2, 3: report_3}


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[luna_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES, metavar="M",
                   help="which exercise(s) of chapter 10 (repeatable; default: all)")
    p.add_argument("--limit", type=int, default=1000,
                   help="samples per timed pass, the book's N (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="10.2's shuffle (default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/ch10/exercises_ch10/<time>); 10.1's crop "
                        "cache lives there while it runs")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    require_at_least("--limit", args.limit, 1)
    out = output_dir(args.out or runs_dir("ch10") / "exercises_ch10" /
                     f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}", "--out")
    luna = locate_luna(args.data_dir, args.synthetic)
    dataset, _ = make_datasets(luna, args.val_stride, args.fold)
    print(f"training set: {len(dataset):,} candidates ({sum(dataset.labels()):,} nodules) in "
          f"{len({c.series_uid for c in dataset.candidates})} series")
    results = {}
    for m in sorted(set(args.exercise or EXERCISES)):
        started = time.perf_counter()
        results[m] = {1: lambda: exercise_1(dataset, args.limit, out),
                      2: lambda: exercise_2(dataset, args.limit, args.seed),
                      3: lambda: exercise_3(dataset, args.limit)}[m]()
        REPORTS[m](results[m], args.limit)
        print(f"  ({time.perf_counter() - started:.0f} s)\n")
    return results


if __name__ == "__main__":
    run_cli(main)
