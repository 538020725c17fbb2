"""Chapter 2: ResNet-101, written out with torchvision's parameter names.

    python ch01_intro/resnet.py        # prints the layer plan and the parameter count

The book calls `torchvision.models.resnet101(pretrained=True)`. This file builds the same
network in plain torch (Bottleneck blocks [3, 4, 23, 3], stride on the 3x3 conv as torchvision
does), so torchvision's published state_dict loads with a strict `load_state_dict`:
conv1, bn1, layer1..layer4 (`layerL.B.conv1/bn1/conv2/bn2/conv3/bn3`, and
`layerL.0.downsample.0/.1` where the shape changes), fc. 44,549,160 parameters.
"""
import argparse

from torch import nn

from common.errors import run_cli

RESNET101_LAYERS = (3, 4, 23, 3)     # Bottleneck blocks per stage
EXPANSION = 4                        # a Bottleneck's output has 4x its inner width


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand, each with BatchNorm; residual add."""

    def __init__(self, in_channels, width, stride=1):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None                       # the skip path when shapes differ
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem (7x7/2 conv, max pool /2), four Bottleneck stages, global average pool, fc."""

    def __init__(self, layers=RESNET101_LAYERS, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        widths = (64, 128, 256, 512)                       # inner width of each stage
        for i, (n_blocks, width) in enumerate(zip(layers, widths, strict=True), start=1):
            stride = 1 if i == 1 else 2                     # stages 2-4 halve the resolution
            blocks = [Bottleneck(in_channels, width, stride)]
            in_channels = width * EXPANSION
            blocks += [Bottleneck(in_channels, width) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))  # names layer1..layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)      # 2048 -> 1000
        for m in self.modules():                           # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):                                  # x: (N, 3, 224, 224), normalized
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))           # (N, 64, 56, 56)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))      # (N, 2048, 7, 7)
        return self.fc(self.avgpool(x).flatten(1))                      # (N, 1000) logits


def resnet101(num_classes=1000):
    """ResNet-101 with freshly initialized weights (load torchvision's state_dict for real use)."""
    return ResNet(RESNET101_LAYERS, num_classes)


def count_parameters(model):
    """Number of trainable scalars (a shared parameter counted once); the one count every
    chapter prints (ch5's subclassing, ch7's and ch8's CIFAR nets import it)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.parse_args(argv)
    model = resnet101()
    for name, child in model.named_children():
        n = count_parameters(child)
        blocks = f"{len(child)} Bottleneck blocks" if isinstance(child, nn.Sequential) else ""
        print(f"  {name:8s} {type(child).__name__:18s} {blocks:22s} {n:>12,} parameters")
    total = count_parameters(model)
    print(f"ResNet-101: {total:,} parameters, {len(model.state_dict())} state_dict entries")
    return model


if __name__ == "__main__":
    run_cli(main)
