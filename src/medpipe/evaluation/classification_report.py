"""Test-split report for classification tasks: metrics JSON, DVC plot data and PNG figures.

Outputs (all written atomically):
- ``metrics/<name>.json``: accuracy, f1, roc_auc, loss, ... and sample counts (DVC metrics);
- ``reports/<name>/roc.csv`` and ``reports/<name>/predictions.csv`` (DVC plots: ROC curve and
  confusion matrix), plus ``roc.png`` and ``confusion_matrix.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from medpipe.errors import DataError
from medpipe.evaluation import plots
from medpipe.evaluation.inference import eval_accelerator, predict
from medpipe.evaluation.metrics import MULTILABEL, classification_metrics
from medpipe.io import write_json
from medpipe.tasks.classification import ClassificationTask

log = logging.getLogger(__name__)


def run(
    cfg: DictConfig, task: ClassificationTask, dm: L.LightningDataModule, ckpt: Path
) -> dict[str, Any]:
    """Evaluate ``task`` on ``dm``'s test split; returns the dict written to ``metrics/<name>.json``."""
    dm.setup("test")
    if dm.num_classes != task.num_classes:
        raise DataError(
            f"checkpoint {ckpt} was trained for {task.num_classes} classes but data={cfg.data.name} "
            f"has {dm.num_classes}; evaluate it on the dataset it was trained on."
        )
    out = predict(task, dm.test_dataloader(), eval_accelerator(cfg))
    with torch.no_grad():
        loss = float(task.loss(out["logits"], out["target"]))
    metrics: dict[str, Any] = classification_metrics(
        out["probs"],
        out["target"],
        task.task_type,
        task.num_classes,
        threshold=task.hparams.threshold,
    )
    metrics["loss"] = loss
    sizes = dm.split_sizes()
    metrics.update({f"n_{k}": int(v) for k, v in sizes.items()})
    metrics = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in metrics.items()}

    name = str(cfg.name)
    write_json(Path(cfg.paths.metrics) / f"{name}.json", metrics)
    _write_plots(Path(cfg.paths.reports) / name, out, task, list(dm.class_names), name)
    log.info(
        "test metrics for %s: %s",
        name,
        {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
    )
    return metrics


def _write_plots(
    report_dir: Path,
    out: dict[str, torch.Tensor],
    task: ClassificationTask,
    names: list[str],
    title: str,
) -> None:
    probs, target = out["probs"].numpy(), out["target"].numpy()
    rows = plots.roc_points(probs, target, task.task_type, names)
    plots.write_csv(report_dir / "roc.csv", rows, ["class", "fpr", "tpr", "threshold"])
    if rows:
        plots.save_roc_png(report_dir / "roc.png", rows, f"ROC: {title}")
    if task.task_type == MULTILABEL:
        return  # a confusion matrix is not defined for multi-label outputs
    if task.task_type == "binary-class":
        pred = (probs >= task.hparams.threshold).astype(int)
    else:
        pred = probs.argmax(axis=1)
    pairs = [
        {"actual": names[int(a)], "predicted": names[int(p)]}
        for a, p in zip(target, pred, strict=True)
    ]
    plots.write_csv(report_dir / "predictions.csv", pairs, ["actual", "predicted"])
    matrix = np.zeros((len(names), len(names)), dtype=int)
    np.add.at(matrix, (target.astype(int), pred.astype(int)), 1)
    plots.save_confusion_png(
        report_dir / "confusion_matrix.png", matrix, names, f"Confusion: {title}"
    )
