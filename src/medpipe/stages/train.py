"""``medpipe train``: fit the configured task and keep the best checkpoint by validation score.

Outputs, all under ``models/<name>/`` and written by rank 0 only:
``best.ckpt`` (best ``task.monitor``), ``last.ckpt`` (latest good state; see
``medpipe.checkpointing``) and ``summary.json`` (best score, steps, resume point, and with
``trainer.evaluate_best`` the DDP-exact val/test metrics of the best checkpoint).

The same command runs on a CPU, one GPU, N GPUs (``trainer=ddp``), N CPU processes
(``trainer=ddp_cpu``) or several nodes (``trainer=multinode`` under ``srun``/``torchrun``): for
``strategy: ddp`` Lightning re-runs this very command once per extra local process, which works
because the config is composed without changing directory (``medpipe.config``).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from medpipe.callbacks.tracking import PredictionSamples
from medpipe.checkpointing import (
    AtomicCheckpointIO,
    CheckpointMetadata,
    FiniteWeightsGuard,
    LastCheckpoint,
    read_metadata,
    resume_checkpoint,
)
from medpipe.data.registry import build_datamodule
from medpipe.distributed import ExactDistributedMeans, check_devices, prepare_loaders
from medpipe.errors import ConfigError
from medpipe.io import write_json
from medpipe.loggers import LogConfig, build_loggers, finish
from medpipe.reproducibility import SeedAugmentations, provenance
from medpipe.tasks.factory import build_task

log = logging.getLogger(__name__)

# medpipe options kept in the trainer group but not Lightning Trainer arguments
EXTRAS = {"compile": False, "checkpoint_every_n_steps": None, "evaluate_best": False}
SUMMARY = "summary.json"


def checkpoint_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.models) / str(cfg.name)


def split_trainer_config(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(Lightning Trainer kwargs, medpipe extras)`` from ``cfg.trainer``."""
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    if not isinstance(trainer_cfg, dict):
        raise ConfigError("trainer must be a mapping of Lightning Trainer arguments")
    extras = {k: trainer_cfg.pop(k, default) for k, default in EXTRAS.items()}
    n = extras["checkpoint_every_n_steps"]
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ConfigError(
            f"trainer.checkpoint_every_n_steps={n!r} must be a positive integer or null"
        )
    return trainer_cfg, extras


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any] | bool) -> L.Trainer:
    trainer_cfg, _ = split_trainer_config(cfg)
    check_devices(trainer_cfg)
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


def _compile(task: L.LightningModule, option: Any) -> Any:
    """``torch.compile`` the task (Lightning unwraps it, so checkpoints keep plain keys)."""
    if not option:
        return task
    import torch

    kwargs = dict(option) if isinstance(option, Mapping) else {}
    try:
        return torch.compile(task, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"trainer.compile={option!r}: {exc}") from exc


def _metrics(results: list[Mapping[str, Any]] | None) -> dict[str, float]:
    return {k: float(v) for r in results or [] for k, v in r.items()}


def run(cfg: DictConfig, *, callbacks: Sequence[L.Callback] = ()) -> Path:
    """Train; returns the path of the best checkpoint (``models/<name>/best.ckpt``).

    ``callbacks`` are added to medpipe's own (for tests and benchmarks; the CLI passes none).
    """
    trainer_cfg, extras = split_trainer_config(cfg)
    check_devices(trainer_cfg)  # before any data or model is touched
    seed = int(cfg.seed)
    L.seed_everything(seed, workers=True, verbose=False)
    dm = build_datamodule(cfg.data)
    task = build_task(cfg, dm)
    ckpt_dir = checkpoint_dir(cfg)
    resume = resume_checkpoint(cfg, ckpt_dir)
    resume_meta = read_metadata(resume) if resume else None

    loggers = build_loggers(cfg, resume_meta)
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=str(cfg.task.get("monitor", "val/roc_auc")),
        mode="max",
        save_last=False,
        enable_version_counter=False,
    )
    every = extras["checkpoint_every_n_steps"]
    all_callbacks: list[Any] = [
        CheckpointMetadata(provenance(cfg)),
        FiniteWeightsGuard(every),
        SeedAugmentations(seed),
        ExactDistributedMeans(),
        *callbacks,
        best_cb,  # first checkpoint callback: trainer.checkpoint_callback, ckpt_path="best"
        LastCheckpoint(ckpt_dir, every),
    ]
    if trainer_cfg.get("enable_progress_bar", True):
        all_callbacks.append(RichProgressBar())
    if loggers:
        all_callbacks += [
            LogConfig(cfg),
            LearningRateMonitor(logging_interval="epoch"),
            PredictionSamples(),
        ]
    trainer = build_trainer(cfg, all_callbacks, loggers or False)
    prepare_loaders(dm, trainer)
    start = time.perf_counter()
    try:
        trainer.fit(_compile(task, extras["compile"]), datamodule=dm, ckpt_path=resume)
    except SIGTERMException:
        finish(loggers)
        log.warning(
            "training stopped by SIGTERM at epoch %d, global step %d; %s/last.ckpt keeps the "
            "state: run the same command again (resume=auto) to continue",
            trainer.current_epoch,
            trainer.global_step,
            ckpt_dir,
        )
        raise SystemExit(128 + signal.SIGTERM) from None
    except BaseException:
        finish(loggers)
        raise
    fit_seconds = time.perf_counter() - start

    best = ckpt_dir / "best.ckpt"
    if not best_cb.best_model_path:  # e.g. limit_val_batches=0: keep the last weights as best
        trainer.save_checkpoint(best)
    summary: dict[str, Any] = {
        "best_checkpoint": str(best),
        "monitor": best_cb.monitor,
        "best_score": None if best_cb.best_model_score is None else float(best_cb.best_model_score),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "precision": str(trainer.precision),
        "fit_seconds": round(fit_seconds, 3),
        "resumed_from": None
        if resume is None
        else {
            "path": str(resume),
            "epoch": resume_meta.get("epoch") if resume_meta else None,
            "global_step": resume_meta.get("global_step") if resume_meta else None,
        },
    }
    if extras["evaluate_best"]:
        # Same trainer, same processes: each val/test sample is scored exactly once across ranks.
        summary["val"] = _metrics(
            trainer.validate(task, datamodule=dm, ckpt_path=str(best), verbose=False)
        )
        if _has_test(dm):
            summary["test"] = _metrics(
                trainer.test(task, datamodule=dm, ckpt_path=str(best), verbose=False)
            )
    finish(loggers)
    if trainer.is_global_zero:
        write_json(ckpt_dir / SUMMARY, summary)
        log.info("best checkpoint: %s (%s=%s)", best, best_cb.monitor, summary["best_score"])
    return best


def _has_test(dm: L.LightningDataModule) -> bool:
    from lightning.pytorch.utilities.model_helpers import is_overridden

    return is_overridden("test_dataloader", dm, L.LightningDataModule)
