"""Chapters 9-12 side scripts: check_data, vis, f1_plot and run_all, on a 3-CT synthetic sample."""
import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from ch10_luna import check_data, f1_plot, run_all, train_cls, vis
from ch10_luna.augment import BOOK_AUGMENTATION, augment_spec
from ch10_luna.dsets import Candidate, find_luna, read_candidates
from ch10_luna.synthetic import MARKER, generate_sample
from common.data import REPO_ROOT
from common.errors import DataError


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    """A data root holding synthetic/luna: 3 CTs in subset0..2 (about 2 s to generate)."""
    root = tmp_path_factory.mktemp("data")
    generate_sample(root / "synthetic" / "luna", n_series=3, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def sample(sample_root):
    return sample_root / "synthetic" / "luna"


@pytest.fixture
def broken(sample, tmp_path):
    """A copy that looks like real LUNA16 with one of each fault: returns (folder, uids)."""
    folder = tmp_path / "luna"
    shutil.copytree(sample, folder)
    (folder / MARKER).unlink()                              # no longer the synthetic sample
    (folder / "candidates.csv").unlink()                    # a missing CSV
    lines = (folder / "annotations.csv").read_text().splitlines()
    fields = lines[2].split(",")
    lines[2] = ",".join([fields[0], "abc", *fields[2:]])    # line 3: a coordinate that is no number
    (folder / "annotations.csv").write_text("\n".join(lines) + "\n")
    (folder / "subset5").mkdir()                            # an empty subset folder
    raw1 = next((folder / "subset1").glob("*.raw"))
    with open(raw1, "r+b") as f:                            # a truncated download
        f.truncate(raw1.stat().st_size // 2)
    next((folder / "subset2").glob("*.raw")).unlink()       # a header without its voxels
    (folder / "seg-lungs-LUNA16").mkdir()
    return folder


# ----------------------------------------------------------------------------- check_data
def test_check_data_counts_match_the_sample(sample):
    marker = json.loads((sample / MARKER).read_text())
    report = check_data.check_luna(sample)
    cand, ann = report["csvs"]["candidates.csv"], report["csvs"]["annotations.csv"]
    assert (cand["status"], ann["status"]) == ("ok", "ok")
    assert cand["rows"] == marker["candidates"]
    assert cand["nodules"] == marker["positive_candidates"]
    assert ann["rows"] == marker["nodules"] and ann["series"] == marker["series"] == 3
    assert report["csvs"]["annotations_with_malignancy.csv"]["rows"] == marker["nodules"]
    assert [report["subsets"][f"subset{i}"]["status"] for i in range(10)] == \
        ["present"] * 3 + ["missing"] * 7
    assert all(report["subsets"][f"subset{i}"]["series"] == 1 and
               report["subsets"][f"subset{i}"]["bytes"] > 1_000_000 for i in range(3))
    assert report["series_on_disk"] == report["series_ok"] == report["series_trainable"] == 3
    assert report["series_missing"] == 0 and report["bad_files"] == []
    assert report["usable"] and report["verdict"].startswith("USABLE")
    assert report["download"] is None


def test_check_data_reports_every_fault(broken):
    report = check_data.check_luna(broken)
    assert report["csvs"]["candidates.csv"]["status"] == "missing"
    assert report["csvs"]["annotations.csv"]["status"] == "unreadable"
    assert "line 3: coordX is 'abc'" in report["csvs"]["annotations.csv"]["error"]
    assert report["subsets"]["subset5"]["status"] == "empty"
    # Both broken series are listed, not just the first one met.
    assert sorted(b["subset"] for b in report["bad_files"]) == [1, 2]
    errors = {b["subset"]: b["error"] for b in report["bad_files"]}
    assert "truncated" in errors[1] and "missing" in errors[2]
    assert report["series_on_disk"] == 3 and report["series_ok"] == 1
    assert report["ignored"] == ["seg-lungs-LUNA16"]
    assert not report["usable"]
    assert report["download"] == ("python -m common.data download luna-csv luna-subset1 "
                                  "luna-subset2 luna-subset5")
    text = "\n".join(check_data.format_report(report))
    assert "seg-lungs-LUNA16/ ignored" in text and text.splitlines()[-1].startswith("NOT USABLE")
    # The training loader refuses the same folder.
    with pytest.raises(DataError):
        find_luna(broken)


def test_check_data_on_a_missing_folder(tmp_path):
    report = check_data.check_luna(tmp_path / "luna")
    assert not report["exists"] and not report["usable"]
    assert report["download"] == "python -m common.data download luna-csv luna-subset0"


def test_check_data_exit_codes(sample_root, broken):
    script = str(REPO_ROOT / "ch10_luna" / "check_data.py")
    good = subprocess.run([sys.executable, script, "--data-dir", str(sample_root), "--synthetic"],
                          capture_output=True, text=True, timeout=120)
    bad = subprocess.run([sys.executable, script, "--data-dir", str(broken)],
                         capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert "USABLE" in good.stdout.splitlines()[-1]
    assert bad.returncode == 1, bad.stderr
    assert ("Get the data with: python -m common.data download luna-csv luna-subset1 "
            "luna-subset2 luna-subset5") in bad.stdout.splitlines()[-1]


@pytest.mark.realdata
def test_check_data_counts_the_books_annotations(book_file, tmp_path):
    book_csvs = book_file("part2/luna/annotations.csv").parent
    (tmp_path / "part2").mkdir()
    (tmp_path / "part2" / "luna").symlink_to(book_csvs)     # where `download luna-csv` puts them
    report = check_data.check_luna(tmp_path / "luna")
    ann = report["csvs"]["annotations.csv"]
    assert (ann["rows"], ann["series"]) == (1_186, 601)     # the book's counts
    assert not report["usable"]


# ----------------------------------------------------------------------------- vis
def test_positive_samples_keeps_nodules_in_order():
    cands = [Candidate(True, 20.0, "a", (0, 0, 0)), Candidate(False, 0.0, "a", (1, 1, 1)),
             Candidate(True, 5.0, "b", (2, 2, 2)), Candidate(True, 0.0, "c", (3, 3, 3))]
    assert vis.positive_samples(cands) == [cands[0], cands[2], cands[3]]
    assert vis.positive_samples(cands, limit=2) == [cands[0], cands[2]]


def test_vis_default_shows_the_largest_nodule(sample_root, tmp_path):
    result = vis.main(["--data-dir", str(sample_root), "--synthetic", "--out", str(tmp_path)])
    path = result["path"]
    assert path.parent == tmp_path and path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["candidate"].is_nodule and result["index"] == 0
    assert result["candidate"] == result["positives"][0]
    assert result["positives"][0].diameter_mm == max(c.diameter_mm for c in result["positives"])


def test_vis_with_a_chosen_series_and_index(sample_root, sample, tmp_path):
    luna = find_luna(sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        candidates = read_candidates(luna)
    uid = sorted(luna.series)[1]
    mine = vis.series_candidates(candidates, uid)
    index = len(mine) - 1                                   # a small non-nodule, last in order
    result = vis.main([uid, "--index", str(index), "--data-dir", str(sample_root), "--synthetic",
                       "--out", str(tmp_path)])
    assert result["candidate"] == mine[index] and not result["candidate"].is_nodule
    assert result["path"].name == f"candidate_{uid}_{index}.png" and result["path"].exists()
    with pytest.raises(DataError, match="--index"):
        vis.pick_candidate(candidates, uid, len(mine))
    with pytest.raises(DataError, match="not on disk"):
        vis.main(["1.2.3", "--data-dir", str(sample_root), "--synthetic", "--out", str(tmp_path)])


@pytest.mark.parametrize("is_nodule", [True, False])
def test_show_candidate_uses_the_shared_window_and_colours(is_nodule):
    from matplotlib.patches import Rectangle

    from common.ct import Ct
    from common.figures import FILTERED_COLOR, LABEL_COLOR, LUNG_WINDOW_HU

    ct = Ct(np.full((40, 64, 64), -800, dtype=np.int16), (0, 0, 0), (0.7, 0.7, 2.5), np.eye(3))
    fig = vis.show_candidate(ct, np.zeros((32, 48, 48), dtype=np.float32), (20, 32, 32), "t",
                             is_nodule)
    assert all(ax.images[0].get_clim() == LUNG_WINDOW_HU for ax in fig.axes)
    boxes = [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)]
    expected = LABEL_COLOR if is_nodule else FILTERED_COLOR
    assert len(boxes) == 3 and all(b.get_edgecolor()[:3] == expected for b in boxes)
    [legend] = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legend.legend_handles[0].get_markeredgecolor() == expected


# ----------------------------------------------------------------------------- f1_plot
def test_scores_on_hand_values():
    s = f1_plot.scores(0.5, 0.5)
    assert {k: float(v) for k, v in s.items()} == {"f1": 0.5, "avg": 0.5, "min": 0.5,
                                                   "mult": 0.25, "sqrt": 0.5}
    s = f1_plot.scores(1.0, 0.0)
    assert float(s["f1"]) == 0.0 and float(s["min"]) == 0.0 and float(s["avg"]) == 0.5
    assert float(f1_plot.f1(0.2, 0.8)) == pytest.approx(2 * 0.16 / 1.0)


def test_f1_is_guarded_at_zero_and_symmetric():
    p, r = np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 1, 11))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # no 0/0 RuntimeWarning
        f = f1_plot.f1(p, r)
    assert f[0, 0] == 0.0 and np.isfinite(f).all()
    np.testing.assert_allclose(f, f.T)
    inside = p + r > 0
    np.testing.assert_allclose(f[inside], (2 * p * r / np.where(inside, p + r, 1))[inside])
    # F1 lies between min and the average everywhere: a harmonic mean.
    s = f1_plot.scores(p, r)
    assert (s["min"] <= f + 1e-12).all() and (f <= s["avg"] + 1e-12).all()


def test_f1_plot_writes_the_png(tmp_path):
    path = f1_plot.main(["--out", str(tmp_path)])
    assert path == tmp_path / "f1_vs_other_scores.png" and path.stat().st_size > 20_000


# ----------------------------------------------------------------------------- run_all
def test_run_all_dry_run_lists_the_books_runs(capsys):
    commands = run_all.main(["--dry-run", "--synthetic", "--epoch-size", "64", "--device", "cpu"])
    names = [name for name, _ in commands]
    assert names == ["unbalanced", "balanced", "flip", "offset", "scale", "rotate", "noise",
                     "fully-augmented"]
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 8
    assert printed[0] == ("[1/8] python ch10_luna/train_cls.py --tb-prefix p2ch11 --epochs 1 "
                          "--no-balanced --synthetic --epoch-size 64 --device cpu unbalanced")
    parsed = {name: train_cls.parse_args(argv) for name, argv in commands}  # valid train_cls argv
    assert [parsed[n].epochs for n in names] == [1, 20, 10, 10, 10, 10, 10, 20]
    assert not parsed["unbalanced"].balanced and all(parsed[n].balanced for n in names[1:])
    assert all(a.synthetic and a.epoch_size == 64 and a.device == "cpu" for a in parsed.values())
    spec = {n: augment_spec(BOOK_AUGMENTATION, a.augment) for n, a in parsed.items()}
    assert not spec["balanced"].active and spec["flip"].flip and not spec["flip"].rotate
    assert spec["noise"].noise == 25.0 and spec["noise"].offset == 0.0
    assert spec["fully-augmented"] == BOOK_AUGMENTATION
    assert {a.comment for a in parsed.values()} == set(names)


def test_run_all_tabulates_each_runs_last_epoch_even_when_interrupted(monkeypatch, capsys):
    seen = []

    def fake_main(argv):
        seen.append(argv)
        if len(seen) == 3:
            raise KeyboardInterrupt                         # the reader stops the third run
        history = [{"epoch": e, "val": {"loss/all": 1 / e, "correct/neg": 90.0 + e,
                                         "correct/pos": 80.0, "pr/precision": 0.25,
                                         "pr/recall": 0.8, "pr/f1_score": e / 10}}
                   for e in range(1, int(argv[argv.index("--epochs") + 1]) + 1)]
        return None, history

    monkeypatch.setattr(train_cls, "main", fake_main)
    with pytest.raises(KeyboardInterrupt):
        run_all.main(["--epochs", "3"])
    out = capsys.readouterr().out
    assert "validation, last epoch of each run (2 of 8)" in out
    table = out.splitlines()[-2:]                          # unbalanced (1 epoch), balanced (3)
    assert table[0].split() == ["unbalanced", "1", "1.0000", "91.0%", "80.0%", "0.2500",
                                "0.8000", "0.1000"]
    assert table[1].split() == ["balanced", "3", "0.3333", "93.0%", "80.0%", "0.2500",
                                "0.8000", "0.3000"]
    assert [argv[-1] for argv in seen] == ["unbalanced", "balanced", "flip"]
