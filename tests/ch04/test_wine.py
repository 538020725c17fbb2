"""Chapter 4.3: the wine table, its one-hot target, and the book's sulfur rule."""
import pytest
import torch

from ch04_data import wine
from common.errors import DataError


def test_one_hot_puts_a_single_one_at_the_label():
    target = torch.tensor([3, 9, 0, 6, 6])
    onehot = wine.one_hot(target)
    assert onehot.shape == (5, 10)
    torch.testing.assert_close(onehot.sum(dim=1), torch.ones(5))
    assert torch.equal(onehot.argmax(dim=1), target)


def test_standardize_gives_zero_mean_unit_std_per_column():
    data = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)) * 7 + 100
    normalized = wine.standardize(data)
    torch.testing.assert_close(normalized.mean(dim=0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalized.std(dim=0), torch.ones(4), atol=1e-4, rtol=0)


def test_sulfur_rule_counts_on_a_hand_made_table():
    data = torch.zeros(4, 11)
    data[:, wine.TOTAL_SULFUR] = torch.tensor([100.0, 200.0, 120.0, 90.0])
    target = torch.tensor([7, 6, 4, 5])     # good, good, bad, bad
    rule = wine.sulfur_rule(data, target, threshold=150.0)   # predicts rows 0, 2, 3
    assert (rule["predicted"], rule["actual"], rule["matches"]) == (3, 2, 1)
    assert rule["precision"] == pytest.approx(1 / 3) and rule["recall"] == pytest.approx(1 / 2)


def test_a_table_that_is_not_the_wine_csv_is_a_data_error(tmp_path):
    path = tmp_path / "p1ch4" / "tabular-wine" / "winequality-white.csv"
    path.parent.mkdir(parents=True)
    path.write_text('"a";"b"\nx;y\n')
    with pytest.raises(DataError, match="no column 'total sulfur dioxide' where the book reads"):
        wine.main(["--data-dir", str(tmp_path), "--out", str(tmp_path)])


@pytest.fixture(scope="module")
def result(book_root, tmp_path_factory):
    root = book_root(wine.WINE_CSV, "wine")
    return wine.main(["--data-dir", str(root), "--out", str(tmp_path_factory.mktemp("wine"))])


@pytest.mark.realdata
def test_the_books_numbers(result):
    assert result["wineq"].shape == (4898, 12) and result["wineq"].dtype == torch.float32
    assert result["columns"][6] == "total sulfur dioxide" and result["columns"][-1] == "quality"
    assert result["counts"] == {"bad": 20, "mid": 3818, "good": 1060}
    assert round(result["mid_sulfur"], 2) == 141.83      # where the book's threshold comes from
    rule = result["rule"]
    assert (rule["predicted"], rule["actual"], rule["matches"]) == (2727, 3258, 2018)
    assert round(rule["precision"], 3) == 0.740 and round(rule["recall"], 3) == 0.619


@pytest.mark.realdata
def test_the_exact_mid_mean_threshold_predicts_the_same(result):
    data, target = result["wineq"][:, :-1], result["wineq"][:, -1].long()
    assert wine.sulfur_rule(data, target, result["mid_sulfur"]) | {"threshold": 0} == \
        result["rule"] | {"threshold": 0}


@pytest.mark.realdata
def test_one_hot_and_standardized_table(result):
    onehot, quality = result["target_onehot"], result["wineq"][:, -1].long()
    assert onehot.shape == (4898, 10)
    torch.testing.assert_close(onehot.sum(dim=1), torch.ones(4898))
    assert torch.equal(onehot.argmax(dim=1), quality)
    normalized = result["data_normalized"]
    torch.testing.assert_close(normalized.mean(dim=0), torch.zeros(11), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalized.std(dim=0), torch.ones(11), atol=1e-4, rtol=0)


@pytest.mark.realdata
def test_writes_the_png(result):
    assert result["png"].name == "wine.png"
    assert result["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
