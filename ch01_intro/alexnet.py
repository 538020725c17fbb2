"""Chapter 2: AlexNet, the 2012 ImageNet winner, instantiated untrained.

    python ch01_intro/alexnet.py      # layer list, 61,100,840 parameters, (N, 1000) output

The book instantiates `torchvision.models.AlexNet()` to show that a model is just a callable
object with parameters. The same network in plain torch with torchvision's names (`features.N`,
`classifier.N`): five convolutions with ReLU and three max pools, a 6x6 adaptive average
pool, then three fully connected layers with dropout.
"""
import argparse

import torch
from torch import nn

from ch01_intro.resnet import count_parameters
from common.errors import DataError, run_cli


class AlexNet(nn.Module):
    """(N, 3, 224, 224) -> (N, num_classes) logits."""

    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),                               # 55 -> 27
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),                               # 27 -> 13
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2))                               # 13 -> 6
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))       # any input size >= 63 -> 6x6
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))               # (N, 256, 6, 6)
        return self.classifier(x.flatten(1))              # (N, 9216) -> (N, 1000)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=2, help="random images to push through")
    args = p.parse_args(argv)
    if args.batch < 1:
        raise DataError(f"--batch {args.batch}: must be at least 1")
    torch.manual_seed(0)
    model = AlexNet().eval()
    print(model)
    with torch.inference_mode():
        out = model(torch.rand(args.batch, 3, 224, 224))
    print(f"AlexNet: {count_parameters(model):,} parameters; "
          f"input ({args.batch}, 3, 224, 224) -> output {tuple(out.shape)}")
    return model, out


if __name__ == "__main__":
    run_cli(main)
