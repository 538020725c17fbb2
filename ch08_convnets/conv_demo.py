"""Chapter 8: convolutions by hand: shapes, padding, a blur and an edge kernel, pooling, flattening.

    python ch08_convnets/conv_demo.py    # on a CIFAR-2 image (synthetic when CIFAR-10 is absent)

Prints the weight and output shapes of Conv2d(3, 16, 3) with and without padding, the pooled shape,
the receptive field of conv-pool-conv, and the error of the Sequential model that forgot to
flatten; writes runs/ch08/conv_demo.png in the repository (the image, its blur and its vertical
edges).
"""
import argparse

import torch
from torch import nn

from ch01_intro.resnet import count_parameters
from ch07_cifar.cifar import cifar2, load_cifar10, to_tensor
from ch07_cifar.synthetic import choose_cifar_dir
from common.data import add_data_dir_argument
from common.errors import DataError, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir


def blur_conv():
    """Conv2d(3, 1, 3, padding=1) averaging each 3x3 neighbourhood, summed over the channels."""
    conv = nn.Conv2d(3, 1, kernel_size=3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(1.0 / 9.0)
        conv.bias.zero_()
    return conv


def edge_conv():
    """Conv2d(3, 1, 3, padding=1): right neighbour minus left one, so vertical edges light up."""
    conv = nn.Conv2d(3, 1, kernel_size=3, padding=1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([[-1.0, 0.0, 1.0],
                                       [-1.0, 0.0, 1.0],
                                       [-1.0, 0.0, 1.0]])
        conv.bias.zero_()
    return conv


def receptive_field(layers):
    """Side of the input square one output pixel sees, for [(kernel, stride), ...] in order."""
    field, jump = 1, 1
    for kernel, stride in layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field


def sequential_net(flatten=False):
    """The book's first nn.Sequential convnet; without flatten it fails on its first batch."""
    layers = [nn.Conv2d(3, 16, kernel_size=3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
              nn.Conv2d(16, 8, kernel_size=3, padding=1), nn.Tanh(), nn.MaxPool2d(2)]
    if flatten:
        layers.append(nn.Flatten())      # (N, 8, 8, 8) -> (N, 512): the missing step
    layers += [nn.Linear(8 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 2)]
    return nn.Sequential(*layers)


def plot_filters(img, blurred, edges, path):
    """Input image and the two filter outputs side by side, as a PNG."""
    fig = new_figure(figsize=(9, 3.3))
    axes = fig.subplots(1, 3)
    panels = ((img.permute(1, 2, 0), "input", None), (blurred[0], "blur (1/9 kernel)", "gray"),
              (edges[0], "vertical edges [-1 0 1]", "gray"))
    for ax, (data, title, cmap) in zip(axes, panels, strict=True):
        ax.imshow((data.clamp(0, 1) if cmap is None else data).numpy(), cmap=cmap)
        ax.set_title(title)
        ax.axis("off")
    return save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--synthetic", action="store_true", help="use the built-in synthetic sample")
    p.add_argument("--out", default=str(runs_dir("ch08")),
                   help="folder for the PNG (default: %(default)s)")
    args = p.parse_args(argv)
    out = check_writable(args.out, "--out")      # made by the first write, not before
    torch.manual_seed(0)

    cifar_dir, _ = choose_cifar_dir(args.data_dir, args.synthetic)
    pairs = cifar2(load_cifar10(cifar_dir, train=False, transform=to_tensor))
    if not pairs:
        raise DataError(f"{cifar_dir}: no airplane or bird among the test images, the demo "
                        "shows the first one")
    img, label = pairs[0]
    x = img.unsqueeze(0)                                       # (1, 3, 32, 32)

    conv = nn.Conv2d(3, 16, kernel_size=3)
    print(f"Conv2d(3, 16, 3): weight {tuple(conv.weight.shape)}, bias {tuple(conv.bias.shape)};"
          f" {tuple(x.shape)} -> {tuple(conv(x).shape)}")
    padded = nn.Conv2d(3, 16, kernel_size=3, padding=1)
    print(f"with padding=1: -> {tuple(padded(x).shape)}")
    with torch.no_grad():
        blurred, edges = blur_conv()(x)[0], edge_conv()(x)[0]
    pooled = nn.MaxPool2d(2)(x)
    print(f"MaxPool2d(2): {tuple(x.shape)} -> {tuple(pooled.shape)}")
    field = receptive_field([(3, 1), (2, 2), (3, 1)])
    print(f"conv 3x3 -> pool 2 -> conv 3x3: each output pixel sees a {field}x{field} patch")

    model = sequential_net(flatten=False)
    print(f"Sequential convnet: {count_parameters(model):,} parameters")
    try:
        model(x)
        error = None
    except RuntimeError as e:
        error = str(e)
        print(f"forgetting to flatten (N, 8, 8, 8) before Linear(512, 32): RuntimeError: {e}")
    print(f"with nn.Flatten(): output {tuple(sequential_net(flatten=True)(x).shape)}")
    png = plot_filters(img, blurred, edges, out / "conv_demo.png")
    print(f"wrote {png}  (a CIFAR-2 {('airplane', 'bird')[label]})")
    return {"conv_out": tuple(conv(x).shape), "padded_out": tuple(padded(x).shape),
            "pooled": tuple(pooled.shape), "receptive_field": field, "error": error, "png": png}


if __name__ == "__main__":
    run_cli(main)
