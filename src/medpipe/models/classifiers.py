"""Classification networks: the course's seed CNN, LeNet-5, and ResNet-18/50.

ResNets come from torchvision (default) or timm. ``small_input=True`` swaps the 7x7/stride-2 stem
and max-pool for a 3x3/stride-1 convolution, as in the MedMNIST v2 baselines, so 28x28 inputs are
not collapsed to 1x1 before the last stage.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from torch import nn

from medpipe.errors import ConfigError
from medpipe.models.registry import register_model


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SeedCNN(nn.Module):
    """[Conv-BN-ReLU-MaxPool] x len(channels), global average pool, then FC layers with dropout.

    Global pooling makes the head independent of the input size (28, 64, 224 px alike).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128),
        hidden: Sequence[int] = (128,),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if not channels:
            raise ConfigError("model.channels must list at least one conv width")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
        widths = [in_channels, *channels]
        self.features = nn.Sequential(*(_conv_block(a, b) for a, b in itertools.pairwise(widths)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        layers: list[nn.Module] = [nn.Flatten()]
        prev = widths[-1]
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pool; inputs are resized-free via padding.

    28x28 inputs are padded to 32x32 as in the original; other sizes go through an adaptive pool
    to the 5x5 map the first FC layer expects.
    """

    def __init__(self, *, in_channels: int, num_classes: int, **_: Any) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def _small_stem_torchvision(model: nn.Module, in_channels: int) -> None:
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def _resnet(
    depth: int,
    *,
    in_channels: int,
    num_classes: int,
    source: str = "torchvision",
    small_input: bool = True,
    **_: Any,
) -> nn.Module:
    if source == "torchvision":
        import torchvision

        model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
        if small_input:
            _small_stem_torchvision(model, in_channels)
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        return model
    if source == "timm":
        import timm

        model = timm.create_model(
            f"resnet{depth}", pretrained=False, num_classes=num_classes, in_chans=in_channels
        )
        if small_input:
            model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        return model
    raise ConfigError(f"model.source={source!r}: use 'torchvision' or 'timm'")


@register_model("cnn")
def seed_cnn(**kwargs: Any) -> nn.Module:
    """The seed CNN; options: channels, hidden, dropout."""
    return SeedCNN(**kwargs)


@register_model("lenet5")
def lenet5(**kwargs: Any) -> nn.Module:
    """LeNet-5."""
    return LeNet5(**kwargs)


@register_model("resnet18")
def resnet18(**kwargs: Any) -> nn.Module:
    """ResNet-18; options: source (torchvision|timm), small_input."""
    return _resnet(18, **kwargs)


@register_model("resnet50")
def resnet50(**kwargs: Any) -> nn.Module:
    """ResNet-50; options: source (torchvision|timm), small_input."""
    return _resnet(50, **kwargs)
