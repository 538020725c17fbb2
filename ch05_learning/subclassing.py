"""Chapter 6 (and 8): writing the network as an nn.Module subclass; linear vs network.

    python ch05_learning/subclassing.py          # writes runs/ch05/linear_vs_nn.png

- SubclassModel: the 1-13-1 Tanh network with its layers as attributes; the attribute names
  become the parameter names (hidden_linear.weight, ...), 40 parameters in all.
- SubclassFunctionalModel: the same, with the parameter-free Tanh called as torch.tanh in
  forward; same state_dict keys, so one model's weights load into the other.
- Registration: nn.Module finds submodules only in attributes (and nn.ModuleList/ModuleDict).
  Layers kept in a plain Python list are invisible to parameters(), .to() and optimizers
  (book ch8).
- "What learning means" (book 6.4): a line and the network trained on the same 9 points; the
  network bends to follow the data, the line cannot.
"""
import argparse

import torch
from torch import nn

from ch01_intro.resnet import count_parameters
from ch05_learning.nn_fit import N_HIDDEN, print_parameter_table
from ch05_learning.nn_linear import batched_data, training_loop
from ch05_learning.optimizers import split_indices
from ch05_learning.thermometer import DEFAULT_OUT, plot_fits
from common.device import seed_everything
from common.errors import require_at_least, run_cli
from common.files import check_writable


class SubclassModel(nn.Module):
    """1 -> n_hidden (Tanh) -> 1 with every layer, the activation included, as a submodule."""

    def __init__(self, n_hidden=N_HIDDEN):
        super().__init__()
        self.hidden_linear = nn.Linear(1, n_hidden)
        self.hidden_activation = nn.Tanh()
        self.output_linear = nn.Linear(n_hidden, 1)

    def forward(self, x):                     # x: (N, 1)
        return self.output_linear(self.hidden_activation(self.hidden_linear(x)))


class SubclassFunctionalModel(nn.Module):
    """The same network; the activation has no parameters, so forward calls torch.tanh."""

    def __init__(self, n_hidden=N_HIDDEN):
        super().__init__()
        self.hidden_linear = nn.Linear(1, n_hidden)
        self.output_linear = nn.Linear(n_hidden, 1)

    def forward(self, x):
        return self.output_linear(torch.tanh(self.hidden_linear(x)))


class PlainListModel(nn.Module):
    """A mistake on purpose: layers in a Python list are not registered (no parameters)."""

    def __init__(self, n_hidden=N_HIDDEN):
        super().__init__()
        self.layers = [nn.Linear(1, n_hidden), nn.Linear(n_hidden, 1)]

    def forward(self, x):
        return self.layers[1](torch.tanh(self.layers[0](x)))


class ModuleListModel(nn.Module):
    """The fix: nn.ModuleList registers its items (parameter names layers.0.weight, ...)."""

    def __init__(self, n_hidden=N_HIDDEN):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(1, n_hidden), nn.Linear(n_hidden, 1)])

    def forward(self, x):
        return self.layers[1](torch.tanh(self.layers[0](x)))


class ModuleDictModel(nn.Module):
    """nn.ModuleDict does the same for named layers (layers.hidden_linear.weight, ...)."""

    def __init__(self, n_hidden=N_HIDDEN):
        super().__init__()
        self.layers = nn.ModuleDict({"hidden_linear": nn.Linear(1, n_hidden),
                                     "output_linear": nn.Linear(n_hidden, 1)})

    def forward(self, x):
        return self.layers["output_linear"](torch.tanh(self.layers["hidden_linear"](x)))


def compare_fits(epochs, seed):
    """Train nn.Linear (lr 1e-2) and SubclassModel (lr 1e-3) on one split; return both."""
    t_c, t_u = batched_data()
    t_un = 0.1 * t_u
    seed_everything(seed)
    train_idx, val_idx = split_indices(t_u.shape[0])
    models = {"linear": (nn.Linear(1, 1), 1e-2), "network": (SubclassModel(), 1e-3)}
    histories = {}
    for name, (model, lr) in models.items():
        print(f"{name}: SGD lr {lr:g}, {epochs} epochs")
        histories[name] = training_loop(
            epochs, torch.optim.SGD(model.parameters(), lr=lr), model, nn.MSELoss(),
            (t_un[train_idx], t_c[train_idx]), (t_un[val_idx], t_c[val_idx]))
    return {name: m for name, (m, _) in models.items()}, histories, (t_c, t_u, val_idx)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5000, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="split and init (default: %(default)s)")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNG (default: %(default)s)")
    args = p.parse_args(argv)
    require_at_least("--epochs", args.epochs, 1)
    out = check_writable(args.out, "--out")      # made by the first write, not before

    counts = {}
    for cls in (SubclassModel, SubclassFunctionalModel, PlainListModel, ModuleListModel,
                ModuleDictModel):
        model = cls()
        counts[cls.__name__] = count_parameters(model)
        print(f"{cls.__name__}: {counts[cls.__name__]} parameters, numel list "
              f"{[p.numel() for p in model.parameters()]}")
        print_parameter_table(model)

    subclass, functional = SubclassModel(), SubclassFunctionalModel()
    functional.load_state_dict(subclass.state_dict())  # same names, no hidden_activation params
    x = torch.linspace(2.0, 9.0, 5).unsqueeze(1)
    same = torch.allclose(subclass(x), functional(x))
    print(f"SubclassFunctionalModel with SubclassModel's weights gives the same outputs: {same}")

    models, histories, (t_c, t_u, val_idx) = compare_fits(args.epochs, args.seed)
    t_range = torch.arange(20.0, 90.0).unsqueeze(1)
    with torch.no_grad():
        curves = [(f"{name} (val loss {histories[name][-1][2]:.2f})", t_range,
                   models[name](0.1 * t_range)) for name in ("linear", "network")]
    png = plot_fits(out / "linear_vs_nn.png", t_u, t_c, curves=curves,
                    points=[("held out for validation", t_u[val_idx], t_c[val_idx])],
                    title="What learning means: a line vs a 1-13-1 network")
    print(f"wrote {png}")
    return {"counts": counts, "functional_matches": same, "models": models,
            "histories": histories, "png": png}


if __name__ == "__main__":
    run_cli(main)
