"""Chapter 6's exercises: network size and learning rate against linearity; the wine network."""
import numpy as np
import pytest
import torch
from torch import nn

from ch04_data.wine import WINE_CSV, load_wine
from ch05_learning import exercises_ch06 as ex
from ch05_learning import nn_fit, nn_linear
from tests.common.cli import assert_one_error_line, files_under, run_main
from tests.conftest import find_book_file


def test_the_quiet_loop_is_chapter_6s(capsys, one_torch_thread):
    t_c, t_u = nn_linear.batched_data()
    data = ((0.1 * t_u[:9], t_c[:9]), (0.1 * t_u[9:], t_c[9:]))
    runs = []
    for loop in (nn_linear.training_loop, ex.train_quietly):
        torch.manual_seed(3)
        model = nn_fit.seq_model(5)
        runs.append(loop(40, torch.optim.SGD(model.parameters(), lr=1e-3), model, nn.MSELoss(),
                         *data))
    assert runs[0] == runs[1]
    capsys.readouterr()


def test_a_grid_cell_is_nn_fits_run(tmp_path, capsys, one_torch_thread):
    chapter = nn_fit.main(["--epochs", "30", "--out", str(tmp_path)])
    cell = ex.grid_run(nn_fit.N_HIDDEN, 1e-3, 30, seed=0)
    assert (cell["train"], cell["val"]) == chapter["history"][-1][1:]
    capsys.readouterr()


def test_line_departure_is_the_rms_residual_of_the_best_line():
    x = torch.linspace(-2.0, 3.0, 41)
    assert ex.line_departure(x, 4 * x - 1) < 1e-6
    y = x ** 2
    residual = y.numpy() - np.polyval(np.polyfit(x.numpy(), y.numpy(), 1), x.numpy())
    assert ex.line_departure(x, y) == pytest.approx(np.sqrt((residual ** 2).mean()), rel=1e-5)


def test_did_not_fit_compares_with_predicting_the_mean():
    targets = torch.tensor([0.0, 2.0, 4.0, 6.0])          # variance 5
    assert ex.did_not_fit(5.0, targets) and ex.did_not_fit(2.6, targets)
    assert not ex.did_not_fit(2.5, targets) and not ex.did_not_fit(0.1, targets)


def test_trend_averages_the_cells_that_learned():
    rows = [{"hidden": 1, "lr": 0.1, "departure": 9.0, "unfit": True},
            {"hidden": 1, "lr": 0.01, "departure": 1.0, "unfit": False},
            {"hidden": 4, "lr": 0.1, "departure": 2.0, "unfit": False},
            {"hidden": 4, "lr": 0.01, "departure": 4.0, "unfit": False}]
    assert ex.trend(rows, "hidden") == {1: 1.0, 4: 3.0}
    assert ex.trend(rows, "lr") == {0.01: 2.5, 0.1: 2.0}
    assert ex.trend(rows[:1], "hidden") == {1: None}


def hand_made_grid(departure):
    """An exercise_1 answer whose cells have the departures departure(units, lr)."""
    rows = [{"hidden": h, "lr": lr, "train": 1.0, "val": 2.0, "departure": departure(h, lr),
             "range": 30.0, "unfit": False} for h in ex.HIDDEN for lr in ex.LRS]
    overfit = {"hidden": 100, "lr": 0.03, "history": [(1, 0.001, 9.0)], "train": 0.001,
               "val": 9.0, "train_idx": torch.arange(9)}
    return {"rows": rows, "by_hidden": ex.trend(rows, "hidden"), "by_lr": ex.trend(rows, "lr"),
            "overfit": overfit, "epochs": 10, "seed": 0}


@pytest.mark.parametrize("departure, words", [
    (lambda h, lr: h + 1000 * lr, "fewer units and a smaller learning rate"),
    (lambda h, lr: 1 / h + 1000 * lr, "more units and a smaller learning rate"),
    (lambda h, lr: 1 / h - lr, "more units and a larger learning rate"),
])
def test_the_verdict_follows_the_measured_departures(departure, words, capsys):
    ex.print_exercise_1(hand_made_grid(departure), [])
    out = capsys.readouterr().out
    assert f"verdict: {words} give a straighter output" in out
    assert "yes, clearly" in out


def test_the_overfit_run_centres_the_input_and_its_loss_falls(one_torch_thread):
    o = ex.overfit_run(60, seed=0, n_hidden=20)
    t_c, t_u = nn_linear.batched_data()
    assert len(o["history"]) == 60 and o["history"][-1][1] < 0.5 * o["history"][0][1]
    x, y = o["curve"]
    assert x[0] == ex.T_U_RANGE[0] and x[-1] == ex.T_U_RANGE[1] and y.shape == x.shape
    assert sorted(o["train_idx"].tolist() + o["val_idx"].tolist()) == list(range(11))


def test_the_synthetic_wine_table_reads_like_the_books(tmp_path):
    path = ex.write_synthetic_wine(tmp_path / "w.csv", n_rows=400, seed=1)
    table, columns = load_wine(path)
    assert table.shape == (400, 12) and columns[-1] == "quality"
    assert columns[:-1] == [name for name, _, _ in ex.WINE_COLUMNS]
    quality = table[:, -1]
    assert quality.min() >= 3 and quality.max() <= 9 and torch.equal(quality, quality.round())
    alcohol = columns.index("alcohol")
    assert torch.corrcoef(torch.stack([table[:, alcohol], quality]))[0, 1] > 0.3  # learnable
    again, _ = load_wine(ex.write_synthetic_wine(tmp_path / "w2.csv", n_rows=400, seed=1))
    assert torch.equal(table, again)


def test_seconds_per_epoch_times_the_asked_epochs_after_a_warm_up(monkeypatch):
    calls = []
    monkeypatch.setattr(ex, "train_quietly", lambda n, *args: calls.append(n))
    model = ex.wine_model(3)
    assert ex.seconds_per_epoch(model, torch.zeros(4, 3), torch.zeros(4, 1), n_epochs=7) >= 0
    assert calls == [1, 7]


def test_exercise_2_trains_and_counts(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setattr(ex, "TIMING_EPOCHS", 2)
    table, columns = load_wine(ex.write_synthetic_wine(tmp_path / "w.csv", n_rows=500))
    a = ex.exercise_2(table, columns, n_epochs=40, seed=0)
    n_val = int(0.2 * 500)
    assert a["features"] == 11 and a["parameters"] == 11 * 13 + 13 + 13 + 1
    assert a["predicted"].shape == a["true"].shape == (n_val,)
    assert a["history"][-1][1] < 0.2 * a["history"][0][1]
    t = a["timings"]
    assert (t["thermometer"]["samples"], t["thermometer"]["parameters"]) == (9, 40)
    assert (t["wine"]["samples"], t["wine"]["parameters"]) == (500 - n_val, 170)
    assert t["wine, 100 units"]["parameters"] == 11 * 100 + 100 + 100 + 1
    expected = float(((a["true"] - table[a["train_idx"], -1].mean()) ** 2).mean())
    assert a["baseline"] == pytest.approx(expected)


def test_main_on_the_synthetic_table(tmp_path, monkeypatch, capsys, one_torch_thread):
    monkeypatch.setattr(ex, "TIMING_EPOCHS", 2)
    monkeypatch.setattr(ex, "WINE_ROWS", 300)
    answers = ex.main(["--epochs", "5", "--overfit-epochs", "5", "--wine-epochs", "3",
                       "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert sorted(answers) == [1, 2] and answers[2]["synthetic"]
    for label in ("Exercise 6.1", "a. which changes make the output more linear?", "by size:",
                  "b. can it be made to overfit?", "Exercise 6.2", "SYNTHETIC wine table",
                  "a. time per epoch", "b. what drives it", "c. does the loss fall?",
                  "d. how to graph it"):
        assert label in out
    assert files_under(tmp_path / "run") == ["linearity_grid.png", "overfit.png",
                                             "synthetic-winequality-white.csv",
                                             "wine_network.png"]
    assert len(answers[1]["rows"]) == len(ex.HIDDEN) * len(ex.LRS)
    assert answers[2]["rows"] == 300


@pytest.mark.realdata
def test_main_reads_the_books_wine_table(tmp_path, monkeypatch, capsys, one_torch_thread):
    path = find_book_file(WINE_CSV)
    if path is None:
        pytest.skip("the book's wine table is absent: python -m common.data download wine")
    monkeypatch.setattr(ex, "TIMING_EPOCHS", 2)
    root = str(path).removesuffix(WINE_CSV)
    answers = ex.main(["--exercise", "2", "--wine-epochs", "2", "--data-dir", root,
                       "--out", str(tmp_path / "run")])
    assert not answers[2]["synthetic"] and answers[2]["rows"] == 4898
    assert answers[2]["timings"]["wine"]["samples"] == 4898 - int(0.2 * 4898)
    assert "SYNTHETIC" not in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--epochs", "--overfit-epochs", "--wine-epochs"])
def test_a_bad_flag_is_one_line(flag, tmp_path, capsys):
    code, err = run_main(ex.main, [flag, "0", "--out", tmp_path / "run"], capsys)
    assert_one_error_line(code, err, f"{flag} 0: must be at least 1")
    assert not (tmp_path / "run").exists()
