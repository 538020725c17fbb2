"""check_fp_rate.py: recall, false positives per CT and precision over a threshold sweep."""
import json

import imageio.v3 as iio
import numpy as np
import pytest

from ch13_segment.check_fp_rate import SWEEP, main
from ch13_segment.nodule_analysis import (
    BENIGN,
    Annotation,
    Detection,
    analysis_document,
    match_and_score,
    match_detections,
)
from common.errors import DataError, run_cli
from common.files import write_json


def detection(xyz, p):
    return Detection(tuple(map(float, xyz)), (0.0, 0.0, 0.0), p, None)


def hand_series():
    """Two CTs, 4 nodules (one a complete miss), 9 candidates at known P(nodule).

    CT a: n1 found twice (0.9, 0.3), n2 once (0.45), n3 by nothing; false positives 0.7, 0.2.
    CT b: n4 (20 mm) found at 0.55 and at 0.6 (13 mm away: 0.65 diameters); false positives
    0.95 and 0.99, the latter 14 mm away: 0.7 diameters, just outside the match.
    """
    a_nodules = [Annotation((0.0, 0.0, 0.0), 10.0, True), Annotation((100.0, 0.0, 0.0), 10.0,
                                                                      False),
                 Annotation((200.0, 0.0, 0.0), 10.0, False)]
    a_found = [detection((1, 0, 0), 0.9), detection((0, 2, 0), 0.3),
               detection((101, 0, 0), 0.45), detection((50, 50, 50), 0.7),
               detection((-50, 0, 0), 0.2)]
    b_nodules = [Annotation((0.0, 0.0, 0.0), 20.0, True)]
    b_found = [detection((5, 0, 0), 0.55), detection((30, 30, 30), 0.95),
               detection((0, 0, 13), 0.6), detection((0, 0, 14), 0.99)]
    return [("1.2.3.1", a_found, a_nodules), ("1.2.3.2", b_found, b_nodules)]


def write_hand_json(path):
    """The hand-made CTs through nodule_analysis.write_json, the writer the real runs use."""
    results = [{"series_uid": uid, "shape": (9, 8, 7), "segmented_voxels": 10,
                "timing": {"load": 0.0}, "annotations": a, "detections": d,
                "matches": match_detections(d, a)} for uid, d, a in hand_series()]
    table = sum(match_and_score(d, a) for _uid, d, a in hand_series())
    models = {"seg_model": "s", "cls_model": "c", "malignancy_model": None}
    return write_json(path, analysis_document(results, table, models, 2.0))


# threshold -> (nodules found of 4, false positives over 2 CTs, matching candidates passing)
EXPECTED = {0.1: (3, 4, 5), 0.2: (3, 3, 5), 0.3: (3, 3, 4), 0.4: (3, 3, 4), 0.5: (2, 3, 3),
            0.6: (1, 3, 1), 0.7: (1, 2, 1), 0.8: (1, 2, 1), 0.9: (0, 2, 0)}


def test_sweep_on_hand_made_analysis(tmp_path, capsys):
    path = write_hand_json(tmp_path / "analysis.json")
    result = main(["--analysis", str(path), "--out", str(tmp_path / "out")])
    rows = result["rows"]
    assert [r["threshold"] for r in rows] == list(SWEEP) == sorted(EXPECTED)
    for r in rows:
        found, fp, tp = EXPECTED[r["threshold"]]
        assert (r["found"], r["nodules"], r["false_positives"]) == (found, 4, fp), r
        assert r["recall"] == found / 4 and r["fp_per_ct"] == fp / 2
        assert r["precision"] == tp / (tp + fp)
    assert result["complete_misses"] == 1 and result["n_candidates"] == 9
    # At threshold 0 every candidate passes: the 3 findable nodules, 2 false positives per CT.
    assert (result["curve"][-1]["threshold"], result["curve"][-1]["recall"],
            result["curve"][-1]["fp_per_ct"]) == (0.0, 0.75, 2.0)
    printed = capsys.readouterr().out
    assert "1 complete miss (" in printed and "at most 3 of 4" in printed
    (marked,) = [line for line in printed.splitlines() if "operating point" in line]
    assert marked.split()[0] == "0.50" and "(2/4)" in marked and "1.50" in marked


def test_operating_point_agrees_with_the_analysis_table(tmp_path):
    """At P(nodule) > 0.5 the counts are the book's table: detected nodules and Non-nodule FPs."""
    table = sum(match_and_score(d, a) for _uid, d, a in hand_series())
    result = main(["--analysis", str(write_hand_json(tmp_path / "a.json")),
                   "--thresholds", "0.25", "--out", str(tmp_path)])
    assert [r["threshold"] for r in result["rows"]] == [0.25, 0.5]      # the operating point too
    point = result["rows"][1]
    assert point["found"] == table[1:, BENIGN:].sum() == 2
    assert point["false_positives"] == table[0, BENIGN:].sum() == 3


def test_froc_png_is_written(tmp_path):
    out = tmp_path / "figures"
    result = main(["--analysis", str(write_hand_json(tmp_path / "a.json")), "--out", str(out)])
    assert result["png"] == out / "froc.png"
    image = iio.imread(result["png"])
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 400
    assert np.ptp(image[..., :3]) > 100                       # drawn, not a blank canvas


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"\x89PNG\r\n\x1a\n not json at all", "not JSON"),
    (b'{"epoch": 1, "phase": "trn"}', "not an analysis file"),
    (b'{"series": [{"series_uid": "1.2", "annotations": []}]}', "no 'candidates'"),
    (b'{"series": []}', "holds no series"),
])
def test_bad_analysis_file_is_one_error_line(tmp_path, capsys, content, message):
    path = tmp_path / "analysis.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as caught:
        main(["--analysis", str(path), "--out", str(tmp_path)])
    assert "\n" not in str(caught.value)
    with pytest.raises(SystemExit) as code:                     # as the command line shows it
        run_cli(main, ["--analysis", str(path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.startswith("error: --analysis") and err.count("\n") == 1
    assert not (tmp_path / "froc.png").exists()


def test_runs_the_analysis_itself_and_reads_its_json(tiny_models, seg_luna, tmp_path,
                                                     one_torch_thread):
    seg, cls, _mal = tiny_models
    saved = tmp_path / "analysis.json"
    live = main(["--no-compile",
                 "--run-validation", "--include-train", "--data-dir", str(seg_luna.root),
                 "--seg-model", seg, "--cls-model", cls, "--batch-size", "8",
                 "--json", str(saved), "--out", str(tmp_path / "live")])
    read = main(["--analysis", str(saved), "--out", str(tmp_path / "read")])
    assert live["rows"] == read["rows"] and live["curve"] == read["curve"]
    assert live["n_ct"] == 3 and live["n_nodules"] == 14 and live["n_candidates"] == 3
    table = np.array(json.loads(saved.read_text())["table"])
    point = next(r for r in live["rows"] if r["threshold"] == 0.5)
    assert point["found"] == table[1:, BENIGN:].sum()
    assert point["false_positives"] == table[0, BENIGN:].sum()
    assert (tmp_path / "live" / "froc.png").exists() and (tmp_path / "read" / "froc.png").exists()
