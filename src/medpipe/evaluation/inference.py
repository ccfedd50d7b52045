"""Running a trained task over a loader, once, in one process, in loader order.

Evaluation always runs single-process so every sample of a split is scored exactly once (a
DistributedSampler would pad the last batch with repeats).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from medpipe.errors import DataError
from medpipe.tasks.factory import task_class


def load_task(cfg: DictConfig, path: str | Path) -> L.LightningModule:
    """Load the checkpoint at ``path`` as the task class of ``cfg.task.kind``, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"checkpoint {path} does not exist; run `medpipe train` (or `dvc repro`) first."
        )
    task = task_class(cfg).load_from_checkpoint(path, map_location="cpu", weights_only=False)
    task.eval()
    return task


def eval_accelerator(cfg: DictConfig) -> str:
    return "cpu" if cfg.trainer.get("accelerator") in ("cpu", None) else "auto"


def predict(
    task: L.LightningModule, loader: Any, accelerator: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Concatenate every tensor the task's ``predict_step`` returns, over the whole loader."""
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    batches = trainer.predict(task, dataloaders=loader)
    keys = [k for k, v in batches[0].items() if isinstance(v, torch.Tensor)]
    return {k: torch.cat([b[k].cpu() for b in batches]) for k in keys}
