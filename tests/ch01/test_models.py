"""The chapter 2 networks: parameter counts, state_dict names, shapes, eval determinism."""
import pytest
import torch

from ch01_intro.alexnet import AlexNet
from ch01_intro.cyclegan import ResNetGenerator
from ch01_intro.resnet import Bottleneck, count_parameters, resnet101

BN_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_resnet101_keys():
    """torchvision's resnet101 state_dict names, spelled out from its layout rules.

    Stem conv1 + bn1; stages layer1..4 of [3, 4, 23, 3] Bottlenecks, each conv1/bn1/conv2/bn2/
    conv3/bn3, the first of each stage with downsample.0 (conv) and downsample.1 (BN); fc.
    """
    keys = ["conv1.weight"] + [f"bn1.{e}" for e in BN_ENTRIES]
    for stage, n_blocks in enumerate((3, 4, 23, 3), start=1):
        for b in range(n_blocks):
            prefix = f"layer{stage}.{b}"
            for i in (1, 2, 3):
                keys += [f"{prefix}.conv{i}.weight"] + [f"{prefix}.bn{i}.{e}" for e in BN_ENTRIES]
            if b == 0:
                keys += [f"{prefix}.downsample.0.weight"]
                keys += [f"{prefix}.downsample.1.{e}" for e in BN_ENTRIES]
    return keys + ["fc.weight", "fc.bias"]


# The keys of the book's horse2zebra_0.4.0.pth, as published (Sequential indices of the weights).
HORSE2ZEBRA_KEYS = (
    [f"model.{i}.{p}" for i in (1, 4, 7) for p in ("weight", "bias")]
    + [f"model.{i}.conv_block.{j}.{p}" for i in range(10, 19) for j in (1, 5)
       for p in ("weight", "bias")]
    + [f"model.{i}.{p}" for i in (19, 22, 26) for p in ("weight", "bias")])


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return resnet101().eval()


def test_resnet101_has_the_books_parameter_count(resnet):
    assert count_parameters(resnet) == 44_549_160


def test_resnet101_state_dict_names_are_torchvisions(resnet):
    keys = list(resnet.state_dict())
    for name in ("layer3.22.bn3.running_var", "layer1.0.downsample.0.weight",
                 "layer4.2.conv3.weight", "layer2.0.downsample.1.num_batches_tracked",
                 "bn1.running_mean", "fc.bias"):
        assert name in keys
    assert "layer1.1.downsample.0.weight" not in keys       # only the first block of a stage
    assert keys == torchvision_resnet101_keys()              # same names, same order
    assert len(keys) == 626


def test_resnet101_shapes_follow_torchvision(resnet):
    state = resnet.state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)   # stride on the 3x3 conv
    assert resnet.layer2[0].conv2.stride == (2, 2) and resnet.layer2[0].conv1.stride == (1, 1)
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert state["fc.weight"].shape == (1000, 2048)


def test_resnet101_eval_is_deterministic_and_leaves_bn_alone(resnet):
    x = torch.randn(1, 3, 64, 64)                 # small input: the pooling is adaptive
    before = resnet.layer3[5].bn2.running_mean.clone()
    with torch.no_grad():
        a, b = resnet(x), resnet(x)
    assert a.shape == (1, 1000)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(resnet.layer3[5].bn2.running_mean, before)


def test_bottleneck_skip_path():
    block = Bottleneck(64, 64)                     # 64 -> 256 channels: needs a downsample
    assert block.downsample is not None
    assert block(torch.randn(2, 64, 8, 8)).shape == (2, 256, 8, 8)
    same = Bottleneck(256, 64)
    assert same.downsample is None
    strided = Bottleneck(256, 128, stride=2)
    assert strided(torch.randn(1, 256, 8, 8)).shape == (1, 512, 4, 4)


def test_cyclegan_generator_count_and_names():
    model = ResNetGenerator()
    assert count_parameters(model) == 11_378_179
    assert list(model.state_dict()) == HORSE2ZEBRA_KEYS       # no InstanceNorm entries


def test_cyclegan_keeps_the_shape_and_the_tanh_range():
    torch.manual_seed(0)
    model = ResNetGenerator(ngf=16).eval()          # same layout, narrower: fast on a CPU
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape
    assert out.min() >= -1 and out.max() <= 1
    assert out.std() > 0


def test_alexnet_count_and_output():
    torch.manual_seed(0)
    model = AlexNet().eval()
    assert count_parameters(model) == 61_100_840
    with torch.no_grad():
        out = model(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    assert [k for k in model.state_dict() if k.endswith("weight")] == [
        "features.0.weight", "features.3.weight", "features.6.weight", "features.8.weight",
        "features.10.weight", "classifier.1.weight", "classifier.4.weight",
        "classifier.6.weight"]


@pytest.mark.gpu
def test_resnet_cpu_and_gpu_agree(cuda, resnet, monkeypatch):   # cuda first: skip unbuilt
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    x = torch.randn(2, 3, 96, 96)
    gpu_model = resnet101().eval()
    gpu_model.load_state_dict(resnet.state_dict())
    with torch.no_grad():
        expected = resnet(x)
        actual = gpu_model.to(cuda)(x.to(cuda)).cpu()
    scale = expected.abs().max()
    torch.testing.assert_close(actual / scale, expected / scale, rtol=1e-3, atol=1e-4)
