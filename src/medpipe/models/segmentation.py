"""U-Net (Ronneberger et al. 2015) from segmentation-models-pytorch, registered as ``unet``.

The encoder is any timm network, used through smp's timm-universal encoder (``tu-<name>``), so
its pretrained weights come from the same registry as the classifiers'
(:mod:`medpipe.models.weights`): ``model.pretrained`` = ``null`` | ``imagenet`` | ``offline``
(bundled EfficientNet-Lite0 ImageNet weights, no network) | a checkpoint path (a classifier or
U-Net trained by this pipeline: only its encoder tensors are used). smp's own weight download is
never used, so an offline machine behaves exactly like the classification models.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence

import segmentation_models_pytorch as smp
import timm
from torch import Tensor, nn

from medpipe.errors import ConfigError
from medpipe.models.registry import register_model
from medpipe.models.weights import (
    LoadReport,
    fetch_state_dict,
    load_matching_state_dict,
    normalize_spec,
)

DEFAULT_ENCODER = "efficientnet_lite0"
_SEG_ENCODER_PREFIX = "encoder.model."


def _check_encoder(encoder: str) -> str:
    name = str(encoder).removeprefix("tu-")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ConfigError(
            f"model.encoder={encoder!r} is not a timm model.{hint} Use a timm name such as "
            "efficientnet_lite0 (offline weights), resnet18, resnet34."
        )
    return name


def _stem_name(encoder: str) -> str | None:
    cfg = timm.models.get_pretrained_cfg(encoder)
    first = getattr(cfg, "first_conv", None)
    return first if isinstance(first, str) else None


def load_encoder_weights(
    unet: smp.Unet, encoder: str, pretrained: str | os.PathLike[str] | None
) -> LoadReport | None:
    """Load ``pretrained`` into the U-Net's timm encoder; classifier/decoder tensors are ignored.

    The encoder network (``unet.encoder.model``) has timm's own keys, so ImageNet and offline
    weights load unchanged; a U-Net checkpoint's ``encoder.model.`` prefix is stripped first.
    """
    spec = normalize_spec(pretrained)
    if spec is None:
        return None
    state, origin = fetch_state_dict(spec, encoder)
    state = {
        (k.split(_SEG_ENCODER_PREFIX, 1)[1] if _SEG_ENCODER_PREFIX in k else k): v
        for k, v in state.items()
    }
    return load_matching_state_dict(
        unet.encoder.model, state, origin=origin, stem_name=_stem_name(encoder)
    )


class UNet(nn.Module):
    """smp U-Net with a timm encoder; ``forward`` returns logits ``(N, classes, H, W)``."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        encoder: str = DEFAULT_ENCODER,
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        decoder_attention_type: str | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        self.encoder_name = _check_encoder(encoder)
        if len(decoder_channels) != int(encoder_depth):
            raise ConfigError(
                f"model.decoder_channels={list(decoder_channels)} needs one width per encoder "
                f"stage (model.encoder_depth={encoder_depth})"
            )
        self.net = smp.Unet(
            encoder_name=f"tu-{self.encoder_name}",
            encoder_depth=int(encoder_depth),
            encoder_weights=None,
            decoder_channels=tuple(int(c) for c in decoder_channels),
            decoder_attention_type=decoder_attention_type,
            in_channels=in_channels,
            classes=num_classes,
        )
        self.pretrained = normalize_spec(pretrained)
        self.load_report = load_encoder_weights(self.net, self.encoder_name, self.pretrained)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % 32 or w % 32:
            raise ConfigError(
                f"U-Net input is {h}x{w} pixels; height and width must be multiples of 32 "
                "(set data.size to e.g. 128 or 256)"
            )
        return self.net(x)


@register_model("unet")
def unet(
    *,
    in_channels: int,
    num_classes: int,
    encoder: str = DEFAULT_ENCODER,
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_attention_type: str | None = None,
    pretrained: str | None = None,
    **_: object,
) -> UNet:
    """Registry entry: ``build_model("unet", in_channels=3, num_classes=1, encoder=...)``."""
    return UNet(
        in_channels=in_channels,
        num_classes=num_classes,
        encoder=encoder,
        encoder_depth=encoder_depth,
        decoder_channels=decoder_channels,
        decoder_attention_type=decoder_attention_type,
        pretrained=pretrained,
    )
