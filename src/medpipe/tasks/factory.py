"""Task kind -> LightningModule builder, chosen by ``task.kind`` in config.

Stages call :func:`build_task` and :func:`task_class`; they never import a concrete task, so a
new kind is one entry in ``TASK_KINDS`` (module path, function names) and one ``conf/task`` file.
"""

from __future__ import annotations

import importlib
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from medpipe.errors import ConfigError

# kind -> module defining `build(cfg, dm) -> LightningModule` and `TASK_CLASS`
TASK_KINDS: dict[str, str] = {
    "classification": "medpipe.tasks.classification",
    "segmentation": "medpipe.tasks.segmentation",
}


def task_kind(cfg: DictConfig) -> str:
    kind = str(cfg.task.get("kind", "classification"))
    if kind not in TASK_KINDS:
        raise ConfigError(f"task.kind={kind!r} is unknown; use one of {sorted(TASK_KINDS)}")
    return kind


def _module(kind: str) -> Any:
    return importlib.import_module(TASK_KINDS[kind])


def build_task(cfg: DictConfig, dm: L.LightningDataModule) -> L.LightningModule:
    """The LightningModule of ``cfg.task.kind`` for this config and DataModule."""
    return _module(task_kind(cfg)).build(cfg, dm)


def task_class(cfg: DictConfig) -> type[L.LightningModule]:
    """The LightningModule class (for ``load_from_checkpoint``)."""
    return _module(task_kind(cfg)).TASK_CLASS


def recorded_input_size(cfg: DictConfig) -> int | None:
    """``data.size`` (square inputs) for a task's hparams, so ``medpipe export`` finds it."""
    size = OmegaConf.select(cfg, "data.size", default=None)
    return int(size) if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None
