"""evaluate_luna.py end to end: a nodule_analysis.py --json file and a submission CSV scored with
known answers, the defaults from a data root, and bad inputs as one line and exit status 2."""
import csv
import json
import math

import numpy as np
import pytest

from ch10_luna.synthetic import EXCLUDED_CSV, generate_sample
from ch13_segment.evaluate_luna import main, read_submission
from common.errors import run_cli

A, B, C = "1.2.3.1", "1.2.3.2", "1.2.3.3"


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def candidate(xyz, p):
    """One candidate as nodule_analysis.py --json writes it."""
    return {"center_xyz": list(xyz), "center_irc": [0.0, 0.0, 0.0], "prob_nodule": p,
            "prob_malignant": None, "matched_annotation": None}


@pytest.fixture
def case(tmp_path):
    """Scan A: nodules of 8 and 12 mm, an unsized excluded finding, 5 marks; scan B: a 6 mm
    nodule never hit and one false positive; scan C: nothing (only named by series.csv)."""
    write_csv(tmp_path / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ",
                                             "diameter_mm"],
              [[A, 10, 20, 30, 8], [A, -40, 0, 0, 12], [B, 0, 0, 0, 6], ["9.9", 0, 0, 0, 9]])
    write_csv(tmp_path / "excluded.csv", ["seriesuid", "coordX", "coordY", "coordZ",
                                          "diameter_mm"], [[A, 60, 60, 0, -1]])
    marks_a = [candidate((11, 20, 30), 0.9),      # hits the 8 mm nodule
               candidate((-40, 5, 0), 0.4),       # 5 mm from the 12 mm one: a hit
               candidate((60, 63, 0), 0.8),       # 3 mm from the excluded finding: ignored
               candidate((100, 0, 0), 0.7),       # a false positive
               candidate((-40, 6, 0), 0.95)]      # exactly on the 12 mm radius: a false positive
    doc = {"seg_model": "s", "cls_model": "c", "series": [
        {"series_uid": A, "annotations": [], "candidates": marks_a},
        {"series_uid": B, "annotations": [], "candidates": [candidate((50, 0, 0), 0.5)]}]}
    (tmp_path / "analysis.json").write_text(json.dumps(doc))
    (tmp_path / "series.csv").write_text(f"{A}\n{B}\n{C}\n")
    return tmp_path


def flags(case, *extra):
    return ["--annotations", str(case / "annotations.csv"), "--excluded",
            str(case / "excluded.csv"), "--out", str(case / "out"), "--bootstrap", "40", *extra]


def test_a_json_analysis_scored_with_known_answers(case, capsys):
    # Entries (probability, hit?): .95 FP, .9 hit, .7 FP, .5 FP, .4 hit; 3 nodules, 2 scans:
    # FP/scan 0.5 -> 1/3 found, 1.5 -> 2/3. Sensitivities 0, 0, 1/3, 1/3, 2/3 x 3: CPM 8/21.
    r = main([str(case / "analysis.json"), *flags(case)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("CPM 0.380952 ")
    assert r["cpm"] == pytest.approx(8 / 21)
    np.testing.assert_allclose(r["sensitivities"], [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert (r["scans"], r["nodules"], r["found"], r["false_positives"], r["ignored"]) == \
        (2, 3, 2, 3, 1)
    assert out[1].startswith("sensitivity at FP/scan  1/8: 0.000  1/4: 0.000  1/2: 0.333")
    assert out[2].startswith("scans 2, nodules 3, found 2, false positives 3 (1.50 per scan), "
                             "ignored marks 1")
    b = r["bootstrap"]
    assert b["resamples"] == 40 and b["cpm_lower"] <= r["cpm"] <= b["cpm_upper"]
    assert r["png"] == case / "out" / "froc_analysis.png"
    assert r["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["submission"] == case / "out" / "analysis_submission.csv"
    marks = read_submission(r["submission"])
    assert sorted(marks) == [A, B] and len(marks[A][1]) == 5


def test_the_submission_csv_scores_the_same_and_series_adds_empty_scans(case, capsys):
    first = main([str(case / "analysis.json"), *flags(case)])
    csv_path = first["submission"]
    again = main([str(csv_path), *flags(case)])            # its scans: the two it names
    assert again["cpm"] == first["cpm"] and again["series"] == [A, B]
    assert "submission" not in again                        # a CSV is not written back
    # Scan C adds no mark and no nodule, only a scan to divide by: FP/scan 1/3, 2/3, 1, so
    # 2/3 are found at exactly 1 FP/scan: CPM (1/3 + 4 x 2/3) / 7 = 3/7.
    with_c = main([str(csv_path), *flags(case, "--series", str(case / "series.csv"))])
    cpm_lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("CPM ")]
    assert cpm_lines[-1].startswith("CPM 0.428571 ")
    assert with_c["cpm"] == pytest.approx(3 / 7) and with_c["scans"] == 3
    assert main([str(case / "analysis.json"), *flags(case, "--series",
                                                       str(case / "series.csv"))])["cpm"] == \
        with_c["cpm"]


def test_rows_in_any_order_give_the_same_cpm(case):
    rows = list(csv.reader(open(main([str(case / "analysis.json"),
                                      *flags(case)])["submission"])))
    shuffled = write_csv(case / "shuffled.csv", rows[0], rows[1:][::-1])
    assert main([str(shuffled), *flags(case)])["cpm"] == pytest.approx(8 / 21)


def test_defaults_come_from_the_data_roots_sample(tmp_path, capsys):
    sample = generate_sample(tmp_path / "root" / "synthetic" / "luna", n_series=2, seed=3,
                             negatives=(40, 60), progress=False)
    nodules = list(csv.DictReader(open(sample / "annotations.csv")))
    excluded = list(csv.DictReader(open(sample / EXCLUDED_CSV)))
    assert excluded                                        # the sample has findings to ignore
    rows = [[n["seriesuid"], n["coordX"], n["coordY"], n["coordZ"], 0.9] for n in nodules]
    rows += [[e["seriesuid"], e["coordX"], e["coordY"], e["coordZ"], 0.95] for e in excluded]
    path = write_csv(tmp_path / "perfect.csv", ["seriesuid", "coordX", "coordY", "coordZ",
                                                "probability"], rows)
    r = main([str(path), "--data-dir", str(tmp_path / "root"), "--out", str(tmp_path / "o"),
              "--bootstrap", "10"])
    assert "synthetic sample" in capsys.readouterr().out
    assert r["cpm"] == 1.0 and r["ignored"] == len(excluded) and r["false_positives"] == 0


def error_line(capsys, argv):
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    return err


def test_bad_inputs_are_one_line_and_write_nothing(case, capsys):
    analysis = str(case / "analysis.json")
    header = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    nan_json = case / "nan.json"
    nan_json.write_text(json.dumps({"series": [{"series_uid": A, "candidates": [
        candidate((math.nan, 0, 0), 0.5)]}]}))
    bad = {
        "missing.csv": None,
        "no_probability.csv": (["seriesuid", "coordX", "coordY", "coordZ"], [[A, 1, 2, 3]]),
        "nan.csv": (header, [[A, 1, "nan", 3, 0.5]]),
        "words.csv": (header, [[A, 1, 2, 3, "high"]]),
        "unknown.csv": (header, [[A, 1, 2, 3, 0.5], ["7.7.7", 1, 2, 3, 0.5]]),
        "short.csv": (header, [[A, 1, 2]]),
    }
    for name, content in bad.items():
        if content is not None:
            write_csv(case / name, *content)
    expect = {"missing.csv": "no such file", "no_probability.csv": "no column probability",
              "nan.csv": "coordY is 'nan', not a finite number",
              "words.csv": "probability is 'high'", "unknown.csv": "7.7.7",
              "short.csv": "3 fields"}
    for name, what in expect.items():
        series = ["--series", str(case / "series.csv")] if name == "unknown.csv" else []
        err = error_line(capsys, [str(case / name), *flags(case, *series)])
        assert name in err and what in err, err
    assert "candidate 0: center_xyz" in error_line(capsys, [str(nan_json), *flags(case)])
    (case / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    assert "not a text file" in error_line(capsys, [str(case / "binary.csv"), *flags(case)])
    # Bad reference files.
    write_csv(case / "nan_d.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
              [[A, 1, 2, 3, "NaN"]])
    err = error_line(capsys, [analysis, *flags(case, "--annotations", str(case / "nan_d.csv"))])
    assert "--annotations" in err and "diameter_mm is 'NaN'" in err
    write_csv(case / "zero.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
              [[A, 1, 2, 3, 0]])
    err = error_line(capsys, [analysis, *flags(case, "--excluded", str(case / "zero.csv"))])
    assert "--excluded" in err and "expected > 0 or -1" in err
    write_csv(case / "other.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
              [["5.5.5", 1, 2, 3, 5]])
    err = error_line(capsys, [analysis, *flags(case, "--annotations", str(case / "other.csv"))])
    assert "no annotated nodule in the 2 scans" in err
    (case / "empty.csv").write_text("seriesuid\n")
    assert "lists no series" in error_line(
        capsys, [analysis, *flags(case, "--series", str(case / "empty.csv"))])
    (case / "twice.csv").write_text(f"{A}\n{B}\n{A}\n")
    assert "listed twice" in error_line(
        capsys, [analysis, *flags(case, "--series", str(case / "twice.csv"))])
    assert not (case / "out").exists()                      # no figure, no submission


def test_reads_what_nodule_analysis_writes(tiny_models, seg_luna, tmp_path, one_torch_thread):
    from ch13_segment.froc import evaluate, score_scan
    from ch13_segment.nodule_analysis import main as analysis_main

    seg, cls, _mal = tiny_models
    saved = tmp_path / "analysis.json"
    live = analysis_main(["--no-compile", "--run-validation", "--include-train", "--data-dir",
                          str(seg_luna.root), "--seg-model", seg, "--cls-model", cls,
                          "--batch-size", "8", "--json", str(saved)])
    r = main([str(saved), "--data-dir", str(seg_luna.root), "--out", str(tmp_path / "out"),
              "--bootstrap", "0"])
    nodules = {}
    for row in csv.DictReader(open(seg_luna.annotations_csv)):
        nodules.setdefault(row["seriesuid"], []).append(
            ([float(row[k]) for k in ("coordX", "coordY", "coordZ")], float(row["diameter_mm"])))
    excluded = {}
    for row in csv.DictReader(open(seg_luna.root / EXCLUDED_CSV)):
        excluded.setdefault(row["seriesuid"], []).append(
            ([float(row[k]) for k in ("coordX", "coordY", "coordZ")], float(row["diameter_mm"])))
    scans = []
    for res in live["results"]:
        uid, dets = res["series_uid"], res["detections"]
        n, e = nodules.get(uid, []), excluded.get(uid, [])
        scans.append(score_scan([d.center_xyz for d in dets], [d.prob_nodule for d in dets],
                                [c for c, _ in n], [d for _, d in n], [c for c, _ in e],
                                [d for _, d in e]))
    direct = evaluate(scans, n_resamples=0)
    assert r["series"] == [res["series_uid"] for res in live["results"]]
    assert (r["cpm"], r["scans"], r["nodules"], r["marks_given"]) == \
        (direct["cpm"], 3, 14, sum(len(res["detections"]) for res in live["results"]))
    marks = read_submission(r["submission"])                   # the CSV holds the same marks
    for res in live["results"]:
        np.testing.assert_array_equal(marks[res["series_uid"]][0],
                                      [d.center_xyz for d in res["detections"]])


def test_lunas_own_layout_the_book_csvs_and_the_unzipped_evaluation_script(case, tmp_path,
                                                                             capsys):
    root = tmp_path / "root"
    (root / "part2" / "luna").mkdir(parents=True)                 # the book's CSV layout
    (root / "part2" / "luna" / "annotations.csv").write_bytes(
        (case / "annotations.csv").read_bytes())
    (root / "luna").mkdir()
    flags_ = ["--data-dir", str(root), "--out", str(tmp_path / "o"), "--bootstrap", "0"]
    err = error_line(capsys, [str(case / "analysis.json"), *flags_])
    assert "--excluded: no annotations_excluded.csv in" in err and "evaluationScript.zip" in err
    scripts = root / "luna" / "evaluationScript" / "annotations"  # evaluationScript.zip unpacked
    scripts.mkdir(parents=True)
    (scripts / "annotations_excluded.csv").write_bytes((case / "excluded.csv").read_bytes())
    r = main([str(case / "analysis.json"), *flags_])
    assert r["cpm"] == pytest.approx(8 / 21) and r["ignored"] == 1
    assert "synthetic" not in capsys.readouterr().out
