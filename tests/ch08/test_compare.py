"""compare.py: every variant trains, the chart and the table are written (book ch8)."""
import pytest

from ch08_convnets import compare
from common.errors import DataError


def test_compare_trains_every_variant_and_writes_chart_and_table(tiny_root, tmp_path, capsys):
    rows = compare.main(["--data-dir", str(tiny_root), "--synthetic", "--epochs", "1",
                         "--n-blocks", "2", "--device", "cpu", "--batch-size", "16",
                         "--out", str(tmp_path)])
    assert [r["name"] for r in rows] == list(compare.VARIANTS)
    by_name = {r["name"]: r for r in rows}
    assert by_name["baseline"]["params"] == by_name["l2 reg"]["params"] == 18_090   # the book's
    # Same Net, same seed, same batches: the L2 run's loss is the baseline's plus its penalty.
    assert by_name["l2 reg"]["losses"][0] > by_name["baseline"]["losses"][0]
    png, table = tmp_path / "accuracy_comparison.png", tmp_path / "accuracy_comparison.md"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = table.read_text()
    assert text.startswith("SYNTHETIC sample, 1 epochs")
    table_rows = [line.split("|") for line in text.splitlines() if line.startswith("| ")][1:]
    assert [cells[1].strip() for cells in table_rows] == list(compare.VARIANTS)
    assert [float(cells[5]) for cells in table_rows] == [round(r["val"], 3) for r in rows]
    assert "res deep" in capsys.readouterr().out


def test_table_shows_the_difference_from_the_book():
    row = {"name": "baseline", "model": "Net", "params": 18090, "train": 0.95, "val": 0.875,
           "book_train": 0.93, "book_val": 0.89, "seconds": 12.0}
    assert "| baseline | Net | 18,090 | 0.950 | 0.875 | 0.93 | 0.89 | -0.015 | 12 |" in \
        compare.table([row])


def test_check_refuses_the_synthetic_sample(tiny_root, tmp_path):
    with pytest.raises(DataError, match="real data"):
        compare.main(["--data-dir", str(tiny_root), "--synthetic", "--check", "--epochs", "0",
                      "--device", "cpu", "--out", str(tmp_path)])


def test_check_fails_far_from_the_book(tiny_root, tmp_path, monkeypatch):
    """--check exits 1 when a val accuracy is off by more than the tolerance."""
    monkeypatch.setattr(compare, "VARIANTS", {"baseline": compare.VARIANTS["baseline"]})
    real_root = tmp_path / "root"
    (real_root / "cifar-10-batches-py").mkdir(parents=True)
    for f in (tiny_root / "synthetic" / "cifar-10-batches-py").iterdir():
        (real_root / "cifar-10-batches-py" / f.name).symlink_to(f)   # stands in for CIFAR-10
    with pytest.raises(SystemExit) as e:
        compare.main(["--data-dir", str(real_root), "--check", "--epochs", "0",
                      "--device", "cpu", "--out", str(tmp_path / "out")])
    assert e.value.code == 1
