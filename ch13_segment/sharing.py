"""Chapter 14's analysis past one process: each rank's share of the CTs, the next CT read while
this one is analysed, each CT's result kept for a rerun, and the ranks' results merged.

    with process_group(args.device, timeout=MERGE_WAIT) as proc:   # torchrun's ranks, or one
        mine = share([header_voxels(paths[u]) for u in todo], proc.world)[proc.rank]
        for uid, ct, waited_s, error in prefetched([todo[i] for i in mine], read):
            ...                                    # analyse ct (error: its DataError, or None)
        parts = gather_to_first(my_records)        # rank 0: every rank's; the others: None

nodule_analysis.py and classify_candidates.py set these up in `main`, one labelled line each;
the pipeline steps never see them. Why and what it measured: NOTES.md, "Past one process".
"""
import contextlib
import datetime
import heapq
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch.distributed as dist

from common.ct import check_mhd
from common.errors import DataError
from common.files import write_json

# How long a rank that finished its share waits at the merge for the slowest one (torch's
# default, 30 minutes, is shorter than the imbalance hours of CPU work can build up).
MERGE_WAIT = datetime.timedelta(hours=8)


# ----------------------------------------------------------------------------- shares
def share(sizes, world):
    """[indexes of rank 0's items, rank 1's, ...]: the items (their `sizes`: voxels, candidates)
    dealt greedily, largest first, each onto the rank with the least so far (the lowest rank
    among equals): the longest-processing-time rule, so the busiest rank holds at most an
    even split plus its largest item. Every rank computes the same split from the same sizes;
    each list in ascending order; ranks beyond the items get none."""
    loads = [(0, rank) for rank in range(world)]                 # a heap of (load, rank)
    parts = [[] for _ in range(world)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, rank = heapq.heappop(loads)
        parts[rank].append(i)
        heapq.heappush(loads, (load + sizes[i], rank))
    return [sorted(p) for p in parts]


def header_voxels(path):
    """A CT's size for `share`, read without its voxels: a .mhd's DimSize product; a DICOM
    folder's file count (a slice each; such CTs are shared among themselves); 0 for a header
    that does not read (its CT fails at reading, and says why then)."""
    path = Path(path)
    if path.is_dir():
        return sum(1 for p in path.iterdir() if p.is_file())
    try:
        x, y, z = check_mhd(path).dims_xyz
    except DataError:
        return 0
    return x * y * z


def agreed(value):
    """Rank 0's `value` on every rank (a default name with the time in it, say); `value` alone."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_first(obj):
    """[obj of rank 0, obj of rank 1, ...] on rank 0 and None on the others (only rank 0 merges:
    no rank holds the others' results but it); [obj] alone."""
    if not dist.is_initialized():
        return [obj]
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, parts, dst=0)
    return parts


# ----------------------------------------------------------------------------- prefetch
def prefetched(items, load):
    """(item, load(item), seconds waited for it, None) for each of `items` in order, the next
    item's load running in a background thread while the caller works on this one: at most one
    item ahead, so at most two loaded at once. A load that raises a DataError (a broken CT)
    gives (item, None, seconds, the error) and the others go on; any other error is raised.

    The thread pays off where loading leaves the GIL: reading a memory-mapped .raw and
    converting it to HU (numpy releases it); SimpleITK's DICOM reader holds it."""
    items = list(items)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
    try:
        ahead = pool.submit(load, items[0]) if items else None
        for i, item in enumerate(items):
            started = time.perf_counter()
            try:
                value, error = ahead.result(), None
            except DataError as e:
                value, error = None, e
            waited = time.perf_counter() - started
            ahead = pool.submit(load, items[i + 1]) if i + 1 < len(items) else None
            yield item, value, waited, error
            value = None                   # this CT's memory goes before the next is held
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def skipped(error):
    """Say, in one line on stderr whichever rank it is, that a CT was left out and why (the
    error names the file); the message, for the summary."""
    message = str(error)
    sys.stderr.write(f"warning: skipped: {message}\n")
    sys.stderr.flush()
    return message


# ----------------------------------------------------------------------------- kept results
def result_path(folder, name):
    """Where `keep` puts the result of `name` (characters a file name cannot hold as '_')."""
    return Path(folder) / (re.sub(r"[^A-Za-z0-9._ -]", "_", name).lstrip(".") + ".json")


def keep(folder, name, key, record):
    """Write one finished CT's `record` (JSON-ready; floats are written to round-trip exactly)
    with the `key` of the settings that produced it, atomically: the file is there whole or
    not at all, so its presence says the CT is done."""
    return write_json(result_path(folder, name), {"key": key, **record}, "kept result", indent=None)


def read_kept(folder, names, key, complete=lambda record: True):
    """name -> record for each of `names` whose result `folder` keeps from a run with the same
    `key` (settings) and for which `complete(record)` holds (its files still there); the
    others (absent, from other settings, unreadable) are analysed anew. Only rank 0 reads:
    the others get the names it found, since every rank must share out the same CTs."""
    kept = {}
    if not dist.is_initialized() or dist.get_rank() == 0:
        canonical = json.loads(json.dumps(key))             # tuples as lists, as read back
        for name in names:
            path = result_path(folder, name)
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(record, dict) and record.pop("key", None) == canonical and \
                        complete(record):
                    kept[name] = record
    done = agreed(sorted(kept))                    # what rank 0 found, on every rank
    return kept or dict.fromkeys(done)             # rank 0: the records; the others: names
