"""``medpipe predict``: run the best checkpoint over a split and write predictions.

Per task kind: ``medpipe.prediction.<kind>.run(cfg, task, dm, checkpoint, **options)`` writes
``predictions/<name>/`` (classification: probabilities CSV and, in competition mode, the Kaggle
submission; segmentation: PNG masks at each image's original size and an RLE CSV).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medpipe.data.registry import build_datamodule
from medpipe.evaluation.inference import load_task
from medpipe.stages.train import checkpoint_dir
from medpipe.tasks.factory import task_kind


def run(
    cfg: DictConfig,
    checkpoint: str | Path | None = None,
    split: str = "test",
    output: str | None = None,
) -> Any:
    """Predict ``split`` with ``checkpoint`` (default ``models/<name>/best.ckpt``)."""
    ckpt = Path(checkpoint) if checkpoint else checkpoint_dir(cfg) / "best.ckpt"
    task = load_task(cfg, ckpt)
    dm = build_datamodule(cfg.data)
    module = importlib.import_module(f"medpipe.prediction.{task_kind(cfg)}")
    return module.run(cfg, task, dm, ckpt, split=split, output=output)
