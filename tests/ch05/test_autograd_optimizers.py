"""Chapter 5: autograd, torch.optim and the train/validation split."""
import torch

from ch05_learning import autograd_fit, grad_descent, optimizers
from ch05_learning.thermometer import loss_fn, model, thermometer_data


def test_grad_accumulates_until_zeroed():
    t_c, t_u = thermometer_data()
    once, twice, zeroed = autograd_fit.accumulation_demo(t_u, t_c)
    assert once.abs().min() > 1.0
    torch.testing.assert_close(twice, 2 * once)
    assert torch.equal(zeroed, torch.zeros(2))


def test_autograd_loop_reaches_the_books_fit():
    t_c, t_u = thermometer_data()
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    params, loss = autograd_fit.training_loop(5000, 1e-2, params, 0.1 * t_u, t_c)
    w, b = params.tolist()
    assert abs(w - 5.3671) < 1e-3 and abs(b - (-17.3012)) < 1e-3
    assert abs(loss - 2.927648) < 1e-4
    assert params.is_leaf and params.requires_grad     # the no_grad update kept it a leaf


def test_sgd_follows_the_manual_loop():
    t_c, t_u = thermometer_data()
    t_un = 0.1 * t_u
    manual_params, manual_losses = grad_descent.training_loop(300, 1e-2, torch.tensor([1.0, 0.0]),
                                                              t_un, t_c)
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    sgd_params, sgd_losses = optimizers.training_loop(300, torch.optim.SGD([params], lr=1e-2),
                                                      params, t_un, t_c)
    torch.testing.assert_close(torch.tensor(sgd_losses), torch.tensor(manual_losses),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sgd_params.detach(), manual_params, rtol=1e-5, atol=1e-5)


def test_adam_on_raw_input_reaches_the_books_fit():
    t_c, t_u = thermometer_data()
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    params, losses = optimizers.training_loop(2000, torch.optim.Adam([params], lr=1e-1), params,
                                              t_u, t_c)
    w, b = params.tolist()
    assert abs(w - 0.5367) < 1e-3 and abs(b - (-17.3021)) < 1e-3
    assert abs(losses[-1] - 2.927680) < 1e-3


def test_split_is_disjoint_and_covers_everything():
    train_idx, val_idx = optimizers.split_indices(11, generator=torch.Generator().manual_seed(3))
    assert len(train_idx) == 9 and len(val_idx) == 2      # int(0.2 * 11) = 2 held out
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(11))


def test_validation_loss_has_no_graph():
    t_c, t_u = thermometer_data()
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    train_loss = loss_fn(model(t_u[:9], *params), t_c[:9])
    val_loss = optimizers.validation_loss(params, t_u[9:], t_c[9:])
    assert train_loss.requires_grad
    assert not val_loss.requires_grad and val_loss.grad_fn is None


def test_train_val_loop_steps_on_the_training_loss_only():
    t_c, t_u = thermometer_data()
    t_un = 0.1 * t_u
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    history = optimizers.train_val_loop(1, torch.optim.SGD([params], lr=1e-2), params,
                                        (t_un[:9], t_c[:9]), (t_un[9:], t_c[9:]))
    expected = torch.tensor([1.0, 0.0], requires_grad=True)
    loss_fn(model(t_un[:9], *expected), t_c[:9]).backward()
    torch.testing.assert_close(params.grad, expected.grad)
    assert history[0][0] == 1 and history[0][2] > 0


def test_main_runs_with_few_epochs():
    result = optimizers.main(["--epochs", "30", "--adam-epochs", "30", "--val-epochs", "30"])
    assert result["sgd_losses"][-1] < result["sgd_losses"][0]
    assert result["adam_losses"][-1] < result["adam_losses"][0]
    assert result["history"][-1][1] < result["history"][0][1]
    assert set(result["train_idx"].tolist()).isdisjoint(result["val_idx"].tolist())


def test_autograd_main_runs_with_few_epochs():
    result = autograd_fit.main(["--epochs", "30"])
    torch.testing.assert_close(result["grad_twice"], 2 * result["grad_once"])
    assert result["loss"] < 80.0                              # epoch-1 loss is 80.36
