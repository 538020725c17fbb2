"""The MNIST warm-up net: shapes, the book's mnist.pth, learning on synthetic digits."""
import pytest
import torch

from ch01_intro import mnist_net
from ch01_intro.mnist_net import MnistNet, synthetic_batches, synthetic_digits, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # a 21,840-parameter net


def test_output_is_log_probabilities():
    model = MnistNet().eval()
    out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(5))
    assert sum(p.numel() for p in model.parameters()) == 21_840


def test_synthetic_digits_are_deterministic_images():
    images, labels = synthetic_digits(50, seed=3)
    again, labels_again = synthetic_digits(50, seed=3)
    assert images.shape == (50, 1, 28, 28) and labels.shape == (50,)
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    assert images.min() >= 0 and images.max() <= 1
    assert 0.05 < images.mean() < 0.35                       # strokes on a black background
    assert images[:, :, :2].mean() < 0.01                     # a near-empty border, as in MNIST
    assert not torch.equal(images, synthetic_digits(50, seed=4)[0])


def test_loss_falls_with_sgd():
    torch.manual_seed(4242)
    model = MnistNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)  # book: lr 0.01
    losses = train(model, optimizer, synthetic_batches(40, 32, seed=0), "cpu")
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


def test_main_trains_and_writes_the_samples(tmp_path):
    result = mnist_net.main(["--steps", "20", "--lr", "0.05", "--n-test", "200",
                             "--out", str(tmp_path), "--device", "cpu"])
    assert len(result["losses"]) == 20
    assert result["accuracy_after"] > result["accuracy_before"]
    assert (tmp_path / "mnist_samples.png").stat().st_size > 0


@pytest.mark.realdata
def test_books_mnist_pth_loads_strictly(book_data):
    state = torch.load(book_data / mnist_net.MNIST_PTH, weights_only=True)
    assert list(state) == list(MnistNet().state_dict())
    model = mnist_net.load_book_net(book_data)              # strict load_state_dict
    torch.testing.assert_close(model.fc2.bias, state["fc2.bias"])


@pytest.mark.realdata
def test_books_net_reads_the_synthetic_digits(book_data):
    # Trained on real MNIST only, it still recognizes most of the drawn digits (85% here):
    # evidence that both the weights and the stand-in digits are what they claim to be.
    images, labels = synthetic_digits(500, seed=4242)
    assert mnist_net.accuracy(mnist_net.load_book_net(book_data), images, labels) > 0.7
