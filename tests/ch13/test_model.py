"""U-Net and UNetWrapper: the book's shapes, count and checkpoints; tracing; CPU/GPU parity."""
import math
import warnings

import pytest
import torch

from ch13_segment.model import UNet, UNetWrapper, center_crop

BOOK_KWARGS = dict(in_channels=7, n_classes=1, depth=3, wf=4, padding=True, batch_norm=True,
                   up_mode="upconv")
BOOK_SEG = ("part2/models/"
            "seg_2020-01-26_19.45.12_w4d3c1-bal_1_nodupe-label_pos-d1_fn8-adam.best.state")
# A 2019 pre-release run: 8 input channels, depth 4, wf 3 (read off the state_dict's shapes).
BOOK_SEG_2019 = ("part2/models/"
                 "seg_2019-06-22_22.55.11_ch12-no-aug-bn-all-metrics-more-samples.750000.state")
SEG_2019_KWARGS = dict(BOOK_KWARGS, in_channels=8, depth=4, wf=3)

# torch 2.13 flags torch.jit.trace/script as deprecated; chapter 15 still uses them.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


def load_book_model(path, **kwargs):
    model = UNetWrapper(**kwargs)
    state = torch.load(path, weights_only=True, map_location="cpu")
    model.load_state_dict(state["model_state"])                 # strict: every key, every shape
    return model.eval()


def planted_nodule(size=128, radius=5.0, seed=0):
    """(1, 7, size, size) HU: noisy lung (-850) in a soft-tissue ring, one ball near the centre.

    Returns the input and the (1, 1, size, size) mask of the ball on the centre slice. The seven
    channels are the centre slice and three context slices either side (about 2.5 mm apart for
    0.7 mm pixels, so the ball shrinks quickly off-centre), as the book's dataset builds them.
    """
    g = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(torch.arange(7.0) - 3, torch.arange(size) - size / 2,
                             torch.arange(size) - size / 2, indexing="ij")
    hu = -850 + 30 * torch.randn(7, size, size, generator=g)
    hu[y ** 2 + x ** 2 > (0.45 * size) ** 2] = 40.0             # chest wall
    ball = (2 * z) ** 2 + y ** 2 + (x - 10) ** 2 < radius ** 2
    hu[ball] = 30 + 30 * torch.randn(int(ball.sum()), generator=g)
    return hu.clamp(-1000, 1000)[None], ball[3][None, None]


def test_book_wrapper_has_the_books_parameter_count():
    assert sum(p.numel() for p in UNetWrapper(**BOOK_KWARGS).parameters()) == 118_271


@pytest.mark.parametrize("shape", [(2, 7, 64, 64), (1, 7, 96, 128)])
def test_book_wrapper_output_is_a_probability_map_of_the_input_size(shape):
    torch.manual_seed(0)
    out = UNetWrapper(**BOOK_KWARGS)(torch.rand(shape) * 2000 - 1000)
    assert out.shape == (shape[0], 1, *shape[2:])
    assert out.min() >= 0 and out.max() <= 1


def test_default_unet_maps_572_to_388():
    # The paper's geometry: the shape arithmetic depends only on depth and padding, so wf=1
    # (2..32 filters instead of 64..1024) keeps this under a second on a CPU.
    with torch.no_grad():
        assert UNet(wf=1)(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)
    with torch.device("meta"):                                  # full size: count without memory
        assert sum(p.numel() for p in UNet().parameters()) == 31_030_658


def test_padded_unet_keeps_the_input_size():
    with torch.no_grad():
        assert UNet(wf=1, padding=True)(torch.randn(1, 1, 64, 48)).shape == (1, 2, 64, 48)


def test_upsample_mode():
    model = UNetWrapper(**dict(BOOK_KWARGS, up_mode="upsample"))
    assert isinstance(model.unet.up_path[0].up[0], torch.nn.Upsample)
    out = model(torch.rand(2, 7, 64, 64) * 2000 - 1000)
    assert out.shape == (2, 1, 64, 64) and 0 <= out.min() <= out.max() <= 1
    with torch.no_grad():                                       # unpadded too
        assert UNet(wf=1, up_mode="upsample")(torch.randn(1, 1, 572, 572)).shape[-1] == 388
    with pytest.raises(ValueError, match="up_mode"):
        UNet(up_mode="deconv")


def test_center_crop_takes_the_middle():
    x = torch.arange(7 * 8.0).reshape(1, 1, 7, 8)
    crop = center_crop(x, 4, 2)                                 # rows (7-4)//2=1..4, cols 3..4
    torch.testing.assert_close(crop, x[:, :, 1:5, 3:5])
    assert center_crop(x, 7, 8).data_ptr() == x.data_ptr()      # nothing to crop: a view


def test_wrapper_init_is_kaiming_fan_out_with_symmetric_biases():
    torch.manual_seed(0)
    conv = UNetWrapper(**BOOK_KWARGS).unet.down_path[2].block[3]  # Conv2d(64, 64, 3)
    fan_out = 64 * 3 * 3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    bound = 1 / math.sqrt(fan_out)
    assert -bound <= conv.bias.min() < 0 < conv.bias.max() <= bound


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = UNetWrapper(**BOOK_KWARGS)
    model(torch.rand(2, 7, 32, 32) * 2000 - 1000).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_tracing_emits_no_tracer_warning_and_follows_the_input_size():
    torch.manual_seed(0)
    model = UNetWrapper(**BOOK_KWARGS).eval()
    x = torch.rand(1, 7, 64, 64) * 2000 - 1000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x)
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    for shape in [(1, 7, 64, 64), (2, 7, 96, 128)]:             # the crop is not frozen at 64
        x = torch.rand(shape) * 2000 - 1000
        torch.testing.assert_close(traced(x), model(x))


def test_traced_unpadded_unet_crops_at_other_sizes():
    # Without padding the skip crops are real (offsets 4 and 16 here): traced at 44x44 (out 4x4),
    # run at 60x52 (out 20x12).
    model = UNet(depth=3, wf=2).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, torch.randn(1, 1, 44, 44))
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    x = torch.randn(1, 1, 60, 52)
    assert traced(x).shape == (1, 2, 20, 12)
    torch.testing.assert_close(traced(x), model(x))


def test_wrapper_can_be_scripted():
    model = UNetWrapper(**BOOK_KWARGS).eval()
    x = torch.rand(1, 7, 32, 48) * 2000 - 1000
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


@pytest.mark.realdata
def test_book_checkpoint_loads_and_finds_a_planted_nodule(book_file):
    model = load_book_model(book_file(BOOK_SEG), **BOOK_KWARGS)
    with torch.no_grad():
        out = model(planted_nodule(size=64)[0])
        assert out.shape == (1, 1, 64, 64) and torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1
        # The trained net outlines the ball (Dice 0.93). This also pins the architecture:
        # max-pooling instead of the book's average pooling gives Dice 0.45 here.
        x, ball = planted_nodule(size=128, radius=5.0)
        pred = model(x) > 0.5
    dice = 2 * (pred & ball).sum() / (pred.sum() + ball.sum())
    assert dice > 0.85


@pytest.mark.realdata
def test_book_checkpoint_was_trained_with_relu_before_batchnorm(book_file):
    # Every BatchNorm in a conv block follows a ReLU, so its running mean cannot be negative
    # (a LeakyReLU, which one version of the book's vendored unet.py used, would allow it).
    state = torch.load(book_file(BOOK_SEG), weights_only=True, map_location="cpu")["model_state"]
    means = [v for k, v in state.items() if k.startswith("unet.") and k.endswith("running_mean")]
    assert len(means) == 10 and all((m >= 0).all() for m in means)


@pytest.mark.realdata
def test_2019_book_checkpoint_loads_with_depth_4_wf_3(book_file):
    # Its input BatchNorm saw values around 0.3 (not HU), so only shape and range are checked.
    model = load_book_model(book_file(BOOK_SEG_2019), **SEG_2019_KWARGS)
    assert sum(p.numel() for p in model.parameters()) == 121_905
    with torch.no_grad():
        out = model(torch.rand(1, 8, 64, 64))
    assert out.shape == (1, 1, 64, 64) and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.gpu
def test_cpu_and_gpu_agree(cuda, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)   # TF32 drifts by ~1e-3
    torch.manual_seed(0)
    model, x = UNetWrapper(**BOOK_KWARGS).eval(), torch.rand(2, 7, 64, 64) * 2000 - 1000
    with torch.no_grad():
        expected, actual = model(x), model.to(cuda)(x.to(cuda)).cpu()
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4)
