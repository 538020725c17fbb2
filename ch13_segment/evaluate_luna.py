"""LUNA16's own scoring of nodule detections: FROC, CPM and the challenge's submission CSV.

    python ch13_segment/nodule_analysis.py --run-validation --json runs/ch13/analysis.json
    python ch13_segment/evaluate_luna.py runs/ch13/analysis.json               # detection track
    python ch13_segment/evaluate_luna.py submission.csv --series seriesuids.csv
    python ch13_segment/classify_candidates.py            # false-positive reduction track

DETECTIONS is the file `nodule_analysis.py --json` writes or a LUNA16 submission CSV
(seriesuid,coordX,coordY,coordZ,probability; mm in the patient frame of the .mhd). The marks are
scored against --annotations and --excluded (the challenge's irrelevant findings) on the scans
of --series, by the challenge's rules (froc.py). It prints `CPM 0.xxxxxx` with its 95% bootstrap
interval, the seven sensitivities and the counts; writes the FROC as froc_<name>.png in --out
(default runs/ch13/) and, for a JSON input or with --submission, the marks as a submission CSV.
The defaults of the CSV flags and the rules: NOTES.md.
"""
import argparse
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ch10_luna.dsets import finite_fields, luna_dir, read_csv_rows
from ch10_luna.synthetic import EXCLUDED_CSV, generate_sample, sample_is_current
from ch13_segment.froc import FP_RATES, FROC_MAX, FROC_MIN, N_RESAMPLES, evaluate, score_scan
from common.data import add_data_dir_argument, data_root
from common.errors import DataError, run_cli
from common.figures import new_figure, save_figure
from common.files import runs_dir, write_text

SUBMISSION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
FINDING_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
RATE_LABELS = ("1/8", "1/4", "1/2", "1", "2", "4", "8")


# ----------------------------------------------------------------------------- reading
def read_text(path, what):
    """The whole of a text file; DataError naming `what` when it is missing or not text."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path}: " + ("a folder, not a file" if path.is_dir()
                                               else "no such file"))
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{what} {path}: not a text file") from None
    except OSError as e:
        raise DataError(f"{what} {path}: cannot read ({e.strerror})") from None


def csv_rows(path, what, columns):
    """read_csv_rows, refusing a row whose first column (the series uid) is empty."""
    for line, row in read_csv_rows(path, columns, what):
        if not row[columns[0]]:
            raise DataError(f"{what} {path}, line {line}: empty {columns[0]}")
        yield line, row


def by_series(pairs):
    """uid -> ((M, 3) float64 mm, (M,) float64) from (uid, xyz, value) triples, in file order."""
    grouped = {}
    for uid, xyz, value in pairs:
        grouped.setdefault(uid, ([], []))
        grouped[uid][0].append(xyz)
        grouped[uid][1].append(value)
    return {uid: (np.array(xyz, dtype=np.float64).reshape(-1, 3), np.array(v, dtype=np.float64))
            for uid, (xyz, v) in grouped.items()}


def read_submission(path, what="DETECTIONS"):
    """uid -> (marks (M, 3) mm, probabilities (M,)) from a LUNA16 submission CSV."""
    def rows():
        for line, row in csv_rows(path, what, SUBMISSION_COLUMNS):
            *xyz, probability = finite_fields(path, line, row, SUBMISSION_COLUMNS[1:], what)
            yield row["seriesuid"], xyz, probability
    return by_series(rows())


def read_findings(path, what, unsized_allowed):
    """uid -> (centres (N, 3) mm, diameters (N,) mm) from annotations(_excluded).csv.

    A diameter must be positive; in annotations_excluded.csv -1 (or any negative: the script
    takes every negative as 10 mm) marks an unsized finding.
    """
    def rows():
        for line, row in csv_rows(path, what, FINDING_COLUMNS):
            *xyz, d = finite_fields(path, line, row, FINDING_COLUMNS[1:], what)
            if d == 0 or (d < 0 and not unsized_allowed):
                raise DataError(f"{what} {path}, line {line}: diameter_mm is {row['diameter_mm']}"
                                + (", expected > 0 or -1 (unsized)" if unsized_allowed
                                   else ", expected > 0"))
            yield row["seriesuid"], xyz, d
    return by_series(rows())


def read_analysis(path, text, what="DETECTIONS"):
    """uid -> (marks, probabilities) and the scans in order, from nodule_analysis.py --json."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} {path}: not JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("series"), list):
        raise DataError(f"{what} {path}: not a nodule_analysis.py --json file (no 'series' list)")
    marks = {}
    for i, s in enumerate(doc["series"]):
        where = f"{what} {path}: series[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("series_uid"), str) \
                or not s["series_uid"] or not isinstance(s.get("candidates"), list):
            raise DataError(f"{where}: needs a series_uid and a candidates list")
        uid = s["series_uid"]
        if uid in marks:
            raise DataError(f"{where}: series {uid} appears twice")
        xyz, probs = [], []
        for j, c in enumerate(s["candidates"]):
            center = c.get("center_xyz") if isinstance(c, dict) else None
            prob = c.get("prob_nodule") if isinstance(c, dict) else None
            if not (isinstance(center, list) and len(center) == 3
                    and all(is_number(v) for v in center)):
                raise DataError(f"{where} ({uid}), candidate {j}: center_xyz is {center!r}, "
                                "not 3 finite numbers (mm)")
            if not is_number(prob):
                raise DataError(f"{where} ({uid}), candidate {j}: prob_nodule is {prob!r}, "
                                "not a finite number")
            xyz.append([float(v) for v in center])
            probs.append(float(prob))
        marks[uid] = (np.array(xyz, dtype=np.float64).reshape(-1, 3),
                      np.array(probs, dtype=np.float64))
    if not marks:
        raise DataError(f"{what} {path}: holds no series")
    return marks, list(marks)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_detections(path):
    """(uid -> (marks, probabilities), default scans, 'analysis' or 'submission')."""
    text = read_text(path, "DETECTIONS")
    if text.lstrip().startswith("{"):
        marks, uids = read_analysis(path, text)
        return marks, uids, "analysis"
    marks = read_submission(path)
    return marks, sorted(marks), "submission"


def read_series(path):
    """The scans to evaluate: the first column of each line (a 'seriesuid' header allowed)."""
    uids, seen = [], set()
    for line, row in enumerate(csv.reader(io.StringIO(read_text(path, "--series"),
                                                      newline="")), start=1):
        uid = row[0].strip() if row else ""
        if not uid or (line == 1 and uid == "seriesuid"):
            continue
        if uid in seen:
            raise DataError(f"--series {path}, line {line}: {uid} listed twice")
        seen.add(uid)
        uids.append(uid)
    if not uids:
        raise DataError(f"--series {path}: lists no series")
    return uids


def luna_folder(data_dir=None, synthetic=False):
    """(folder, is_synthetic): LUNA16 under the data root when present, else the synthetic
    sample (generated, or regenerated when older than annotations_excluded.csv)."""
    real = luna_dir(data_dir)
    if not synthetic and real.is_dir():
        return real, False
    sample = data_root(data_dir) / "synthetic" / "luna"
    if not sample_is_current(sample):
        print(f"generating the synthetic LUNA sample in {sample} (once) ...")
        generate_sample(sample)
    return sample, True


def default_csv(folder, names, flag, hint):
    """The first of `names` (paths or glob patterns under the LUNA folder) that exists."""
    for name in names:
        found = sorted(p for p in folder.glob(name) if p.is_file())
        if found:
            return found[0]
    raise DataError(f"{flag}: no {Path(names[0]).name} in {folder} ({hint}); give {flag} FILE")


def reference_csvs(folder, annotations=None, excluded=None):
    """(annotations.csv, annotations_excluded.csv): the paths given, else the LUNA folder's."""
    return (annotations or default_csv(folder, ANNOTATION_PLACES, "--annotations",
                                       ANNOTATIONS_HINT),
            excluded or default_csv(folder, EXCLUDED_PLACES, "--excluded", EXCLUDED_HINT))


ANNOTATION_PLACES = ("annotations.csv", "../part2/luna/annotations.csv")
ANNOTATIONS_HINT = "LUNA16's annotations.csv: python -m common.data download luna-annotations"
# annotations_excluded.csv as LUNA16 ships it: in evaluationScript.zip, under annotations/
EXCLUDED_PLACES = (EXCLUDED_CSV, "evaluationScript*/annotations/" + EXCLUDED_CSV,
                   "evaluationScript*/*/annotations/" + EXCLUDED_CSV)
EXCLUDED_HINT = ("LUNA16's irrelevant findings, annotations_excluded.csv in evaluationScript.zip; "
                 "get it with:  python -m common.data download luna-evaluation")


# ----------------------------------------------------------------------------- scoring
def score(marks, uids, nodules, excluded, n_resamples=N_RESAMPLES, seed=0, where="DETECTIONS"):
    """evaluate() over the scans `uids`; marks of any other scan are a DataError."""
    unknown = sorted(set(marks) - set(uids))
    if unknown:
        raise DataError(f"{where}: {len(unknown)} series not among the {len(uids)} scans "
                        f"evaluated, e.g. {unknown[0]} (list them with --series, or leave "
                        "them out)")
    empty = (np.zeros((0, 3)), np.zeros(0))
    scans = [score_scan(*marks.get(uid, empty), *nodules.get(uid, empty),
                        *excluded.get(uid, empty)) for uid in uids]
    try:
        return evaluate(scans, n_resamples=n_resamples, seed=seed)
    except ValueError:
        raise DataError(f"--annotations: no annotated nodule in the {len(uids)} scans evaluated "
                        "(sensitivity undefined): are they the annotations of these scans?") \
            from None


def summary_lines(r):
    """The report: the CPM line (six decimals), the sensitivities, the counts."""
    b = r.get("bootstrap") or {}
    band = (f"  (95% interval {b['cpm_lower']:.6f} - {b['cpm_upper']:.6f}, {b['resamples']} "
            f"bootstrap resamples of the {r['scans']} scans, seed {b['seed']})"
            if b.get("resamples") else "")
    sens = "  ".join(f"{label}: {s:.3f}" for label, s in zip(RATE_LABELS, r["sensitivities"]))
    lines = [f"CPM {r['cpm']:.6f}{band}",
             f"sensitivity at FP/scan  {sens}",
             f"scans {r['scans']}, nodules {r['nodules']}, found {r['found']}, "
             f"false positives {r['false_positives']} "
             f"({r['false_positives'] / r['scans']:.2f} per scan), ignored marks {r['ignored']} "
             f"(on excluded findings); marks scored {r['marks_kept']:,} of {r['marks_given']:,} "
             f"(at most 100 per scan), extra hits on found nodules {r['extra_hits']}"]
    if b.get("skipped"):
        lines.append(f"({b['skipped']} resamples without any nodule left out of the interval)")
    return lines


def save_froc_png(r, path, title):
    """Sensitivity against false positives per scan on a log-2 axis from 1/8 to 8, as the
    challenge draws it (the curve sampled at 10,001 rates), with the bootstrap mean and band."""
    fig = new_figure(figsize=(7, 5))
    ax = fig.subplots()
    grid = np.linspace(FROC_MIN, FROC_MAX, 10_001)
    b = r.get("bootstrap") or {}
    if b.get("resamples"):
        ax.fill_between(b["grid"], b["curve_lower"], b["curve_upper"], color="tab:blue",
                        alpha=0.15, lw=0, label=f"95% bootstrap band ({b['resamples']} resamples)")
        ax.plot(b["grid"], b["curve_mean"], color="tab:blue", ls="--", lw=1,
                label="bootstrap mean")
    ax.plot(grid, np.interp(grid, r["fps_per_scan"], r["sensitivity"]), color="tab:blue", lw=2,
            label=f"CPM {r['cpm']:.3f}")
    ax.plot(FP_RATES, r["sensitivities"], "o", color="tab:blue", ms=5)
    ax.set_xscale("log", base=2)
    ax.set_xlim(FROC_MIN, FROC_MAX)
    ax.set_xticks(FP_RATES, RATE_LABELS)
    ax.set_ylim(0, 1)
    ax.set_yticks(np.linspace(0, 1, 11))
    ax.set_xlabel("average number of false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def write_submission(path, marks):
    """Every mark in LUNA16's submission format; floats written to round-trip exactly."""
    lines = [",".join(SUBMISSION_COLUMNS)]
    for uid in sorted(marks):
        for xyz, p in zip(*marks[uid]):
            lines.append(",".join([uid, *(repr(float(v)) for v in xyz), repr(float(p))]))
    return write_text(path, "\n".join(lines) + "\n", "--submission")


def report(marks, uids, annotations, excluded, out, name, n_resamples=N_RESAMPLES, seed=0,
           submission=None, where="DETECTIONS"):
    """Score, print, draw and (with `submission`) write the CSV: the results dict."""
    nodules = read_findings(annotations, "--annotations", unsized_allowed=False)
    irrelevant = read_findings(excluded, "--excluded", unsized_allowed=True)
    r = score(marks, uids, nodules, irrelevant, n_resamples, seed, where)
    for line in summary_lines(r):
        print(line)
    b = r.get("bootstrap") or {}
    band = f" [{b['cpm_lower']:.3f}, {b['cpm_upper']:.3f}]" if b.get("resamples") else ""
    r["png"] = save_froc_png(r, Path(out) / f"froc_{name}.png",
                             f"{name}\nCPM {r['cpm']:.3f}{band}; {r['scans']} scans, "
                             f"{r['nodules']} nodules, {r['found']} found, "
                             f"{r['false_positives']} false positives")
    print(f"FROC figure: {r['png']}")
    if submission is not None:
        r["submission"] = write_submission(submission, marks)
        print(f"submission CSV: {r['submission']}")
    r["series"] = list(uids)
    return r


# ----------------------------------------------------------------------------- main
def scoring_parser():
    """The flags of both LUNA16 tracks' scoring (this script and classify_candidates.py): the
    reference CSVs, where the figure and the submission go, the bootstrap, the data."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--annotations", default=None, metavar="A.csv",
                   help="LUNA16's annotations.csv (default: the LUNA folder's)")
    p.add_argument("--excluded", default=None, metavar="E.csv",
                   help="LUNA16's annotations_excluded.csv (default: the LUNA folder's)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the FROC figure and the submission CSV (default: runs/ch13/)")
    p.add_argument("--bootstrap", type=int, default=N_RESAMPLES, metavar="N",
                   help="bootstrap resamples for the intervals (default: %(default)s; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    p.add_argument("--synthetic", action="store_true",
                   help="the built-in synthetic sample even if LUNA16 is present")
    add_data_dir_argument(p)
    return p


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[scoring_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("detections", metavar="DETECTIONS",
                   help="a nodule_analysis.py --json file or a LUNA16 submission CSV")
    p.add_argument("--series", default=None, metavar="S.csv",
                   help="the scans to evaluate, one uid per line (default: the analysis' "
                        "scans, or every scan the CSV names)")
    p.add_argument("--submission", default=None, metavar="OUT.csv",
                   help="write the marks as a submission CSV (default for a JSON input: "
                        "<out>/<name>_submission.csv)")
    args = p.parse_args(argv)
    if args.bootstrap < 0:
        p.error("--bootstrap must be 0 or more")
    return args


def main(argv=None):
    args = parse_args(argv)
    marks, uids, kind = read_detections(args.detections)
    if args.series is not None:
        uids = read_series(args.series)
    if not uids:
        raise DataError(f"DETECTIONS {args.detections}: names no scan; give --series")
    if args.annotations is None or args.excluded is None:
        folder, synthetic = luna_folder(args.data_dir, args.synthetic)
        if synthetic:
            print(f"(annotations and excluded findings of the synthetic sample in {folder}, "
                  "not LUNA16)")
        args.annotations, args.excluded = reference_csvs(folder, args.annotations, args.excluded)
    name = Path(args.detections).stem
    out = Path(args.out) if args.out else runs_dir("ch13")
    submission = args.submission or (out / f"{name}_submission.csv" if kind == "analysis"
                                     else None)
    return report(marks, uids, args.annotations, args.excluded, out, name, args.bootstrap,
                  args.seed, submission, where=f"DETECTIONS {args.detections}")


if __name__ == "__main__":
    run_cli(main)
