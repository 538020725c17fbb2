"""Convolution shapes, hand-set kernels, pooling and the flatten pitfall (book ch8)."""
import pytest
import torch
from torch import nn

from ch01_intro.resnet import count_parameters
from ch08_convnets import conv_demo
from ch08_convnets.conv_demo import blur_conv, edge_conv, receptive_field, sequential_net


def test_conv_shapes_with_and_without_padding():
    x = torch.randn(1, 3, 32, 32)
    conv = nn.Conv2d(3, 16, kernel_size=3)
    assert conv.weight.shape == (16, 3, 3, 3) and conv.bias.shape == (16,)
    assert conv(x).shape == (1, 16, 30, 30)
    assert nn.Conv2d(3, 16, kernel_size=3, padding=1)(x).shape == (1, 16, 32, 32)


def test_blur_of_a_constant_is_constant():
    x = torch.full((1, 3, 12, 12), 0.25)
    with torch.no_grad():
        out = blur_conv()(x)[0, 0]
    interior = out[1:-1, 1:-1]                     # zero padding darkens the border
    torch.testing.assert_close(interior, torch.full_like(interior, 0.75))  # 3 channels x 0.25
    assert (out[0] < 0.75).all()


def test_blur_averages_a_single_bright_pixel():
    x = torch.zeros(1, 3, 5, 5)
    x[0, :, 2, 2] = 1.0
    with torch.no_grad():
        out = blur_conv()(x)[0, 0]
    torch.testing.assert_close(out[1:4, 1:4], torch.full((3, 3), 3 / 9))
    assert out.sum() == pytest.approx(3.0)


def test_edge_of_a_constant_is_zero_and_a_step_lights_up():
    with torch.no_grad():
        flat = edge_conv()(torch.full((1, 3, 8, 8), 0.7))[0, 0]
        step = torch.zeros(1, 3, 8, 8)
        step[..., 4:] = 1.0                        # dark left half, bright right half
        edges = edge_conv()(step)[0, 0]
    torch.testing.assert_close(flat[1:-1, 1:-1], torch.zeros(6, 6))
    assert (edges[1:-1, 3:5] == 9.0).all()        # 3 rows x 3 channels across the step
    assert (edges[1:-1, 1:3] == 0).all() and (edges[1:-1, 5:7] == 0).all()


def test_max_pool_halves_and_takes_the_max():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    pooled = nn.MaxPool2d(2)(x)
    assert pooled.shape == (1, 1, 2, 2)
    assert pooled.flatten().tolist() == [5.0, 7.0, 13.0, 15.0]
    assert nn.MaxPool2d(2)(torch.randn(1, 3, 32, 32)).shape == (1, 3, 16, 16)


def test_receptive_field_of_conv_pool_conv_is_8():
    assert receptive_field([(3, 1)]) == 3
    assert receptive_field([(3, 1), (2, 2), (3, 1)]) == 8


def test_forgetting_to_flatten_raises_and_flatten_fixes_it():
    x = torch.randn(4, 3, 32, 32)
    broken = sequential_net(flatten=False)
    assert count_parameters(broken) == 18_090
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        broken(x)
    assert sequential_net(flatten=True)(x).shape == (4, 2)


def test_script_runs_and_plots(tiny_root, tmp_path):
    result = conv_demo.main(["--data-dir", str(tiny_root), "--synthetic", "--out", str(tmp_path)])
    assert result["conv_out"] == (1, 16, 30, 30) and result["padded_out"] == (1, 16, 32, 32)
    assert result["pooled"] == (1, 3, 16, 16) and result["receptive_field"] == 8
    assert "cannot be multiplied" in result["error"]
    assert result["png"].stat().st_size > 10_000
