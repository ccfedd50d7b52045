"""Transfer-learning modes for a pretrained backbone (``model.finetune``), task-independent.

* ``linear_probe`` - the backbone is frozen: no gradients, and its BatchNorm layers stay in eval
  mode even under ``model.train()`` so their pretrained running statistics are not overwritten
  by (small, domain-shifted) training batches. Only the head learns.
* ``finetune`` - everything trains; the backbone gets ``lr * backbone_lr_mult`` because
  pretrained features need gentler updates than a fresh head.
* ``gradual`` - linear probe until ``unfreeze_at_epoch``, then the backbone is unfrozen and added
  to the optimizer at ``lr * backbone_lr_mult`` (:class:`GradualUnfreeze`, a Lightning callback);
  the head is trained first so that its random gradients do not wreck the pretrained features.

A model takes part by offering ``backbone_modules()``, ``backbone_parameters()`` and
``head_parameters()`` (as :class:`~medpipe.models.backbones.TimmClassifier` does); a
LightningModule is accepted when its ``.model`` attribute does.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from medpipe.errors import ConfigError

log = logging.getLogger(__name__)

FINETUNE_MODES: tuple[str, ...] = ("linear_probe", "finetune", "gradual")


@runtime_checkable
class SupportsBackbone(Protocol):
    """What a model must offer to be fine-tuned: its backbone and head, separately."""

    def backbone_modules(self) -> list[nn.Module]: ...

    def backbone_parameters(self) -> list[nn.Parameter]: ...

    def head_parameters(self) -> list[nn.Parameter]: ...


def validate_mode(mode: str) -> str:
    """Canonical fine-tuning mode; ConfigError naming ``model.finetune`` and the valid modes."""
    key = str(mode).strip().lower().replace("-", "_")
    if key not in FINETUNE_MODES:
        raise ConfigError(
            f"model.finetune={mode!r} is not a fine-tuning mode. Choose one of: "
            f"{', '.join(FINETUNE_MODES)}"
        )
    return key


def resolve_backbone_model(obj: nn.Module) -> SupportsBackbone:
    """The model that exposes a backbone: ``obj`` itself or its ``.model`` (a LightningModule)."""
    for candidate in (obj, getattr(obj, "model", None)):
        if isinstance(candidate, SupportsBackbone):
            return candidate
    raise ConfigError(
        f"model.finetune needs a model with a pretrained backbone (e.g. model.name=timm); "
        f"{type(obj).__name__} has no backbone_modules()/backbone_parameters()/head_parameters()"
    )


def _backbone_batchnorms(model: SupportsBackbone) -> list[_BatchNorm]:
    return [
        m for mod in model.backbone_modules() for m in mod.modules() if isinstance(m, _BatchNorm)
    ]


def set_backbone_bn_eval(model: nn.Module) -> int:
    """Put the backbone's BatchNorm layers in eval mode; returns how many there are.

    ``model.train()`` (called by Lightning at each epoch start and after validation) switches them
    back; :class:`TimmClassifier` re-applies this itself while frozen, other models must call
    this at the start of every training epoch.
    """
    bns = _backbone_batchnorms(resolve_backbone_model(model))
    for bn in bns:
        bn.eval()
    return len(bns)


def freeze_backbone(model: nn.Module) -> None:
    """Linear-probe setup: backbone gets no gradients and its BatchNorm stays in eval mode."""
    target = resolve_backbone_model(model)
    for param in target.backbone_parameters():
        param.requires_grad_(False)
    if hasattr(target, "backbone_bn_frozen"):
        target.backbone_bn_frozen = True
    set_backbone_bn_eval(target)  # type: ignore[arg-type]


def unfreeze_backbone(model: nn.Module) -> None:
    """Make the whole backbone trainable again, BatchNorm included."""
    target = resolve_backbone_model(model)
    for param in target.backbone_parameters():
        param.requires_grad_(True)
    if hasattr(target, "backbone_bn_frozen"):
        target.backbone_bn_frozen = False
    if getattr(target, "training", False):
        for bn in _backbone_batchnorms(target):
            bn.train()


def finetune_param_groups(
    model: nn.Module, lr: float, backbone_lr_mult: float = 0.1
) -> list[dict[str, Any]]:
    """Optimizer param groups for the model's *trainable* parameters.

    Head at ``lr``, backbone at ``lr * backbone_lr_mult``; frozen parameters are left out, so the
    same call serves all three modes (a linear probe or a not-yet-unfrozen gradual run gets the
    head only, as :class:`GradualUnfreeze` requires).
    """
    if lr <= 0 or backbone_lr_mult < 0:
        raise ConfigError(
            f"optimizer lr ({lr}) must be > 0 and model.backbone_lr_mult ({backbone_lr_mult}) >= 0"
        )
    target = resolve_backbone_model(model)
    groups: list[dict[str, Any]] = []
    for name, params, group_lr in (
        ("backbone", target.backbone_parameters(), lr * backbone_lr_mult),
        ("head", target.head_parameters(), lr),
    ):
        params = [p for p in params if p.requires_grad]
        if params and (group_lr > 0 or name == "head"):
            groups.append({"params": params, "lr": group_lr, "name": name})
    return groups


def apply_mode(model: nn.Module, mode: str) -> str:
    """Put ``model`` in the starting state of ``mode`` (frozen for linear_probe/gradual)."""
    mode = validate_mode(mode)
    if mode == "finetune":
        unfreeze_backbone(model)
    else:
        freeze_backbone(model)
    return mode


class GradualUnfreeze(BaseFinetuning):
    """Train the head alone, then from ``unfreeze_at_epoch`` the backbone too at a lower LR.

    The backbone is located through ``pl_module.model`` (or ``pl_module``) offering
    ``backbone_modules()``/``backbone_parameters()``. The LightningModule's
    ``configure_optimizers`` must only pass trainable parameters (e.g. via
    :func:`finetune_param_groups`), since the backbone is added as a new param group at
    ``lr * backbone_lr_mult``, where ``lr`` is the given one or the first group's initial LR.
    LR schedulers of that optimizer are extended to the new group.
    """

    def __init__(
        self, unfreeze_at_epoch: int = 1, backbone_lr_mult: float = 0.1, lr: float | None = None
    ) -> None:
        super().__init__()
        if unfreeze_at_epoch < 0 or backbone_lr_mult < 0:
            raise ConfigError(
                f"model.unfreeze_at_epoch ({unfreeze_at_epoch}) and model.backbone_lr_mult "
                f"({backbone_lr_mult}) must be >= 0"
            )
        self.unfreeze_at_epoch = int(unfreeze_at_epoch)
        self.backbone_lr_mult = float(backbone_lr_mult)
        self.lr = lr

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        """Freeze the backbone (weights and BatchNorm statistics) before optimizers are built."""
        freeze_backbone(pl_module)

    def finetune_function(
        self, pl_module: LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        """At ``unfreeze_at_epoch`` (or later, when resuming) unfreeze and add the backbone."""
        if epoch < self.unfreeze_at_epoch:
            return
        target = resolve_backbone_model(pl_module)
        params = target.backbone_parameters()
        if all(p.requires_grad for p in params):
            return
        unfreeze_backbone(pl_module)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [p for p in params if id(p) not in in_optimizer]
        if not new:  # resumed run: param groups were restored by BaseFinetuning
            return
        first = optimizer.param_groups[0]
        base_lr = float(self.lr if self.lr is not None else first.get("initial_lr", first["lr"]))
        group_lr = base_lr * self.backbone_lr_mult
        group: dict[str, Any] = {"params": new, "lr": group_lr, "name": "backbone"}
        if "initial_lr" in first:
            group["initial_lr"] = group_lr
        optimizer.add_param_group(group)
        self._extend_schedulers(pl_module, optimizer, group_lr)
        log.info(
            "epoch %d: unfroze the backbone (%d tensors) at lr %.3g", epoch, len(new), group_lr
        )

    @staticmethod
    def _extend_schedulers(pl_module: LightningModule, optimizer: Optimizer, lr: float) -> None:
        """Let per-group LR schedulers (which zip over their base LRs) drive the new group."""
        trainer = getattr(pl_module, "_trainer", None)
        for config in getattr(trainer, "lr_scheduler_configs", None) or []:
            scheduler = config.scheduler
            if getattr(scheduler, "optimizer", None) is not optimizer:
                continue
            n = len(optimizer.param_groups)
            if isinstance(getattr(scheduler, "base_lrs", None), list):
                scheduler.base_lrs.extend([lr] * (n - len(scheduler.base_lrs)))
            if isinstance(getattr(scheduler, "_last_lr", None), list):
                scheduler._last_lr.extend([lr] * (n - len(scheduler._last_lr)))
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if isinstance(lambdas, list) and lambdas:
                lambdas.extend([lambdas[0]] * (n - len(lambdas)))


def finetuning_callbacks(
    mode: str, *, unfreeze_at_epoch: int = 1, backbone_lr_mult: float = 0.1
) -> list[Callback]:
    """Lightning callbacks a mode needs (only ``gradual`` needs one)."""
    if validate_mode(mode) == "gradual":
        return [GradualUnfreeze(unfreeze_at_epoch, backbone_lr_mult)]
    return []
