"""Transfer-learning classifiers on timm backbones (``model.name=timm``).

:class:`TimmClassifier` wraps one timm network and knows which of its parameters are the
pretrained *backbone* and which the task *head* (timm's ``get_classifier()``), which is what the
fine-tuning modes in :mod:`medpipe.models.finetuning` need: freeze the backbone, give it a lower
learning rate, or unfreeze it part-way through training.

Input channels other than 3 (grey-scale microscopy, CT, multi-channel fluorescence) are handled by
adapting the stem convolution the way timm does (``adapt_input_conv``): for 1 channel the stem
weight is the **sum** of the RGB weights, so a grey image gives exactly the output the RGB network
gives for that image replicated to 3 channels; for N channels the RGB weights are repeated and
scaled by 3/N.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from typing import Any

import timm
from timm.models import adapt_input_conv
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from medpipe.errors import ConfigError
from medpipe.models.registry import register_model
from medpipe.models.weights import (
    LoadReport,
    implies_imagenet_normalization,
    load_pretrained,
    normalize_spec,
)

#: Backbones this pipeline is tested with; any other ``timm.is_model`` name also works.
SUPPORTED_BACKBONES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_lite0",
    "efficientnet_b0",
    "densenet121",
    "mobilenetv3_large_100",
)


def _check_backbone(backbone: str) -> None:
    if not isinstance(backbone, str) or not timm.is_model(backbone):
        close = difflib.get_close_matches(str(backbone), timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ConfigError(
            f"model.backbone={backbone!r} is not a timm model.{hint} Tested backbones: "
            f"{', '.join(SUPPORTED_BACKBONES)} (any name from timm.list_models() works)."
        )


def _module_name(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ValueError("module is not part of the network")


def _stem_conv_name(net: nn.Module) -> str:
    """Dotted name of the first convolution (timm's ``pretrained_cfg['first_conv']``)."""
    first = (getattr(net, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(first, list | tuple):
        first = first[0] if first else None
    modules = dict(net.named_modules())
    if isinstance(first, str) and isinstance(modules.get(first), nn.Conv2d):
        return first
    for name, module in modules.items():
        if isinstance(module, nn.Conv2d):
            return name
    raise ConfigError("model.backbone: the network has no Conv2d stem to adapt to in_channels")


def _modules_excluding(root: nn.Module, excluded: nn.Module) -> list[nn.Module]:
    """Largest sub-modules of ``root`` that do not contain ``excluded``."""
    out: list[nn.Module] = []
    for child in root.children():
        if child is excluded:
            continue
        if any(m is excluded for m in child.modules()):
            out.extend(_modules_excluding(child, excluded))
        else:
            out.append(child)
    return out


class TimmClassifier(nn.Module):
    """A timm classification network split into a pretrained backbone and a task head.

    ``net`` is the timm model itself (so checkpoints hold plain timm keys under ``net.``).
    When ``backbone_bn_frozen`` is set (linear probing, gradual unfreezing), :meth:`train` keeps
    the backbone's BatchNorm layers in eval mode so their running statistics stay pretrained.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        backbone: str,
        in_channels: int,
        num_classes: int,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.backbone_name = backbone
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pretrained = pretrained
        self.head_name = _module_name(net, net.get_classifier())
        self.stem_name = _stem_conv_name(net)
        self.backbone_bn_frozen = False
        self.load_report: LoadReport | None = None
        # Fine-tuning options from config, read by the training task (None = task default).
        self.finetune_mode: str | None = None
        self.backbone_lr_mult: float | None = None
        self.unfreeze_at_epoch: int | None = None

    # -- structure -------------------------------------------------------------------------
    @property
    def head(self) -> nn.Module:
        """The classifier layer (timm's ``get_classifier()``)."""
        return self.net.get_classifier()

    @property
    def num_features(self) -> int:
        """Width of the features the head receives."""
        return int(getattr(self.net, "num_features", 0))

    @property
    def uses_imagenet_normalization(self) -> bool:
        """Whether inputs must be ImageNet-normalised (the weights came from ImageNet)."""
        return implies_imagenet_normalization(self.pretrained)

    def backbone_modules(self) -> list[nn.Module]:
        """Sub-modules forming the backbone (everything but the head); for freezing / BN mode."""
        return _modules_excluding(self.net, self.head)

    def head_modules(self) -> list[nn.Module]:
        """Sub-modules forming the head."""
        return [self.head]

    def named_backbone_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the backbone, names relative to :attr:`net`."""
        prefix = f"{self.head_name}."
        for name, param in self.net.named_parameters():
            if not name.startswith(prefix):
                yield name, param

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters (including any held directly by the root, e.g. ViT tokens)."""
        return [p for _, p in self.named_backbone_parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        """Head parameters."""
        return list(self.head.parameters())

    def param_groups(self, lr: float, backbone_lr_mult: float = 0.1) -> list[dict[str, Any]]:
        """Optimizer parameter groups: head at ``lr``, backbone at ``lr * backbone_lr_mult``.

        Pretrained features need smaller updates than a freshly initialised head. Frozen
        parameters are left out, so a linear probe optimises the head only.
        """
        from medpipe.models.finetuning import finetune_param_groups

        return finetune_param_groups(self, lr, backbone_lr_mult)

    # -- behaviour -------------------------------------------------------------------------
    def backbone_batchnorms(self) -> list[_BatchNorm]:
        """BatchNorm layers of the backbone."""
        return [
            m for mod in self.backbone_modules() for m in mod.modules() if isinstance(m, _BatchNorm)
        ]

    def train(self, mode: bool = True) -> TimmClassifier:
        """Like ``nn.Module.train`` but keeps backbone BatchNorm in eval mode while it is frozen."""
        super().train(mode)
        if mode and self.backbone_bn_frozen:
            for bn in self.backbone_batchnorms():
                bn.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)`` for images ``(B, in_channels, H, W)``."""
        return self.net(x)

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone_name!r}, in_channels={self.in_channels}, "
            f"num_classes={self.num_classes}, pretrained={self.pretrained!r}"
        )


def adapt_stem(net: nn.Module, in_channels: int, stem_name: str | None = None) -> None:
    """Make the stem convolution of ``net`` take ``in_channels`` inputs (timm's convention).

    The weights are derived from the current RGB weights with ``adapt_input_conv`` (sum of RGB for
    one channel, repeat scaled by 3/N otherwise); the conv module (and its type, e.g. timm's
    same-padding conv) is kept, only its weight is replaced.
    """
    name = stem_name or _stem_conv_name(net)
    conv = net.get_submodule(name)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise ConfigError(f"model.in_channels: cannot adapt the stem {name!r} of this backbone")
    if conv.in_channels == in_channels:
        return
    weight = adapt_input_conv(in_channels, conv.weight.detach())
    conv.weight = nn.Parameter(weight.contiguous())
    conv.in_channels = in_channels


def init_head(head: nn.Module) -> None:
    """Start a fresh linear head near zero (weights N(0, 0.01), bias 0).

    timm initialises EfficientNet-style heads with U(-1/sqrt(fan_out), +), i.e. U(-1, 1) for one
    binary logit: on 1280 pretrained features that gives initial logits of magnitude ~10, so the
    first epochs only undo the initial over-confidence (a linear probe never recovers within a
    short budget). A near-zero head starts at p = 0.5. A checkpoint loaded afterwards that has a
    matching head overrides this.
    """
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.01)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def build_timm_classifier(
    *,
    backbone: str,
    in_channels: int,
    num_classes: int,
    pretrained: str | os.PathLike[str] | None = None,
    drop_rate: float = 0.0,
) -> TimmClassifier:
    """Build a timm ``backbone`` with a ``num_classes`` head, pretrained weights and adapted stem.

    ``pretrained`` is ``None``, ``"imagenet"``/``"hub"``, ``"offline"`` or a checkpoint path (see
    :mod:`medpipe.models.weights`). The network is created with 3 input channels, its stem is
    adapted to ``in_channels``, and the weights are loaded with RGB stems adapted the same way,
    so this equals "load ImageNet weights, then adapt the stem".
    """
    _check_backbone(backbone)
    if in_channels < 1 or num_classes < 1:
        raise ConfigError(
            f"model: in_channels ({in_channels}) and num_classes ({num_classes}) must be >= 1"
        )
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ConfigError(f"model.drop_rate={drop_rate!r} must be in [0, 1)")
    spec = normalize_spec(pretrained)
    net = timm.create_model(
        backbone, pretrained=False, num_classes=num_classes, in_chans=3, drop_rate=float(drop_rate)
    )
    model = TimmClassifier(
        net, backbone=backbone, in_channels=in_channels, num_classes=num_classes, pretrained=spec
    )
    init_head(model.head)
    adapt_stem(net, in_channels, model.stem_name)
    model.load_report = load_pretrained(
        net, spec, backbone=backbone, head_name=model.head_name, stem_name=model.stem_name
    )
    return model


@register_model("timm")
def _timm_from_config(
    *,
    in_channels: int,
    num_classes: int,
    backbone: str | None = None,
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    finetune: str | None = None,
    backbone_lr_mult: float | None = None,
    unfreeze_at_epoch: int | None = None,
) -> TimmClassifier:
    """Registry entry: ``build_model("timm", in_channels=1, num_classes=2, backbone=...)``.

    The fine-tuning options are validated and stored on the model (``finetune_mode``,
    ``backbone_lr_mult``, ``unfreeze_at_epoch``) for the training task to read; a linear probe
    is frozen right away.
    """
    if not backbone:
        raise ConfigError(
            f"model.backbone is required for model.name=timm, e.g. one of "
            f"{', '.join(SUPPORTED_BACKBONES)}"
        )
    model = build_timm_classifier(
        backbone=backbone,
        in_channels=in_channels,
        num_classes=num_classes,
        pretrained=pretrained,
        drop_rate=drop_rate,
    )
    if finetune is not None:
        from medpipe.models.finetuning import freeze_backbone, validate_mode

        model.finetune_mode = validate_mode(finetune)
        if model.finetune_mode == "linear_probe":
            freeze_backbone(model)
    if backbone_lr_mult is not None:
        if float(backbone_lr_mult) < 0:
            raise ConfigError(f"model.backbone_lr_mult={backbone_lr_mult!r} must be >= 0")
        model.backbone_lr_mult = float(backbone_lr_mult)
    if unfreeze_at_epoch is not None:
        if int(unfreeze_at_epoch) < 0:
            raise ConfigError(f"model.unfreeze_at_epoch={unfreeze_at_epoch!r} must be >= 0")
        model.unfreeze_at_epoch = int(unfreeze_at_epoch)
    return model
