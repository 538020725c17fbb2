"""Chapter 5's exercise: the quadratic model, its loop, its learning rate and its validation."""
import math

import numpy as np
import pytest
import torch

from ch05_learning import exercises_ch05 as ex
from ch05_learning import optimizers
from ch05_learning.thermometer import model, thermometer_data
from tests.common.cli import assert_one_error_line, files_under, run_main


def split():
    t_c, t_u = thermometer_data()
    torch.manual_seed(0)
    train_idx, val_idx = optimizers.split_indices(11)
    t_un = 0.1 * t_u
    return (t_un[train_idx], t_c[train_idx]), (t_un[val_idx], t_c[val_idx])


def test_quadratic_model_on_hand_values():
    t = torch.tensor([0.0, 1.0, 2.0])
    assert ex.quadratic_model(t, 2.0, -1.0, 3.0).tolist() == [3.0, 4.0, 9.0]


def test_the_loop_with_the_linear_model_is_chapter_5s(capsys, one_torch_thread):
    train, val = split()
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    expected = optimizers.train_val_loop(60, torch.optim.SGD([params], lr=1e-2), params,
                                         train, val)
    mine, history = ex.fit(model, (1.0, 0.0), 1e-2, 60, train, val)
    assert history == expected
    torch.testing.assert_close(mine, params.detach())


def test_the_quadratic_trains_and_a_diverging_run_stops(one_torch_thread):
    train, val = split()
    _, history = ex.fit(ex.quadratic_model, ex.QUADRATIC_START, 5e-4, 200, train, val)
    assert len(history) == 200 and history[-1][1] < 0.5 * history[0][1]
    _, diverged = ex.fit(ex.quadratic_model, ex.QUADRATIC_START, 1e-2, 200, train, val)
    losses = [h[1] for h in diverged]
    assert len(diverged) < 200 and not math.isfinite(losses[-1])
    assert all(math.isfinite(v) for v in losses[:-1])


def test_initial_gradients_are_the_chain_rules():
    train, _ = split()
    x, y = train
    residual = ex.quadratic_model(x, *ex.QUADRATIC_START) - y
    expected = torch.stack([(2 * residual * x ** 2).mean(), (2 * residual * x).mean(),
                            (2 * residual).mean()])
    torch.testing.assert_close(ex.initial_gradients(ex.quadratic_model, ex.QUADRATIC_START,
                                                    x, y), expected)


def test_least_squares_is_polyfit_and_leave_one_out_sees_the_curve():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, generator=g) * 10, torch.randn(12, generator=g)
    for degree in (1, 2):
        coefficients = ex.least_squares(x, y, degree)
        np.testing.assert_allclose(coefficients.numpy(), np.polyfit(x.double().numpy(),
                                                                    y.double().numpy(), degree))
    x = torch.arange(6.0)
    parabola = 0.5 * x ** 2 - x + 2
    assert max(ex.leave_one_out(x, parabola, 2)) < 1e-12
    line_errors = ex.leave_one_out(x, parabola, 1)
    assert min(line_errors) > 0.01 and line_errors[0] > line_errors[2]   # worst at the ends
    held_out = ex.least_squares(x[1:], parabola[1:] + torch.tensor([0, 0, 0, 0, 1.0]), 1)
    assert ex.leave_one_out(x, parabola + torch.tensor([0, 0, 0, 0, 0, 1.0]), 1)[0] == \
        pytest.approx(float((ex.polynomial(x[:1], held_out) - parabola[0]) ** 2))


def test_exercise_1_ladder_minimum_and_validation(one_torch_thread):
    a = ex.exercise_1(n_epochs=300, seed=0)
    lrs = list(a["ladder"])
    assert lrs == list(ex.LR_LADDER[:len(lrs)]) and lrs[0] == ex.BOOK_LR
    assert all(a["ladder"][lr] is not None for lr in lrs[:-1])        # diverged, then
    assert a["ladder"][lrs[-1]] is None and a["quadratic_lr"] == lrs[-1]   # the first stable
    assert len(a["sgd"]["quadratic"][1]) == 300
    assert a["minimum_loss"]["quadratic"] < a["minimum_loss"]["linear"]  # nested models
    assert sorted(a["train_idx"].tolist() + a["val_idx"].tolist()) == list(range(11))
    assert len(a["loo"]["linear"]) == len(a["loo"]["quadratic"]) == 11


def test_main_prints_every_sub_question(tmp_path, capsys, one_torch_thread):
    answers = ex.main(["--epochs", "40", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert list(answers) == [1]
    for label in ("Exercise 5.1", "a. what had to change", "loss not finite at epoch",
                  "b. what did not change", "c. the training loss", "the minimum (least squares",
                  "d. better or worse?", "leave-one-out", "verdict:"):
        assert label in out
    assert files_under(tmp_path / "run") == ["quadratic_vs_linear.png"]


def test_a_bad_flag_is_one_line(tmp_path, capsys):
    code, err = run_main(ex.main, ["--epochs", "0", "--out", tmp_path / "run"], capsys)
    assert_one_error_line(code, err, "--epochs 0: must be at least 1")
    assert not (tmp_path / "run").exists()
