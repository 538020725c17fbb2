"""Chapter 6: nn.Linear, the 1-13-1 network, activations and nn.Module subclassing."""
import pytest
import torch
from torch import nn

from ch01_intro.resnet import count_parameters
from ch05_learning import activations, nn_fit, nn_linear, optimizers, subclassing
from ch05_learning.thermometer import thermometer_data


def test_batched_data_has_a_feature_dimension():
    t_c, t_u = nn_linear.batched_data()
    assert t_c.shape == t_u.shape == (11, 1)


def test_call_equals_forward():
    linear = nn_linear.linear_from(2.0, -1.0)
    x = torch.tensor([[1.0], [3.0]])
    assert torch.equal(linear(x), linear.forward(x))
    assert torch.equal(linear(x), torch.tensor([[1.0], [5.0]]))


def test_nn_linear_matches_the_chapter_5_loop():
    t_c, t_u = nn_linear.batched_data()
    linear = nn_linear.linear_from(1.0, 0.0)
    losses = nn_linear.fit_module(linear, 0.1 * t_u, t_c, 5000, lr=1e-2)
    assert abs(linear.weight.item() - 5.3671) < 1e-3
    assert abs(linear.bias.item() - (-17.3012)) < 1e-3
    assert abs(losses[-1] - 2.927648) < 1e-4
    # same trajectory as the optimizer version on flat tensors, step by step
    t_c1, t_u1 = thermometer_data()
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    _, flat_losses = optimizers.training_loop(200, torch.optim.SGD([params], lr=1e-2), params,
                                              0.1 * t_u1, t_c1)
    torch.testing.assert_close(torch.tensor(losses[:200]), torch.tensor(flat_losses),
                               rtol=1e-5, atol=1e-5)


def test_nn_linear_main_runs_with_few_epochs():
    result = nn_linear.main(["--epochs", "30", "--val-epochs", "30"])
    assert result["parity_losses"][-1] < result["parity_losses"][0]
    assert result["history"][-1][1] < result["history"][0][1]


def test_sequential_parameter_shapes():
    shapes = [(name, shape) for name, shape, _ in nn_fit.parameter_table(nn_fit.seq_model())]
    assert shapes == [("0.weight", (13, 1)), ("0.bias", (13,)), ("2.weight", (1, 13)),
                      ("2.bias", (1,))]
    named = [name for name, _, _ in nn_fit.parameter_table(nn_fit.named_seq_model())]
    assert named == ["hidden_linear.weight", "hidden_linear.bias", "output_linear.weight",
                     "output_linear.bias"]
    assert sum(n for _, _, n in nn_fit.parameter_table(nn_fit.seq_model())) == 40
    assert nn_fit.named_seq_model()(torch.ones(5, 1)).shape == (5, 1)


def test_mlp_loss_falls_and_png_is_written(tmp_path):
    result = nn_fit.main(["--epochs", "300", "--out", str(tmp_path)])
    train_losses = [h[1] for h in result["history"]]
    assert train_losses[-1] < 0.2 * train_losses[0]
    assert (tmp_path / "nn_fit.png").stat().st_size > 10_000


def test_activation_output_ranges():
    r = activations.output_ranges()
    assert -1 < r["Tanh"][0] < -0.99 and 0.99 < r["Tanh"][1] < 1
    assert 0 < r["Sigmoid"][0] < r["Sigmoid"][1] < 1
    assert r["Hardtanh"] == pytest.approx((-1.0, 1.0))
    assert r["ReLU"][0] == 0.0 and r["ReLU"][1] == pytest.approx(3.0)
    assert r["Softplus"][0] > 0
    assert r["LeakyReLU(0.1)"][0] == pytest.approx(-0.3)
    assert -1 < r["ELU"][0] < 0


def test_tanh_saturates_far_from_zero():
    _, slope = activations.evaluate(nn.Tanh(), torch.tensor([-8.0, 0.0, 8.0]))
    assert slope[1] == 1.0 and slope[0] < 1e-5 and slope[2] < 1e-5


def test_activations_main_writes_png(tmp_path):
    result = activations.main(["--out", str(tmp_path)])
    assert result["png"].stat().st_size > 10_000
    assert len(result["ranges"]) == 9


def test_subclass_models_have_the_books_parameters():
    model = subclassing.SubclassModel()
    assert [p.numel() for p in model.parameters()] == [13, 13, 13, 1]
    assert count_parameters(subclassing.SubclassFunctionalModel()) == 40
    assert model(torch.ones(4, 1)).shape == (4, 1)


def test_functional_variant_loads_the_subclass_weights():
    a, b = subclassing.SubclassModel(), subclassing.SubclassFunctionalModel()
    b.load_state_dict(a.state_dict())                  # strict: same keys
    x = torch.linspace(2.0, 9.0, 7).unsqueeze(1)
    torch.testing.assert_close(a(x), b(x))


def test_plain_list_hides_submodules_but_module_list_registers_them():
    plain = subclassing.PlainListModel()
    assert list(plain.parameters()) == []
    assert plain(torch.ones(2, 1)).shape == (2, 1)     # it runs, yet nothing would train
    with pytest.raises(ValueError):
        torch.optim.SGD(plain.parameters(), lr=1e-3)
    listed = dict(subclassing.ModuleListModel().named_parameters())
    assert list(listed) == ["layers.0.weight", "layers.0.bias", "layers.1.weight",
                            "layers.1.bias"]
    keyed = dict(subclassing.ModuleDictModel().named_parameters())
    assert "layers.hidden_linear.weight" in keyed and len(keyed) == 4


def test_subclassing_main_compares_and_writes_png(tmp_path):
    result = subclassing.main(["--epochs", "100", "--out", str(tmp_path)])
    assert result["counts"]["PlainListModel"] == 0
    assert result["counts"]["ModuleListModel"] == 40
    assert result["functional_matches"]
    for history in result["histories"].values():
        assert history[-1][1] < history[0][1]
    assert (tmp_path / "linear_vs_nn.png").stat().st_size > 10_000


@pytest.mark.parametrize("module", ["thermometer", "grad_descent", "autograd_fit", "optimizers",
                                    "nn_linear", "nn_fit", "activations", "subclassing"])
def test_help(module, capsys):
    import importlib
    main = importlib.import_module(f"ch05_learning.{module}").main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "python ch05_learning/" in capsys.readouterr().out
