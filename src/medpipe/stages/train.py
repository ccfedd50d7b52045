"""``medpipe train``: fit the configured task and keep the best checkpoint by validation score."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from medpipe.checkpointing import AtomicCheckpointIO
from medpipe.data.registry import build_datamodule
from medpipe.errors import ConfigError
from medpipe.loggers import build_loggers
from medpipe.tasks.factory import build_task

log = logging.getLogger(__name__)


def checkpoint_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.models) / str(cfg.name)


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any] | bool) -> L.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_cfg, dict)
    try:
        return L.Trainer(
            **trainer_cfg,
            callbacks=callbacks,
            logger=loggers,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=str(checkpoint_dir(cfg)),
        )
    except (TypeError, ValueError) as exc:  # unknown or invalid trainer.* option
        raise ConfigError(f"bad trainer option: {exc}") from exc


def run(cfg: DictConfig) -> Path:
    """Train; returns the path of the best checkpoint (``models/<name>/best.ckpt``)."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm = build_datamodule(cfg.data)
    task = build_task(cfg, dm)
    ckpt_dir = checkpoint_dir(cfg)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=str(cfg.task.get("monitor", "val/roc_auc")),
        mode="max",
        save_last=True,
        enable_version_counter=False,
    )
    loggers = build_loggers(cfg)
    callbacks: list[Any] = [checkpoint, RichProgressBar()]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = build_trainer(cfg, callbacks, loggers or False)
    trainer.fit(task, datamodule=dm)
    best = ckpt_dir / "best.ckpt"
    if not best.is_file():  # e.g. limit_val_batches=0: fall back to the last weights
        trainer.save_checkpoint(best)
    log.info("best checkpoint: %s (%s=%s)", best, checkpoint.monitor, checkpoint.best_model_score)
    return best
