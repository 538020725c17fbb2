"""Fully connected CIFAR-2 models and their DataLoader training loop (book ch7)."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ch01_intro.resnet import count_parameters
from ch07_cifar import train_fc
from ch07_cifar.cifar import load_cifar2
from ch07_cifar.train_fc import accuracy, make_loaders, make_model, training_loop
from common.errors import DataError


def test_parameter_counts_are_the_books():
    assert count_parameters(make_model("fc")[0]) == 1_574_402
    assert count_parameters(make_model("deep")[0]) == 3_737_474
    with pytest.raises(ValueError):
        make_model("wide")


def test_outputs_and_losses():
    x = torch.randn(5, 3072)
    fc, fc_loss = make_model("fc")
    log_probs = fc(x)
    assert log_probs.shape == (5, 2)
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(5))   # log-probabilities
    assert isinstance(fc_loss, nn.NLLLoss)
    deep, deep_loss = make_model("deep")
    assert deep(x).shape == (5, 2) and isinstance(deep_loss, nn.CrossEntropyLoss)


@pytest.mark.parametrize("name", ["fc", "deep"])
def test_loss_falls_over_a_few_epochs(tiny_dir, name):
    torch.manual_seed(0)
    train, _, _ = load_cifar2(tiny_dir)
    loader = DataLoader(train, batch_size=8, shuffle=True)
    model, loss_fn = make_model(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    losses = training_loop(4, optimizer, model, loss_fn, loader, "cpu")
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0]


def test_every_parameter_gets_a_gradient():
    model, loss_fn = make_model("deep")
    loss_fn(model(torch.randn(4, 3072)), torch.tensor([0, 1, 0, 1])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_accuracy_counts_and_is_deterministic():
    images = torch.randn(10, 3, 32, 32)
    labels = torch.tensor([0] * 7 + [1] * 3)
    loader = DataLoader(list(zip(images, labels, strict=True)), batch_size=4)
    always_zero = nn.Sequential(nn.Linear(3072, 2))
    with torch.no_grad():
        always_zero[0].weight.zero_()
        always_zero[0].bias.copy_(torch.tensor([1.0, 0.0]))
    assert accuracy(always_zero, loader, "cpu") == pytest.approx(0.7)
    model, _ = make_model("fc")
    first = accuracy(model, loader, "cpu")
    assert 0 <= first <= 1 and accuracy(model, loader, "cpu") == first
    assert not model.training                                   # evaluated in eval mode


def test_make_loaders_shuffles_only_training(tiny_dir):
    train, val, _ = load_cifar2(tiny_dir)
    train_loader, val_loader = make_loaders(train, val, batch_size=4)
    assert isinstance(train_loader.sampler, torch.utils.data.RandomSampler)
    assert isinstance(val_loader.sampler, torch.utils.data.SequentialSampler)
    imgs, labels = next(iter(train_loader))
    assert imgs.shape == (4, 3, 32, 32) and labels.dtype == torch.int64


@pytest.mark.parametrize("name", ["fc", "deep"])
def test_script_trains_on_the_tiny_sample(tiny_root, name, capsys):
    result = train_fc.main(["--data-dir", str(tiny_root), "--synthetic", "--model", name,
                            "--epochs", "3", "--device", "cpu", "--batch-size", "8"])
    assert result["synthetic"] and result["params"] == count_parameters(make_model(name)[0])
    assert len(result["losses"]) == 3 and result["losses"][-1] < result["losses"][0]
    assert 0 <= result["val"] <= 1 and 0 <= result["train"] <= 1
    out = capsys.readouterr()
    assert "Epoch: 3" in out.out and "SYNTHETIC DATA" in out.err


def test_script_rejects_an_absent_device(tiny_root):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(DataError, match="CUDA"):
        train_fc.main(["--data-dir", str(tiny_root), "--device", "cuda", "--epochs", "1"])


@pytest.mark.gpu
def test_one_training_step_agrees_on_cpu_and_gpu(cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model, loss_fn = make_model("fc")
    x, y = torch.randn(16, 3072), torch.randint(0, 2, (16,))
    loader = [(x, y)]
    gpu_model = make_model("fc")[0]
    gpu_model.load_state_dict(model.state_dict())
    gpu_model.to(cuda)
    for m, device in ((model, "cpu"), (gpu_model, cuda)):
        training_loop(1, torch.optim.SGD(m.parameters(), lr=1e-2), m, loss_fn, loader, device)
    for p_cpu, p_gpu in zip(model.parameters(), gpu_model.parameters(), strict=True):
        torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=1e-4, atol=1e-5)


def test_epoch_size_draws_that_many_samples_afresh_each_epoch():
    train = [(torch.full((3, 32, 32), float(i)), i % 2) for i in range(40)]
    torch.manual_seed(0)
    loader, _ = make_loaders(train, train[:4], batch_size=4, epoch_size=12)
    epochs = [[int(x[0, 0, 0]) for imgs, _ in loader for x in imgs] for _ in range(2)]
    assert [len(e) for e in epochs] == [12, 12]
    assert all(len(set(e)) == 12 for e in epochs)             # no sample twice in one epoch
    assert set(epochs[0]) != set(epochs[1])                    # a fresh draw
    full, _ = make_loaders(train, train[:4], batch_size=4, epoch_size=100)   # cap above size
    assert sum(len(labels) for _, labels in full) == 40


def test_script_with_epoch_size_trains_on_that_many(tiny_root, capsys):
    result = train_fc.main(["--data-dir", str(tiny_root), "--synthetic", "--epochs", "2",
                            "--device", "cpu", "--batch-size", "4", "--epoch-size", "8"])
    assert len(result["losses"]) == 2
    assert "20 train (8 per epoch)" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", "0", "--epochs 0: must be at least 1"),
    ("--batch-size", "0", "--batch-size 0: must be at least 1"),
    ("--epoch-size", "0", "--epoch-size 0: must be at least 1"),
    ("--num-workers", "-1", "--num-workers -1: must be at least 0"),
    ("--lr", "nan", "--lr nan: must be a positive number"),
])
def test_flags_training_cannot_use_are_one_line(tiny_root, flag, value, message):
    with pytest.raises(DataError, match=f"^{message}$"):
        train_fc.main(["--data-dir", str(tiny_root), "--synthetic", flag, value])
