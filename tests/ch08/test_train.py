"""The chapter 8 training loop, L2 penalty, validation, save/load and the script (book ch8)."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ch07_cifar.cifar import load_cifar2
from ch08_convnets import train
from ch08_convnets.models import Net, NetWidth, make_model
from ch08_convnets.train import (
    load_model,
    save_model,
    training_loop,
    training_loop_l2reg,
    validate,
)
from common.errors import DataError


@pytest.fixture(scope="module")
def cifar2_tiny(tiny_dir):
    train_set, val_set, _ = load_cifar2(tiny_dir)
    return train_set, val_set


@pytest.mark.parametrize("name", ["net", "batchnorm", "res"])
def test_loss_falls_over_a_few_epochs(cifar2_tiny, name, capsys):
    torch.manual_seed(0)
    loader = DataLoader(cifar2_tiny[0], batch_size=8, shuffle=True)
    model = make_model(name, n_chans1=8) if name != "net" else Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=3e-2)
    losses = training_loop(11, optimizer, model, nn.CrossEntropyLoss(), loader, "cpu")
    assert len(losses) == 11 and losses[-1] < losses[0]
    lines = capsys.readouterr().out.splitlines()          # epoch 1, every 10th and the last
    assert [line.split(" Epoch ")[1].split(",")[0] for line in lines] == ["1", "10", "11"]


def test_l2_penalty_is_in_the_loss_and_shrinks_the_weights():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,))
    loader = [(x, y)]
    plain, penalized = Net(), Net()
    penalized.load_state_dict(plain.state_dict())
    start = copy.deepcopy(plain)
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        data_loss = float(loss_fn(plain(x), y))
        penalty = float(sum(p.pow(2).sum() for p in plain.parameters()))
    plain_loss = training_loop(1, torch.optim.SGD(plain.parameters(), lr=1e-2), plain, loss_fn,
                               loader, "cpu")[0]
    l2_loss = training_loop_l2reg(1, torch.optim.SGD(penalized.parameters(), lr=1e-2), penalized,
                                  loss_fn, loader, "cpu", l2_lambda=0.01)[0]
    assert plain_loss == pytest.approx(data_loss, rel=1e-5)
    assert l2_loss == pytest.approx(data_loss + 0.01 * penalty, rel=1e-5)

    def norm(model):
        return sum(float(p.detach().pow(2).sum()) for p in model.parameters())
    assert norm(penalized) < norm(plain)
    # the same step as SGD's weight decay of 2 * lambda
    decayed = copy.deepcopy(start)
    training_loop(1, torch.optim.SGD(decayed.parameters(), lr=1e-2, weight_decay=0.02), decayed,
                  loss_fn, loader, "cpu")
    for a, b in zip(decayed.parameters(), penalized.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class AlwaysZero(nn.Module):
    """Predicts class 0 for every image: its accuracy is the share of label 0."""

    def forward(self, x):
        return torch.tensor([1.0, 0.0]).expand(len(x), 2)


def test_validate_returns_train_and_val_accuracy(capsys):
    images = torch.zeros(8, 3, 32, 32)
    train_loader = DataLoader(list(zip(images, torch.tensor([0, 0, 0, 1, 0, 0, 1, 1]),
                                       strict=True)), batch_size=3)
    val_loader = DataLoader(list(zip(images[:4], torch.tensor([1, 1, 1, 0]), strict=True)),
                            batch_size=3)
    assert validate(AlwaysZero(), train_loader, val_loader, "cpu") == {"train": 5 / 8,
                                                                        "val": 1 / 4}
    assert capsys.readouterr().out.splitlines() == ["Accuracy train: 0.62", "Accuracy val: 0.25"]


def test_training_beats_chance_on_a_learnable_sample(capsys):
    """Bright images are birds, dark ones airplanes: a few epochs of Net learn it."""
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (64,))
    images = torch.randn(64, 3, 32, 32) * 0.3 + (labels.float() * 2 - 1).view(-1, 1, 1, 1)
    loader = DataLoader(list(zip(images, labels, strict=True)), batch_size=16, shuffle=True)
    model = Net()
    losses = training_loop(5, torch.optim.SGD(model.parameters(), lr=1e-1), model,
                           nn.CrossEntropyLoss(), loader, "cpu")
    assert losses[-1] < 0.5 * losses[0]
    assert validate(model, loader, loader, "cpu")["train"] > 0.9


def test_save_and_load_round_trip(tmp_path):
    model = NetWidth()
    path = save_model(model, tmp_path / "sub" / "width.pt")
    assert not list(path.parent.glob("*.tmp"))
    loaded = load_model(NetWidth(), path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(DataError, match="does not fit Net: 5 of another shape"):
        load_model(Net(), path)
    with pytest.raises(DataError, match="absent.pt: no such file"):
        load_model(Net(), tmp_path / "absent.pt")


def test_script_trains_saves_and_reloads(tiny_root, tmp_path):
    saved = tmp_path / "net.pt"
    args = ["--data-dir", str(tiny_root), "--synthetic", "--device", "cpu", "--batch-size", "8"]
    result = train.main(args + ["--epochs", "2", "--save", str(saved), "--lr", "3e-2"])
    assert result["synthetic"] and result["saved"] == saved and saved.is_file()
    assert len(result["losses"]) == 2 and {"train", "val"} <= set(result)
    again = train.main(args + ["--epochs", "0", "--load", str(saved)])
    assert again["losses"] == [] and again["saved"] is None
    assert again["val"] == pytest.approx(result["val"])


def test_script_variants_run(tiny_root, tmp_path):
    args = ["--data-dir", str(tiny_root), "--synthetic", "--device", "cpu", "--epochs", "1"]
    result = train.main(args + ["--model", "resdeep", "--n-blocks", "2", "--l2", "0.001",
                                "--save", str(tmp_path / "rd.pt")])
    assert len(result["model"].resblocks) == 2
    with pytest.raises(DataError, match="--model net"):
        train.main(args + ["--model", "width", "--load", "book"])


@pytest.mark.realdata
def test_script_evaluates_the_book_checkpoint(book_file, tiny_dir, tmp_path):
    """`--load book --epochs 0` finds the checkpoint under the data root and only evaluates.
    Scored on the synthetic sample here: no accuracy claim, the weights were trained on CIFAR."""
    (tmp_path / "p1ch6").mkdir()
    (tmp_path / "p1ch6" / "birds_vs_airplanes.pt").symlink_to(
        book_file("p1ch6/birds_vs_airplanes.pt"))
    (tmp_path / "synthetic").symlink_to(tiny_dir.parent)
    result = train.main(["--data-dir", str(tmp_path), "--synthetic", "--device", "cpu",
                         "--epochs", "0", "--load", "book"])
    assert result["losses"] == [] and result["saved"] is None and 0 <= result["val"] <= 1
    state = torch.load(book_file("p1ch6/birds_vs_airplanes.pt"), weights_only=True)
    torch.testing.assert_close(result["model"].conv1.weight, state["conv1.weight"])


@pytest.mark.gpu
def test_one_training_step_agrees_on_cpu_and_gpu(cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    cpu_model, x, y = Net(), torch.randn(16, 3, 32, 32), torch.randint(0, 2, (16,))
    gpu_model = Net()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.to(cuda)
    for model, device in ((cpu_model, "cpu"), (gpu_model, cuda)):
        training_loop(1, torch.optim.SGD(model.parameters(), lr=1e-2), model,
                      nn.CrossEntropyLoss(), [(x, y)], device)
    for a, b in zip(cpu_model.parameters(), gpu_model.parameters(), strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5)
