"""FC-DenseNet ("The One Hundred Layers Tiramisu", Jégou et al., CVPRW 2017).

Implemented by hand: neither timm, torchvision nor segmentation-models-pytorch provides it.
The three variants of the paper are registered as ``tiramisu56``, ``tiramisu67`` and
``tiramisu103`` and follow its Tables 1 and 2:

* first layer: 3x3 conv with 48 filters;
* dense layer: BN - ReLU - 3x3 conv (``growth_rate`` filters) - dropout;
* transition down: BN - ReLU - 1x1 conv (same number of channels) - dropout - 2x2 max-pool;
* transition up: 3x3 transposed conv, stride 2, applied only to the *new* feature maps of the
  preceding dense block (this keeps the upsampling path from exploding in width), then
  concatenated with the skip connection;
* dense blocks of the upsampling path pass on only their new feature maps, except the last one,
  which passes on the full concatenation to the final 1x1 conv (``num_classes`` filters).

The output is raw logits (no softmax), shape ``(N, num_classes, H, W)``. Five 2x2 poolings
mean ``H`` and ``W`` must be multiples of 32.

Trainable parameters for 3 input channels and 11 classes: 1.38M / 3.46M / 9.32M, against the
paper's 1.5M / 3.5M / 9.4M. The authors' Lasagne count also includes the BatchNorm running
statistics (giving 1.40M / 3.50M / 9.43M); the paper's 1.5M for FC-DenseNet56 cannot be
reproduced from its stated configuration, by this or other reimplementations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medpipe.errors import ConfigError
from medpipe.models.registry import register_model

FIRST_CONV_FILTERS = 48
DOWNSAMPLE_FACTOR = 32  # 2 ** number of transition-down layers


class DenseLayer(nn.Sequential):
    """BN - ReLU - 3x3 conv - dropout, producing ``growth_rate`` new feature maps."""

    def __init__(self, in_channels: int, growth_rate: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth_rate, kernel_size=3, padding=1, bias=True),
            nn.Dropout(dropout),
        )


class DenseBlock(nn.Module):
    """``n_layers`` dense layers, each fed the concatenation of the input and all previous outputs.

    With ``new_only=True`` the block returns only the ``n_layers * growth_rate`` maps it created
    (used in the bottleneck and the upsampling path), otherwise input and new maps concatenated.
    """

    def __init__(
        self, in_channels: int, growth_rate: int, n_layers: int, dropout: float, new_only: bool
    ) -> None:
        super().__init__()
        self.new_only = new_only
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, dropout) for i in range(n_layers)
        )
        self.out_channels = n_layers * growth_rate + (0 if new_only else in_channels)

    def forward(self, x: Tensor) -> Tensor:
        new: list[Tensor] = []
        for layer in self.layers:
            out = layer(x)
            x = torch.cat([x, out], dim=1)
            new.append(out)
        return torch.cat(new, dim=1) if self.new_only else x


class TransitionDown(nn.Sequential):
    """BN - ReLU - 1x1 conv (channels kept) - dropout - 2x2 max-pool."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=1, bias=True),
            nn.Dropout(dropout),
            nn.MaxPool2d(2),
        )


class TransitionUp(nn.Module):
    """3x3 transposed conv, stride 2 (exactly doubles H and W), then concat with the skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(
            channels, channels, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return torch.cat([self.up(x), skip], dim=1)


class FCDenseNet(nn.Module):
    """Fully convolutional DenseNet for semantic segmentation (see module docstring)."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        down_blocks: Sequence[int],
        bottleneck_layers: int,
        up_blocks: Sequence[int],
        growth_rate: int,
        dropout: float = 0.2,
        first_conv_filters: int = FIRST_CONV_FILTERS,
    ) -> None:
        super().__init__()
        if len(down_blocks) != len(up_blocks):
            raise ConfigError(
                f"FC-DenseNet needs as many up blocks as down blocks, got {list(down_blocks)} "
                f"and {list(up_blocks)}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"model.dropout={dropout!r} must be in [0, 1); the paper uses 0.2")
        self.downsample_factor = 2 ** len(down_blocks)

        self.first_conv = nn.Conv2d(
            in_channels, first_conv_filters, kernel_size=3, padding=1, bias=True
        )
        channels = first_conv_filters

        self.down_dense = nn.ModuleList()
        self.trans_down = nn.ModuleList()
        skip_channels: list[int] = []
        for n_layers in down_blocks:
            block = DenseBlock(channels, growth_rate, n_layers, dropout, new_only=False)
            self.down_dense.append(block)
            channels = block.out_channels
            skip_channels.append(channels)
            self.trans_down.append(TransitionDown(channels, dropout))

        self.bottleneck = DenseBlock(channels, growth_rate, bottleneck_layers, dropout, True)
        prev_new = self.bottleneck.out_channels  # only the new maps go up

        self.trans_up = nn.ModuleList()
        self.up_dense = nn.ModuleList()
        for i, n_layers in enumerate(up_blocks):
            last = i == len(up_blocks) - 1
            self.trans_up.append(TransitionUp(prev_new))
            channels = prev_new + skip_channels[-1 - i]
            block = DenseBlock(channels, growth_rate, n_layers, dropout, new_only=not last)
            self.up_dense.append(block)
            prev_new = block.out_channels

        self.final_conv = nn.Conv2d(prev_new, num_classes, kernel_size=1, bias=True)
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper initialises with HeUniform and zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        f = self.downsample_factor
        if h % f or w % f:
            raise ConfigError(
                f"FC-DenseNet (tiramisu) input is {h}x{w} pixels but height and width must be "
                f"multiples of {f}; resize or pad the images to a multiple of {f} "
                f"(e.g. {((h + f - 1) // f) * f}x{((w + f - 1) // f) * f})"
            )
        x = self.first_conv(x)
        skips: list[Tensor] = []
        for block, down in zip(self.down_dense, self.trans_down, strict=True):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, block in zip(self.trans_up, self.up_dense, strict=True):
            x = up(x, skips.pop())
            x = block(x)
        return self.final_conv(x)


@register_model("tiramisu56")
def tiramisu56(
    *, in_channels: int, num_classes: int, dropout: float = 0.2, **_: object
) -> nn.Module:
    """FC-DenseNet56: 4 layers per dense block, growth rate 12 (about 1.5M parameters)."""
    return FCDenseNet(
        in_channels=in_channels,
        num_classes=num_classes,
        down_blocks=(4,) * 5,
        bottleneck_layers=4,
        up_blocks=(4,) * 5,
        growth_rate=12,
        dropout=dropout,
    )


@register_model("tiramisu67")
def tiramisu67(
    *, in_channels: int, num_classes: int, dropout: float = 0.2, **_: object
) -> nn.Module:
    """FC-DenseNet67: 5 layers per dense block, growth rate 16 (about 3.5M parameters)."""
    return FCDenseNet(
        in_channels=in_channels,
        num_classes=num_classes,
        down_blocks=(5,) * 5,
        bottleneck_layers=5,
        up_blocks=(5,) * 5,
        growth_rate=16,
        dropout=dropout,
    )


@register_model("tiramisu103")
def tiramisu103(
    *, in_channels: int, num_classes: int, dropout: float = 0.2, **_: object
) -> nn.Module:
    """FC-DenseNet103: blocks 4-5-7-10-12, bottleneck 15, mirrored up path, growth rate 16."""
    return FCDenseNet(
        in_channels=in_channels,
        num_classes=num_classes,
        down_blocks=(4, 5, 7, 10, 12),
        bottleneck_layers=15,
        up_blocks=(12, 10, 7, 5, 4),
        growth_rate=16,
        dropout=dropout,
    )
