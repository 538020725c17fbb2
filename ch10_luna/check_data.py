"""Chapters 9-10: what is present, missing or broken in a LUNA16 folder, before training on it.

    python ch10_luna/check_data.py                    # <data root>/luna
    python ch10_luna/check_data.py --data-dir /big/disk/dlwpt
    python ch10_luna/check_data.py --synthetic        # the built-in sample (generated if absent)

It reads the CSVs as the trainers do, validates each subset's `.mhd` headers as common/ct.py
does and compares each `.raw` file's size with its header (no voxel is read). It prints one line
per item, then a verdict, and exits 0 when train_cls.py can train on the folder, 1 when not.
Broken series and empty subset folders are listed; the training skips them. What LUNA16 holds
and the lines to expect: README.md and NOTES.md.
"""
import argparse
import json
from pathlib import Path

from ch10_luna.dsets import finite_fields, luna_dir, read_csv_rows
from ch10_luna.synthetic import MARKER, generate_sample
from common.ct import check_mhd
from common.data import add_data_dir_argument, data_root, human_size
from common.errors import DataError, run_cli

N_SUBSETS = 10
BOOK_COUNTS = {"series": 888, "candidates": 551_065, "candidate nodules": 1_351,
               "annotations": 1_186, "annotated series": 601}
IGNORED = {"seg-lungs-LUNA16": "LUNA16's lung masks: the book does not use them"}
# name -> (columns that must be present, needed for training)
CSV_FILES = {
    "candidates.csv": (("seriesuid", "coordX", "coordY", "coordZ", "class"), True),
    "annotations.csv": (("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"), True),
    "annotations_with_malignancy.csv": (("seriesuid", "coordX", "coordY", "coordZ",
                                         "diameter_mm", "mal_bool"), False),   # chapter 14
}


def csv_locations(folder):
    """Where each CSV may be, in dsets.find_luna's order: LUNA16's names, then the book's."""
    book = folder.parent / "part2" / "luna"            # `download luna-csv` puts them there
    return {
        "candidates.csv": [folder / "candidates.csv", folder / "candidates_V2.csv",
                           folder / "candidates_V2" / "candidates_V2.csv", book / "candidates.csv"],
        "annotations.csv": [folder / "annotations.csv", book / "annotations.csv"],
        "annotations_with_malignancy.csv": [folder / "annotations_with_malignancy.csv",
                                            book / "annotations_with_malignancy.csv"],
    }


def check_csv(name, paths):
    """(report entry, set of series uids) for one CSV: rows, nodules, series, or why it is bad
    (read as the chapters' readers read it: UTF-8, the columns, finite numbers, the flags)."""
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        return {"status": "missing", "looked_in": [str(p) for p in paths]}, set()
    columns, _ = CSV_FILES[name]
    numbers = [c for c in ("coordX", "coordY", "coordZ", "diameter_mm") if c in columns]
    rows, nodules, uids = 0, 0, set()
    try:
        for line, row in read_csv_rows(path, columns):
            finite_fields(path, line, row, numbers)
            if name == "candidates.csv":
                if row["class"] not in ("0", "1"):
                    raise DataError(f"{path}, line {line}: class is {row['class']!r}, "
                                    "expected 0 or 1")
                nodules += row["class"] == "1"
            elif name == "annotations_with_malignancy.csv":     # chapter 14 reads it so
                if row["mal_bool"] not in ("True", "False"):
                    raise DataError(f"{path}, line {line}: mal_bool is {row['mal_bool']!r}, "
                                    "expected True or False")
                nodules += row["mal_bool"] == "True"             # the malignant ones
            else:
                nodules += 1
            rows += 1
            uids.add(row["seriesuid"])
    except DataError as e:
        return {"status": "unreadable", "path": str(path), "error": str(e)}, set()
    if rows == 0:
        return {"status": "unreadable", "path": str(path), "error": f"{path}: no data rows"}, set()
    return {"status": "ok", "path": str(path), "rows": rows, "nodules": nodules,
            "series": len(uids)}, uids


def check_subset(folder, i):
    """(report entry, {uid: .mhd path} of the series that passed, [bad file entries])."""
    path = folder / f"subset{i}"
    zip_path = folder / f"subset{i}.zip"
    if not path.is_dir():
        entry = {"status": "missing"}
        if zip_path.with_name(zip_path.name + ".part").exists():
            entry["note"] = "partial download: run the download command again to resume it"
        elif zip_path.exists():
            entry["note"] = f"{zip_path.name} downloaded but not unpacked"
        return entry, {}, []
    files = [p for p in path.iterdir() if p.is_file()]
    mhds = sorted(p for p in files if p.suffix.lower() == ".mhd")
    size = sum(p.stat().st_size for p in files)
    entry = {"status": "present" if mhds else "empty", "series": len(mhds), "bytes": size}
    stems = {p.stem for p in mhds}
    orphans = [p for p in files if p.suffix.lower() in (".raw", ".zraw") and p.stem not in stems]
    if orphans:
        entry["raw_without_mhd"] = len(orphans)
    good, bad = {}, []
    for mhd in mhds:
        try:
            check_mhd(mhd)
        except DataError as e:
            bad.append({"file": str(mhd), "subset": i, "error": str(e)})
        else:
            good[mhd.stem] = mhd
    return entry, good, bad


def check_luna(folder, train_command="python ch10_luna/train_cls.py"):
    """The whole report as a dict; `usable` says whether train_cls.py can train on `folder`."""
    folder = Path(folder)
    marker = None
    report = {"folder": str(folder), "exists": folder.is_dir(), "csvs": {}, "subsets": {},
              "bad_files": [], "ignored": [], "problems": [], "notes": []}
    if (folder / MARKER).is_file():
        marker = json.loads((folder / MARKER).read_text())
    report["synthetic"] = marker
    uids = {}
    for name, paths in csv_locations(folder).items():
        report["csvs"][name], uids[name] = check_csv(name, paths)
    on_disk = {}
    for i in range(N_SUBSETS):
        entry, good, bad = check_subset(folder, i)
        report["subsets"][f"subset{i}"] = entry
        on_disk.update(good)
        report["bad_files"] += bad
    for name, why in IGNORED.items():
        if (folder / name).exists() or (folder / f"{name}.zip").exists():
            report["ignored"].append(name)
            report["notes"].append(f"{name}/ ignored ({why})")

    subsets = report["subsets"].values()
    referenced = uids["candidates.csv"] | uids["annotations.csv"]
    report["series_on_disk"] = sum(e.get("series", 0) for e in subsets)
    report["series_ok"] = len(on_disk)
    report["series_referenced"] = len(referenced)
    report["series_missing"] = len(referenced - set(on_disk)) if referenced else None
    report["series_not_in_candidates"] = len(set(on_disk) - uids["candidates.csv"]) \
        if uids["candidates.csv"] else None
    trainable = set(on_disk) & uids["candidates.csv"]
    report["series_trainable"] = len(trainable)
    report["problems"] = find_problems(report, trainable)
    report["usable"] = not report["problems"]
    report["download"] = download_command(report)
    report["verdict"] = verdict(report, train_command)
    return report


def find_problems(report, trainable):
    """What stops train_cls.py (broken series and empty subsets are only skipped)."""
    problems = []
    if not report["exists"]:
        return [f"{report['folder']} does not exist"]
    for name, entry in report["csvs"].items():
        if CSV_FILES[name][1] and entry["status"] != "ok":
            problems.append(f"{name} {entry['status']}")
    subsets = report["subsets"]
    if not any(e["status"] == "present" for e in subsets.values()):
        problems.append("no subset folder with CT scans")
    if not problems and len(trainable) < 2:
        problems.append(f"{len(trainable)} series on disk have candidates: training needs two "
                        "(one for validation)")
    marker = report["synthetic"]
    cand = report["csvs"]["candidates.csv"]
    if marker and cand["status"] == "ok" and (cand["rows"], report["series_ok"]) != (
            marker["candidates"], marker["series"]):
        problems.append(f"the sample does not match its {MARKER} ({cand['rows']} candidates, "
                        f"{report['series_ok']} series; expected {marker['candidates']}, "
                        f"{marker['series']}): delete the folder to regenerate it")
    return problems


def broken_optional(report):
    """The CSVs training does without (chapter 14's) that are there but unreadable."""
    return [name for name, e in report["csvs"].items()
            if not CSV_FILES[name][1] and e["status"] == "unreadable"]


def download_command(report):
    """The download that fixes what is missing or broken; None when nothing needs fetching."""
    names = []
    if any(CSV_FILES[n][1] and e["status"] != "ok" for n, e in report["csvs"].items()) or \
            broken_optional(report):
        names.append("luna-csv")
    broken = sorted({b["subset"] for b in report["bad_files"]} |
                    {int(n[6:]) for n, e in report["subsets"].items() if e["status"] == "empty"})
    if not any(e["status"] == "present" for e in report["subsets"].values()):
        broken = broken or [0]
    names += [f"luna-subset{i}" for i in broken]
    if not names or report["synthetic"]:
        return None
    return "python -m common.data download " + " ".join(names)


def skipped(report):
    """'2 broken series, empty subset5' (what the training will skip), or ''."""
    empty = [name for name, e in report["subsets"].items() if e["status"] == "empty"]
    parts = ([f"{len(report['bad_files'])} broken series"] if report["bad_files"] else []) + (
        [f"empty {', '.join(empty)}"] if empty else [])
    return ", ".join(parts)


def verdict(report, train_command):
    if report["usable"]:
        kind = "the synthetic sample" if report["synthetic"] else "LUNA16"
        skip = skipped(report)
        fix = f"fix with: {report['download']}" if report["download"] else None
        optional = broken_optional(report)
        return (f"USABLE: {kind}, {report['series_trainable']} series on disk with candidates"
                + (f" ({skip} skipped: see above; {fix or 'remove them'})" if skip else "")
                + f"; train with: {train_command}"
                + (f"; but {', '.join(optional)} is UNREADABLE (see above; chapter 14 needs "
                   f"it): {fix or 'delete the folder to regenerate the sample'}"
                   if optional else ""))
    text = "NOT USABLE: " + "; ".join(report["problems"] + ([f"also {skipped(report)}"]
                                                            if skipped(report) else []))
    if report["download"]:
        text += (f". Get the data with: {report['download']}  (or use the built-in sample: "
                 "--synthetic)")
    elif report["synthetic"]:
        text += ". Regenerate it with: python ch10_luna/check_data.py --synthetic"
    return text


def format_report(report):
    """The report as printable lines."""
    lines = [f"LUNA folder: {report['folder']}" + ("" if report["exists"] else "  (missing)")]
    if report["synthetic"]:
        m = report["synthetic"]
        lines.append(f"  synthetic sample ({MARKER}): {m['series']} series, {m['nodules']} "
                     f"nodules, {m['candidates']} candidates ({m['positive_candidates']} positive)")
    for name, e in report["csvs"].items():
        if e["status"] == "ok":
            what = {"candidates.csv": f"{e['rows']:,} candidates ({e['nodules']:,} nodules)",
                    "annotations.csv": f"{e['rows']:,} nodules",
                    }.get(name, f"{e['rows']:,} nodules ({e['nodules']:,} malignant)")
            lines.append(f"  {name:32s} ok: {what} in {e['series']:,} series  ({e['path']})")
        elif e["status"] == "missing":
            need = "" if CSV_FILES[name][1] else "  (needed in chapter 14 only)"
            lines.append(f"  {name:32s} MISSING{need}")
        else:
            lines.append(f"  {name:32s} UNREADABLE: {e['error']}")
    missing = [n for n, e in report["subsets"].items() if e["status"] == "missing"]
    if missing:
        lines.append(f"  missing: {', '.join(missing)}")
    for name, e in report["subsets"].items():
        if e["status"] == "missing":
            if "note" in e:
                lines.append(f"  {name:9s} missing: {e['note']}")
            continue
        text = f"  {name:9s} {e['status']}: {e['series']} series, {human_size(e['bytes'])}"
        if e.get("raw_without_mhd"):
            text += f", {e['raw_without_mhd']} voxel files without an .mhd header"
        lines.append(text)
    for bad in report["bad_files"]:
        lines.append(f"  BROKEN {bad['error']}")
    lines.append(f"  series: {report['series_on_disk']} on disk ({report['series_ok']} readable), "
                 f"{report['series_trainable']} with candidates; "
                 f"{report['series_referenced']} referenced by the CSVs")
    if report["series_missing"] and report["series_ok"]:
        lines.append(f"  {report['series_missing']} referenced series are not on disk: their "
                     "candidates are skipped (fine: fewer subsets, less data)")
    if report["series_not_in_candidates"]:
        lines.append(f"  {report['series_not_in_candidates']} series on disk have no candidate "
                     "in candidates.csv")
    lines += [f"  note: {n}" for n in report["notes"]]
    lines.append(report["verdict"])
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--synthetic", action="store_true",
                   help="check the built-in synthetic sample (generated first if absent)")
    args = p.parse_args(argv)
    train = "python ch10_luna/train_cls.py" + (" --synthetic" if args.synthetic else "") + (
        f" --data-dir {args.data_dir}" if args.data_dir else "")
    if args.synthetic:
        folder = data_root(args.data_dir) / "synthetic" / "luna"
        if not (folder / MARKER).exists():
            print(f"generating the synthetic LUNA sample in {folder} (once) ...")
            generate_sample(folder)
    else:
        folder = luna_dir(args.data_dir)
    report = check_luna(folder, train)
    print("\n".join(format_report(report)))
    return report


if __name__ == "__main__":
    raise SystemExit(0 if run_cli(main)["usable"] else 1)
