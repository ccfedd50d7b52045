"""Checkpoints that survive interruption, say where they come from, and resume a killed run.

- :class:`AtomicCheckpointIO`: Lightning's ``TorchCheckpointIO`` writes straight into the target
  file, so a kill during a save leaves a truncated ``last.ckpt``. This plugin saves to a
  temporary file in the same folder, fsyncs it and renames it over the target (atomic on one
  filesystem); :func:`remove_stale_temp_files` clears what a SIGKILL mid-save leaves behind.
- :class:`CheckpointMetadata` stores :func:`medpipe.reproducibility.provenance` (resolved config,
  git revision, DVC hashes of the data, versions) under ``checkpoint["medpipe"]``.
- :class:`LastCheckpoint` keeps ``last.ckpt`` current (every N optimizer steps, at each epoch end,
  on SIGTERM / Ctrl-C) and marks it ``completed`` when training ends normally. It is written by
  hand rather than with ``ModelCheckpoint(save_last=True)`` because in Lightning 2.6 that only
  refreshes ``last.ckpt`` at steps where a top-k checkpoint was saved, and its
  ``save_on_exception`` would also save after a NaN loss (possibly NaN weights).
- :class:`FiniteWeightsGuard` refuses to let a checkpoint with non-finite weights be written.
- :func:`resume_checkpoint` decides what ``resume=auto|never|<path>`` resumes from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from medpipe.errors import ConfigError, DataError
from medpipe.io import atomic_open

log = logging.getLogger(__name__)

LAST = "last.ckpt"
BEST = "best.ckpt"
META_KEY = "medpipe"
# Config sections that decide the training trajectory; a last.ckpt is resumed only if they match.
FINGERPRINT_KEYS = ("seed", "data", "model", "task", "trainer")
# ...except these, which change neither the data seen nor the arithmetic.
FINGERPRINT_IGNORE = {
    "data": ("num_workers", "pin_memory", "persistent_workers", "mirror", "root"),
    "task": ("evaluation",),
    "trainer": (
        "enable_progress_bar",
        "enable_model_summary",
        "log_every_n_steps",
        "checkpoint_every_n_steps",
        "evaluate_best",
    ),
}


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temp, fsync, then rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        if "://" in str(path):  # remote (fsspec) targets: the store's own semantics apply
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_open(Path(path), "wb") as fh:
            torch.save(checkpoint, fh)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files a process killed mid-save left in ``folder``."""
    removed = []
    for tmp in Path(folder).glob(".*.ckpt.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def read_metadata(path: str | Path) -> dict[str, Any]:
    """``checkpoint["medpipe"]`` (provenance and progress) of a checkpoint file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # truncated or not a checkpoint: name the file
        raise DataError(f"checkpoint {path} is not readable ({exc}); delete it") from exc
    meta = dict(ckpt.get(META_KEY) or {})
    meta.setdefault("epoch", ckpt.get("epoch"))
    meta.setdefault("global_step", ckpt.get("global_step"))
    return meta


class CheckpointMetadata(L.Callback):
    """Adds provenance, world size and logger run ids to every checkpoint Lightning writes."""

    def __init__(self, provenance: Mapping[str, Any]) -> None:
        self.provenance = dict(provenance)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        runs = {}
        for lg in trainer.loggers:
            name = type(lg).__name__
            if name == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
                runs["wandb"] = lg.version  # to continue the same W&B run on resume
        checkpoint[META_KEY] = {
            **self.provenance,
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "completed": False,
            "logger_runs": runs,
        }


class FiniteWeightsGuard(L.Callback):
    """Stops training, naming the step, before non-finite weights or loss can be checkpointed.

    Runs before the checkpoint callbacks (Lightning orders those last), at the points where they
    save: loss every step (cheap), weights when a step-interval save is due and at epoch end.
    """

    def __init__(self, every_n_steps: int | None) -> None:
        self.every_n_steps = every_n_steps or 0

    @staticmethod
    def _check_weights(trainer: L.Trainer, pl_module: L.LightningModule, where: str) -> None:
        for name, p in pl_module.named_parameters():
            if not torch.isfinite(p).all():
                raise FloatingPointError(
                    f"weight {name} became non-finite at global step {trainer.global_step} "
                    f"({where}); lower optimizer.lr or add trainer.gradient_clip_val. The last "
                    "good checkpoint is kept."
                )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"training loss is {loss.detach().float().item()} at global step "
                f"{trainer.global_step} (epoch {trainer.current_epoch}, batch {i}); lower "
                "optimizer.lr or check the inputs. The last good checkpoint is kept."
            )
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._check_weights(trainer, pl_module, f"epoch {trainer.current_epoch}, batch {i}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_weights(trainer, pl_module, f"end of epoch {trainer.current_epoch}")


class LastCheckpoint(Checkpoint):
    """Keeps ``<dir>/last.ckpt`` the latest good state of the run.

    Subclassing ``Checkpoint`` makes Lightning run it after the other callbacks and after the
    best-model ``ModelCheckpoint`` listed before it, so the saved callback state already knows the
    epoch's best model.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        self.path = Path(dirpath) / LAST
        self.every_n_train_steps = int(every_n_train_steps or 0)
        self._saved_step = -1
        self.completed = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self.path.parent.is_dir():
            remove_stale_temp_files(self.path.parent)

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and trainer.global_step != self._saved_step:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.completed = True  # read by on_save_checkpoint below
        self._save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # SIGTERM (scheduler pre-emption, `kill`) and Ctrl-C stop between batches: weights are
        # good. Any other exception (NaN loss, OOM, a bug) keeps the previous last.ckpt.
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self._save(trainer)
            log.warning(
                "interrupted at epoch %d, global step %d; saved %s",
                trainer.current_epoch,
                trainer.global_step,
                self.path,
            )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if META_KEY in checkpoint:
            checkpoint[META_KEY]["completed"] = self.completed


def fingerprint(config: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """The parts of a resolved config that must match for a checkpoint to be resumed."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
    out: dict[str, Any] = {}
    for key in FINGERPRINT_KEYS:
        value = config.get(key)
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in FINGERPRINT_IGNORE.get(key, ())}
        out[key] = value
    return out


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = sorted(set(a) | set(b), key=str)
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def resume_checkpoint(cfg: DictConfig, ckpt_dir: str | Path) -> Path | None:
    """The checkpoint ``cfg.resume`` asks for, or None to start from scratch.

    ``never``: None. ``auto``: ``<ckpt_dir>/last.ckpt`` when it is an unfinished run of the same
    config (seed, data, model, task, trainer); otherwise None, with the reason logged. Anything
    else is a checkpoint path, which must exist.
    """
    mode = cfg.get("resume", "never")
    mode = "never" if mode in (None, False) else str(mode)
    if mode == "never":
        return None
    if mode != "auto":
        path = Path(mode)
        if not path.is_file():
            raise ConfigError(
                f"resume={mode}: no such checkpoint; use resume=auto, resume=never or an "
                "existing .ckpt file"
            )
        return path
    last = Path(ckpt_dir) / LAST
    if not last.is_file():
        return None
    try:
        meta = read_metadata(last)
    except DataError as exc:
        log.warning("resume=auto: %s; starting from scratch", exc)
        return None
    if meta.get("completed"):
        log.info("resume=auto: %s is a finished run; starting a new one", last)
        return None
    if "config" not in meta:
        log.warning("resume=auto: %s has no medpipe metadata; starting from scratch", last)
        return None
    diff = _differences(fingerprint(meta["config"]), fingerprint(cfg))
    if diff:
        log.warning(
            "resume=auto: %s was trained with a different config (%s); starting from scratch",
            last,
            ", ".join(diff[:5]),
        )
        return None
    log.info(
        "resume=auto: resuming %s at epoch %s, global step %s",
        last,
        meta.get("epoch"),
        meta.get("global_step"),
    )
    return last
