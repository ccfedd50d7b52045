"""``medpipe evaluate``: score the best checkpoint on the test split; write metrics and plots.

The stage only loads the checkpoint and the DataModule; the report itself (metrics, plots) is
per task kind: ``medpipe.evaluation.<kind>_report.run(cfg, task, dm, checkpoint)``. Outputs:
``metrics/<name>.json`` (DVC metrics) and ``reports/<name>/`` (DVC plots and PNGs).
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


def run(cfg: DictConfig, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (default ``models/<name>/best.ckpt``) on the test split."""
    ckpt = Path(checkpoint) if checkpoint else checkpoint_dir(cfg) / "best.ckpt"
    task = load_task(cfg, ckpt)
    dm = build_datamodule(cfg.data)
    report = importlib.import_module(f"medpipe.evaluation.{task_kind(cfg)}_report")
    return report.run(cfg, task, dm, ckpt)
