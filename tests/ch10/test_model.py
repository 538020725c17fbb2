"""LunaModel: the book's shapes, parameter count and checkpoint; it learns; CPU/GPU parity."""
import pytest
import torch
from torch.utils.data import DataLoader

from ch10_luna.model import LunaModel
from ch10_luna.runtime import mixed_precision
from ch10_luna.train_cls import LOSS, train_one_epoch

BOOK_CLS = "part2/models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state"


def blob_samples(n, crop_irc=(16, 16, 16), seed=0):
    """(x, label, uid, irc) tuples: a bright central ball for nodules, lung noise otherwise."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) - s // 2 for s in crop_irc],
                                      indexing="ij")).float()
    ball = (grid.pow(2).sum(0) <= 9).float()
    samples = []
    for i in range(n):
        is_nodule = i % 2 == 0
        x = -850 + 40 * torch.randn(crop_irc, generator=g) + (890 * ball if is_nodule else 0)
        label = torch.tensor([not is_nodule, is_nodule], dtype=torch.long)
        samples.append((x.unsqueeze(0), label, "uid", torch.zeros(3, dtype=torch.long)))
    return samples


def test_model_matches_the_book():
    logits, probs = LunaModel()(torch.randn(4, 1, 32, 48, 48))
    assert logits.shape == probs.shape == (4, 2)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4))
    assert sum(p.numel() for p in LunaModel().parameters()) == 222_220


def test_every_parameter_gets_a_gradient():
    model = LunaModel()
    logits, _ = model(torch.randn(2, 1, 32, 48, 48) * 300)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    loader = DataLoader(blob_samples(16), batch_size=16)
    model = LunaModel(conv_channels=4, crop_irc=(16, 16, 16))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    amp = mixed_precision("cpu", False)
    losses = [train_one_epoch(model, loader, optimizer, amp)[LOSS].mean() for _ in range(20)]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.realdata
def test_the_books_checkpoint_loads_strictly_and_gets_the_real_crop_right(book_file):
    state = torch.load(book_file(BOOK_CLS), weights_only=True, map_location="cpu")
    assert state["model_name"] == "LunaModel" and state["epoch"] == 90
    model = LunaModel()
    model.load_state_dict(state["model_state"])            # strict by default
    crop, label, series_uid, center_irc = torch.load(
        book_file("p3ch15/cls_val_example.pt"), weights_only=True, map_location="cpu")
    model.eval()
    with torch.no_grad():
        _, probs = model(crop.unsqueeze(0))
    assert int(probs.argmax(dim=1)) == int(label.argmax())
    assert float(probs[0, int(label.argmax())]) > 0.5


@pytest.mark.gpu
def test_cpu_and_gpu_agree(cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model, x = LunaModel().eval(), torch.randn(2, 1, 32, 48, 48) * 300
    expected = model(x)[0]
    actual = model.to(cuda)(x.to(cuda))[0].cpu()
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_one_training_step_agrees_on_cpu_and_gpu(cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    loader = DataLoader(blob_samples(8), batch_size=8)
    results = []
    for device in ("cpu", cuda):
        torch.manual_seed(0)
        model = LunaModel(conv_channels=4, crop_irc=(16, 16, 16)).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)
        train_one_epoch(model, loader, optimizer, mixed_precision(device, False))
        results.append(model.head_linear.weight.detach().cpu())
    torch.testing.assert_close(results[1], results[0], rtol=1e-3, atol=1e-5)
