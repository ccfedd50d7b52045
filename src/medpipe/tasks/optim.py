"""Optimizers and LR schedulers from config, validated with messages naming the option."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from medpipe.errors import ConfigError

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = ("none", "cosine", "onecycle", "step", "plateau")


def build_optimizer(params: Iterable[Any], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``{name: adamw|adam|sgd, lr, weight_decay, momentum}`` -> optimizer."""
    cfg = dict(cfg)
    name = str(cfg.pop("name", "adamw")).lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name={name!r} is unknown; use one of {sorted(OPTIMIZERS)}")
    lr = float(cfg.pop("lr", 1e-3))
    if not lr > 0:
        raise ConfigError(f"optimizer.lr={lr} must be a positive number (e.g. 1e-3)")
    wd = float(cfg.pop("weight_decay", 0.0))
    if wd < 0:
        raise ConfigError(f"optimizer.weight_decay={wd} must be >= 0")
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": wd}
    momentum = cfg.pop("momentum", None)
    if name == "sgd":
        kwargs["momentum"] = float(momentum if momentum is not None else 0.9)
        kwargs["nesterov"] = bool(cfg.pop("nesterov", True))
    return OPTIMIZERS[name](params, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: Mapping[str, Any] | None,
    *,
    max_epochs: int,
    total_steps: int,
) -> dict[str, Any] | None:
    """``{name: none|cosine|onecycle|step|plateau, ...}`` -> Lightning lr_scheduler dict."""
    cfg = dict(cfg or {})
    name = str(cfg.get("name", "none")).lower()
    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler.name={name!r} is unknown; use one of {list(SCHEDULERS)}")
    sched = torch.optim.lr_scheduler
    if name == "none":
        return None
    if name == "cosine":
        return {
            "scheduler": sched.CosineAnnealingLR(optimizer, T_max=max(1, max_epochs)),
            "interval": "epoch",
        }
    if name == "onecycle":
        pct_start = float(cfg.get("pct_start", 0.25))
        if pct_start * total_steps < 2 or (1 - pct_start) * total_steps < 2:
            # OneCycleLR divides by (steps in a phase - 1): a tiny smoke-test run has too few steps.
            log.warning(
                "scheduler=onecycle needs more steps than %d; using a constant LR", total_steps
            )
            return None
        max_lrs = [g["lr"] for g in optimizer.param_groups]
        return {
            "scheduler": sched.OneCycleLR(
                optimizer,
                max_lr=max_lrs,
                total_steps=max(1, total_steps),
                pct_start=pct_start,
            ),
            "interval": "step",
        }
    if name == "step":
        return {
            "scheduler": sched.StepLR(
                optimizer,
                step_size=int(cfg.get("step_size", 10)),
                gamma=float(cfg.get("gamma", 0.1)),
            ),
            "interval": "epoch",
        }
    return {
        "scheduler": sched.ReduceLROnPlateau(
            optimizer,
            mode="max",
            patience=int(cfg.get("patience", 3)),
            factor=float(cfg.get("gamma", 0.1)),
        ),
        "monitor": str(cfg.get("monitor", "val/roc_auc")),
        "interval": "epoch",
    }
