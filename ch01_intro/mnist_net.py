"""Chapter 2 warm-up (book repository p1ch2/4_mnist): a small MNIST convnet, trained on digits.

    python ch01_intro/mnist_net.py                    # train from scratch on synthetic digits
    python ch01_intro/mnist_net.py --init book        # start from the book's p1ch2/mnist/mnist.pth

The network: conv 1->10 (5x5), max pool, ReLU; conv 10->20 (5x5), Dropout2d, max pool, ReLU;
fc 320->50, ReLU, dropout; fc 50->10; log_softmax. Its attribute names are the book's, so
`mnist.pth` loads with a strict `load_state_dict`. The MNIST images are not downloaded here:
the demo draws 28x28 digits from strokes (random size, slant, shift and pen width, MNIST-style
20-pixel box, white on black), trains with the book's SGD (lr 0.01, momentum 0.5) and prints
the falling loss and the accuracy on a fixed held-out set before and after. Writes
runs/ch01/mnist_samples.png (32 of the held-out digits with their labels).
"""
import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from ch01_intro.weights import load_state
from common.data import add_data_dir_argument, book_file
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import DataError, run_cli
from common.figures import new_figure, save_figure
from common.files import output_dir, read_torch, runs_dir

MNIST_PTH = "p1ch2/mnist/mnist.pth"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081     # the usual MNIST pixel statistics

# Each digit as one pen stroke through points of a unit box (x right, y down).
DIGIT_STROKES = {
    0: [(.5, 0), (.82, .15), (.88, .5), (.82, .85), (.5, 1), (.18, .85), (.12, .5), (.18, .15),
        (.5, 0)],
    1: [(.3, .2), (.55, 0), (.55, 1)],
    2: [(.15, .2), (.45, 0), (.8, .1), (.85, .35), (.15, 1), (.9, 1)],
    3: [(.15, .05), (.8, 0), (.45, .42), (.85, .65), (.65, .98), (.15, .88)],
    4: [(.65, 1), (.65, 0), (.12, .65), (.9, .65)],
    5: [(.85, 0), (.25, 0), (.18, .45), (.65, .4), (.88, .68), (.6, 1), (.15, .9)],
    6: [(.75, 0), (.3, .35), (.15, .75), (.45, 1), (.82, .8), (.75, .5), (.4, .48), (.18, .68)],
    7: [(.12, 0), (.88, 0), (.4, 1)],
    8: [(.5, .47), (.82, .22), (.5, 0), (.2, .22), (.5, .47), (.85, .75), (.5, 1), (.15, .75),
        (.5, .47)],
    9: [(.82, .35), (.5, .5), (.2, .3), (.45, 0), (.82, .15), (.82, .5), (.6, 1)],
}


class MnistNet(nn.Module):
    """(N, 1, 28, 28) normalized digits -> (N, 10) log-probabilities."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))                      # (N, 10, 12, 12)
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))     # (N, 20, 4, 4)
        x = F.relu(self.fc1(x.flatten(1)))                              # (N, 50)
        x = F.dropout(x, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)                        # (N, 10)


def _segments(labels, generator):
    """(N, S, 2, 2) stroke segments in pixels for each label, randomly scaled, slanted, shifted."""
    n_max = max(len(s) for s in DIGIT_STROKES.values()) - 1
    base = torch.zeros(10, n_max, 2, 2)
    for digit, points in DIGIT_STROKES.items():
        pts = torch.tensor(points)
        segs = torch.stack([pts[:-1], pts[1:]], dim=1)                  # (S, 2, 2)
        pad = segs[-1:].expand(n_max - len(segs), 2, 2)                 # repeat the last one
        base[digit] = torch.cat([segs, pad])
    n = len(labels)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator)
    height, width = u(15, 20), u(10, 15)          # MNIST digits fit a 20x20 box
    shear, angle = u(-0.3, 0.3), u(-0.2, 0.2)     # slant and rotation (radians)
    pts = base[labels] - 0.5                                            # (N, S, 2, 2), centred
    width, height, shear = width[:, None, None], height[:, None, None], shear[:, None, None]
    x = pts[..., 0] * width + pts[..., 1] * height * shear
    y = pts[..., 1] * height
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    cx, cy = 13.5 + u(-1.5, 1.5)[:, None, None], 13.5 + u(-1.5, 1.5)[:, None, None]
    return torch.stack([cx + cos * x - sin * y, cy + sin * x + cos * y], dim=-1)


def synthetic_digits(n, seed=0):
    """(n, 1, 28, 28) float images in [0, 1] (white strokes on black) and (n,) int64 labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    segs = _segments(labels, g)                                         # (n, S, 2, 2)
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    pix = torch.stack([cols, rows], dim=-1).view(1, 1, 784, 2)          # (x, y) of each pixel
    a, b = segs[:, :, None, 0], segs[:, :, None, 1]                     # (n, S, 1, 2)
    ab = b - a
    t = ((pix - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)
    nearest = a + t.clamp(0, 1)[..., None] * ab                         # closest stroke point
    dist = (pix - nearest).norm(dim=-1).amin(dim=1)                     # (n, 784) pixels
    pen = 0.8 + 1.0 * torch.rand(n, 1, generator=g)                     # half-width, pixels
    ink = (pen - dist + 0.5).clamp(0, 1)                                # antialiased edge
    return ink.view(n, 1, 28, 28), labels


def normalize(images):
    """MNIST standardization of [0, 1] images."""
    return (images - MNIST_MEAN) / MNIST_STD


def load_book_net(data_dir=None):
    """MnistNet with the book's p1ch2/mnist/mnist.pth, loaded strictly."""
    path = book_file(MNIST_PTH, data_dir, name="p1ch2")
    return load_state(MnistNet(), read_torch(path, "--init book"), f"--init book {path}")


def accuracy(model, images, labels, device="cpu"):
    """Fraction of correctly classified images, eval mode."""
    model.eval()
    with torch.inference_mode():
        pred = model(normalize(images).to(device)).argmax(dim=1).cpu()
    return float((pred == labels).float().mean())


def synthetic_batches(steps, batch_size, seed):
    """`steps` batches of (normalized (batch_size, 1, 28, 28) digits, labels), each one drawn
    afresh: the stand-in for the book's MNIST train_loader."""
    for step in range(steps):
        images, labels = synthetic_digits(batch_size, seed=seed * 1_000_003 + step)
        yield normalize(images), labels


def train(model, optimizer, train_loader, device, log_every=0):
    """The book's loop over (images, labels) batches; returns every step's loss and prints
    the mean of the last log_every."""
    model.train()
    losses = []
    for step, (images, labels) in enumerate(train_loader, start=1):
        output = model(images.to(device))
        loss = F.nll_loss(output, labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and step % log_every == 0:
            print(f"  step {step:5d}  loss {sum(losses[-log_every:]) / log_every:.4f}")
    return losses


def save_samples(images, labels, path):
    """A grid of digits with their labels, as PNG."""
    n = min(len(images), 32)
    fig = new_figure(figsize=(math.ceil(n / 4) * 1.2, 5))
    axes = fig.subplots(4, math.ceil(n / 4), squeeze=False)
    for ax, img, label in zip(axes.flat, images[:n], labels[:n], strict=False):
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(str(int(label)), fontsize=9)
        ax.axis("off")
    fig.suptitle("synthetic digits (the MNIST stand-in)")
    return save_figure(fig, path, dpi=80)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--init", choices=["random", "book"], default="random",
                   help="start untrained, or from the book's p1ch2/mnist/mnist.pth")
    p.add_argument("--steps", type=int, default=300, help="SGD steps (batches of synthetic digits)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--n-test", type=int, default=1000, help="held-out synthetic digits")
    p.add_argument("--out", default=str(runs_dir("ch01")),
                   help="folder for mnist_samples.png (default: %(default)s)")
    add_data_dir_argument(p)
    add_device_argument(p)
    args = p.parse_args(argv)
    for flag, value, least in (("--steps", args.steps, 0), ("--batch-size", args.batch_size, 1),
                               ("--n-test", args.n_test, 1)):
        if value < least:
            raise DataError(f"{flag} {value}: must be at least {least}")
    out = output_dir(args.out, "--out")                  # before any work
    device = pick_device(args.device)

    seed_everything(args.seed)
    model = load_book_net(args.data_dir) if args.init == "book" else MnistNet()
    model.to(device)
    test_images, test_labels = synthetic_digits(args.n_test, seed=args.seed)
    png = save_samples(test_images, test_labels, out / "mnist_samples.png")

    before = accuracy(model, test_images, test_labels, device)
    print(f"{args.init} init: accuracy on {args.n_test} held-out synthetic digits {before:.1%}")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    train_loader = synthetic_batches(args.steps, args.batch_size, seed=args.seed)
    losses = train(model, optimizer, train_loader, device, log_every=max(1, args.steps // 10))
    after = accuracy(model, test_images, test_labels, device)
    print(f"after {args.steps} steps: accuracy {after:.1%}")
    print(f"wrote {png}")
    return {"model": model, "losses": losses, "accuracy_before": before, "accuracy_after": after,
            "png": png}


if __name__ == "__main__":
    run_cli(main)
