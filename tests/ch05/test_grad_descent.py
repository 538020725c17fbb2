"""Chapter 5: gradients by hand and the learning-rate story (ch05_learning/grad_descent.py)."""
import pytest
import torch

from ch05_learning.autograd_fit import autograd_grad
from ch05_learning.grad_descent import (
    finite_difference_grad,
    first_nonfinite_epoch,
    grad_fn,
    main,
    training_loop,
)
from ch05_learning.thermometer import model, thermometer_data


@pytest.mark.parametrize("w, b", [(1.0, 0.0), (5.0, -17.0), (0.3, 2.0)])
def test_analytic_equals_finite_difference_equals_autograd(w, b):
    t_c, t_u = thermometer_data()
    t_p = model(t_u, torch.tensor(w), torch.tensor(b))
    analytic = grad_fn(t_u, t_c, t_p, torch.tensor(w), torch.tensor(b))
    numeric = finite_difference_grad(t_u, t_c, torch.tensor(w), torch.tensor(b))
    auto = autograd_grad(t_u, t_c, w, b)
    assert analytic.shape == (2,)
    torch.testing.assert_close(numeric, analytic, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(auto, analytic, rtol=1e-5, atol=1e-4)


def test_gradient_at_the_start_is_the_books():
    t_c, t_u = thermometer_data()
    t_p = model(t_u, 1.0, 0.0)
    torch.testing.assert_close(grad_fn(t_u, t_c, t_p, 1.0, 0.0), torch.tensor([4517.2969, 82.6]))


def test_lr_1e_2_on_raw_input_diverges():
    t_c, t_u = thermometer_data()
    params, losses = training_loop(15, 1e-2, torch.tensor([1.0, 0.0]), t_u, t_c)
    assert first_nonfinite_epoch(losses[:10]) is None
    assert first_nonfinite_epoch(losses) == 11           # the book: inf at epoch 11
    assert params.abs().min() > 1e20                     # the parameters blew up too


def test_lr_1e_4_on_raw_input_is_slow_but_stable():
    t_c, t_u = thermometer_data()
    _, losses = training_loop(100, 1e-4, torch.tensor([1.0, 0.0]), t_u, t_c)
    assert abs(losses[-1] - 29.022669) < 1e-3


def test_normalized_input_reaches_the_books_fit():
    t_c, t_u = thermometer_data()
    params, losses = training_loop(5000, 1e-2, torch.tensor([1.0, 0.0]), 0.1 * t_u, t_c)
    w, b = params.tolist()
    assert abs(w - 5.3671) < 1e-3 and abs(b - (-17.3012)) < 1e-3
    assert abs(losses[-1] - 2.927648) < 1e-4
    assert abs(losses[99] - 22.148710) < 1e-3             # the book's epoch-100 print


def test_main_runs_the_story_and_writes_the_png(tmp_path):
    result = main(["--epochs", "50", "--out", str(tmp_path)])
    assert result["diverged_at"] == 11
    assert result["losses"][-1] < result["losses"][0]
    assert (tmp_path / "grad_descent.png").stat().st_size > 10_000
