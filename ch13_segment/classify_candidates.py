"""LUNA16's false-positive reduction track: the classifier's P(nodule) for every listed candidate
of the scans evaluated, written as a submission CSV and scored as evaluate_luna.py scores.

    python ch13_segment/classify_candidates.py                  # the book's classifier
    python ch13_segment/classify_candidates.py --cls-model runs/ch10/<run>/cls_dlwpt.best.state
    torchrun --nproc_per_node 2 ch13_segment/classify_candidates.py   # the scans shared out

Each row of --candidates (default: the LUNA folder's candidates.csv, else candidates_V2.csv) on
a scan evaluated (--series; default: the validation series, as nodule_analysis.py
--run-validation takes them) is classified on the 32x48x48 crop around the voxel of its centre;
its class column is not read. The marks go to <out>/fpr_<model>_submission.csv (or
--submission) and are scored by the challenge's rules (CPM, sensitivities, counts,
froc_fpr_<model>.png); only the 100 most probable candidates of a scan count. The CT of every
scan evaluated must be on disk. More in NOTES.md.
"""
import argparse
import time
from pathlib import Path

import numpy as np

from ch10_luna.dsets import find_luna, finite_fields
from ch10_luna.runtime import barrier, is_node_leader, process_group
from ch13_segment import sharing
from ch13_segment.dsets import split_series
from ch13_segment.evaluate_luna import (
    csv_rows,
    luna_folder,
    read_series,
    reference_csvs,
    report,
    scoring_parser,
)
from ch13_segment.model import BOOK_CLS_MODEL, load_model
from ch13_segment.nodule_analysis import classify
from ch13_segment.precision import prepare
from common.ct import load_ct
from common.data import book_file
from common.device import add_device_argument
from common.errors import DataError, run_cli
from common.files import runs_dir

CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")


def read_candidate_centres(path, uids):
    """uid -> (N, 3) float64 mm: the centres listed for the scans `uids`, in file order."""
    wanted, centres = set(uids), {}
    for line, row in csv_rows(path, "--candidates", CANDIDATE_COLUMNS):
        if row["seriesuid"] in wanted:
            xyz = finite_fields(path, line, row, CANDIDATE_COLUMNS[1:], "--candidates")
            centres.setdefault(row["seriesuid"], []).append(xyz)
    return {uid: np.array(xyz, dtype=np.float64) for uid, xyz in centres.items()}


def classify_scans(model, centres, cts, batch_size=64, device="cpu"):
    """uid -> (centres (N, 3) mm, P(nodule) (N,) float64), one CT at a time: `cts` gives
    (uid, Ct) for each scan of `centres` (read_scans)."""
    marks = {}
    for k, (uid, ct) in enumerate(cts, start=1):
        started = time.perf_counter()
        irc = [ct.xyz_to_irc(tuple(xyz)) for xyz in centres[uid]]      # the voxel, as trained
        probs = classify(model, ct, irc, batch_size, device).astype(np.float64)
        marks[uid] = (centres[uid], probs)
        print(f"  {k}/{len(centres)} {uid}: {len(probs)} candidates, "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    return marks


def read_scans(uids, series_paths):
    """(uid, its Ct with every voxel read) for each of `uids` in order, the next one read in a
    background thread while this one is classified (sharing.prefetched); a scan that does not
    read stops the run, since every scan evaluated is scored."""
    def read(uid):
        ct = load_ct(series_paths[uid])
        ct.hu                                 # noqa: B018 (the property reads the voxels)
        return ct

    for uid, ct, _waited, error in sharing.prefetched(uids, read):
        if error is not None:
            raise error
        yield uid, ct


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[scoring_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", default=None, metavar="C.csv",
                   help="the candidate list (default: the LUNA folder's candidates.csv)")
    p.add_argument("--cls-model", default=None, metavar="M.state",
                   help=f"nodule classifier (default: the book's {Path(BOOK_CLS_MODEL).name})")
    p.add_argument("--series", default=None, metavar="S.csv",
                   help="the scans to evaluate, one uid per line (default: the validation "
                        "series on disk)")
    p.add_argument("--val-stride", type=int, default=10,
                   help="without --series: every N-th series validates (default: %(default)s)")
    p.add_argument("--submission", default=None, metavar="OUT.csv",
                   help="where the submission CSV goes (default: <out>/fpr_<model>_submission.csv)")
    p.add_argument("--batch-size", type=int, default=64, help="crops per batch")
    add_device_argument(p)
    args = p.parse_args(argv)
    if args.bootstrap < 0:
        p.error("--bootstrap must be 0 or more")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    # Under torchrun each process classifies its share of the scans (balanced by candidates)
    # and rank 0 scores them all; alone, it is rank 0 of 1 (sharing.py).
    with process_group(args.device, timeout=sharing.MERGE_WAIT) as proc:
        if is_node_leader():                # the sample, if it is to be made: once per node
            luna_folder(args.data_dir, args.synthetic)
        barrier()
        folder, synthetic = luna_folder(args.data_dir, args.synthetic)
        if synthetic:
            proc.say(f"SYNTHETIC DATA: the built-in sample in {folder}, not LUNA16")
        luna = find_luna(folder, synthetic)
        uids = (read_series(args.series) if args.series is not None
                else sorted(split_series(luna.series, args.val_stride)[1]))
        absent = [uid for uid in uids if uid not in luna.series]
        if absent:
            raise DataError(f"--series: {len(absent)} of the {len(uids)} scans are not on disk "
                            f"under {luna.root}, e.g. {absent[0]}: this track classifies their "
                            "CTs")
        candidates = Path(args.candidates) if args.candidates else luna.candidates_csv
        centres = read_candidate_centres(candidates, uids)
        cls_path = args.cls_model or book_file(BOOK_CLS_MODEL, args.data_dir, "luna-models")
        model = prepare(load_model(cls_path, "LunaModel", "--cls-model").to(proc.device),
                        "fp32", batch_size=args.batch_size)
        annotations, excluded = reference_csvs(folder, args.annotations, args.excluded)
        n = sum(len(c) for c in centres.values())
        ranks = f" x {proc.world} processes" if proc.world > 1 else ""
        proc.say(f"{n:,} candidates of {candidates.name} on {len(uids)} scans; classifier "
                 f"{Path(cls_path).name} on {proc.device}{ranks}")
        scans = sorted(centres)
        mine = [scans[i] for i in sharing.share([len(centres[u]) for u in scans],
                                                 proc.world)[proc.rank]]
        marks = classify_scans(model, {u: centres[u] for u in mine},
                               read_scans(mine, luna.series), args.batch_size, proc.device)
        parts = sharing.gather_to_first(marks)            # rank 0: every rank's marks
    if parts is None:
        return {"rank": proc.rank}                        # rank 0 scores the whole run
    marks = {uid: part[uid] for part in parts for uid in part}
    name = "fpr_" + Path(cls_path).name.removesuffix(".state")
    out = Path(args.out) if args.out else runs_dir("ch13")
    result = report(marks, uids, annotations, excluded, out, name, args.bootstrap, args.seed,
                    args.submission or out / f"{name}_submission.csv", where=str(candidates))
    result["candidates"] = n
    return result


if __name__ == "__main__":
    run_cli(main)
