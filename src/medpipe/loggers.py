"""Experiment loggers from the ``logger`` config group (several may be on at once)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from medpipe.errors import ConfigError

KNOWN = ("csv", "tensorboard", "wandb", "dvclive")


def build_loggers(cfg: DictConfig) -> list[Any]:
    """One Lightning logger per key of ``cfg.logger``; the resolved config is logged as hparams."""
    node = cfg.get("logger")
    spec = OmegaConf.to_container(node, resolve=True) if node else {}
    assert isinstance(spec, dict)
    loggers: list[Any] = []
    for kind, options in spec.items():
        options = dict(options or {})
        if kind == "csv":
            from lightning.pytorch.loggers import CSVLogger

            loggers.append(CSVLogger(**options))
        elif kind == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(**options))
        else:
            raise ConfigError(f"logger {kind!r} is not available; use one of {KNOWN}")
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:
        lg.log_hyperparams(hparams)
    return loggers
