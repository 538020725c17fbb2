"""LUNA16's false-positive reduction track: the classifier's P(nodule) for every listed candidate
of the scans evaluated, written as a submission CSV and scored as evaluate_luna.py scores.

    python ch13_segment/classify_candidates.py                  # the book's classifier
    python ch13_segment/classify_candidates.py --cls-model runs/ch10/<run>/cls_dlwpt.best.state

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
from common.device import add_device_argument, pick_device
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


def classify_scans(model, centres, series_paths, batch_size=64, device="cpu"):
    """uid -> (centres (N, 3) mm, P(nodule) (N,) float64), one CT at a time."""
    marks = {}
    for k, uid in enumerate(sorted(centres), start=1):
        started = time.perf_counter()
        ct = load_ct(series_paths[uid])
        irc = [ct.xyz_to_irc(tuple(xyz)) for xyz in centres[uid]]      # the voxel, as trained
        probs = classify(model, ct, irc, batch_size, device).astype(np.float64)
        marks[uid] = (centres[uid], probs)
        print(f"  {k}/{len(centres)} {uid}: {len(probs)} candidates, "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    return marks


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
    folder, synthetic = luna_folder(args.data_dir, args.synthetic)
    if synthetic:
        print(f"SYNTHETIC DATA: the built-in sample in {folder}, not LUNA16")
    luna = find_luna(folder, synthetic)
    uids = (read_series(args.series) if args.series is not None
            else sorted(split_series(luna.series, args.val_stride)[1]))
    absent = [uid for uid in uids if uid not in luna.series]
    if absent:
        raise DataError(f"--series: {len(absent)} of the {len(uids)} scans are not on disk under "
                        f"{luna.root}, e.g. {absent[0]}: this track classifies their CTs")
    candidates = Path(args.candidates) if args.candidates else luna.candidates_csv
    centres = read_candidate_centres(candidates, uids)
    cls_path = args.cls_model or book_file(BOOK_CLS_MODEL, args.data_dir, "luna-models")
    device = pick_device(args.device)
    model = prepare(load_model(cls_path, "LunaModel", "--cls-model").to(device), "fp32",
                    batch_size=args.batch_size)
    n = sum(len(c) for c in centres.values())
    print(f"{n:,} candidates of {candidates.name} on {len(uids)} scans; classifier "
          f"{Path(cls_path).name} on {device}")
    marks = classify_scans(model, centres, luna.series, args.batch_size, device)
    annotations, excluded = reference_csvs(folder, args.annotations, args.excluded)
    name = "fpr_" + Path(cls_path).name.removesuffix(".state")
    out = Path(args.out) if args.out else runs_dir("ch13")
    result = report(marks, uids, annotations, excluded, out, name, args.bootstrap, args.seed,
                    args.submission or out / f"{name}_submission.csv", where=str(candidates))
    result["candidates"] = n
    return result


if __name__ == "__main__":
    run_cli(main)
