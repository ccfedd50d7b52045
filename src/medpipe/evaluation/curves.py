"""Curve data for the report: precision-recall points and training curves from the CSV log.

ROC points live in :mod:`medpipe.evaluation.plots` (``roc_points``); the PR points follow the
same row layout (one row per point, a ``class`` column for one-vs-rest curves), which is what
``dvc plots`` reads.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: Columns of ``training_curves.csv`` (Lightning's logged key -> CSV column).
TRAINING_COLUMNS: dict[str, str] = {
    "train/loss_epoch": "train_loss",
    "val/loss": "val_loss",
    "val/accuracy": "val_accuracy",
    "val/f1": "val_f1",
    "val/roc_auc": "val_roc_auc",
}


def _one_vs_rest(
    probs: np.ndarray, target: np.ndarray, task_type: str, class_names: Sequence[str]
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if task_type == "binary-class":
        name = class_names[1] if len(class_names) > 1 else "1"
        return [(name, target.reshape(-1), probs.reshape(-1))]
    curves = []
    for c, name in enumerate(class_names):
        t = target[:, c] if target.ndim == 2 else (target == c).astype(int)
        curves.append((name, t, probs[:, c]))
    return curves


def pr_points(
    probs: np.ndarray, target: np.ndarray, task_type: str, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Precision-recall rows ``{class, recall, precision, threshold}`` (scikit-learn's curve);
    class 1 for binary tasks, one-vs-rest per class / label otherwise."""
    from sklearn.metrics import precision_recall_curve

    rows: list[dict[str, Any]] = []
    for name, t, p in _one_vs_rest(probs, target, task_type, class_names):
        if len(np.unique(t)) < 2:
            continue
        precision, recall, thr = precision_recall_curve(t, p)
        thr = np.append(thr, 1.0)  # the last point (recall 0, precision 1) has no threshold
        rows += [
            {
                "class": name,
                "recall": round(float(r), 6),
                "precision": round(float(q), 6),
                "threshold": round(float(c), 6),
            }
            for q, r, c in zip(precision, recall, thr, strict=True)
        ]
    return rows


def _version(path: Path) -> tuple[int, float]:
    m = re.search(r"version_(\d+)", str(path))
    return (int(m.group(1)) if m else -1, path.stat().st_mtime)


def find_training_log(cfg: DictConfig) -> Path | None:
    """The newest Lightning CSV log (``metrics.csv``) of this experiment, if any.

    Looks in ``logger.csv.save_dir/logger.csv.name`` (the CSV logger's folder), else in
    ``paths.logs/<name>``; the highest ``version_N`` (then the newest file) wins.
    """
    roots: list[Path] = []
    csv_cfg = (cfg.get("logger") or {}).get("csv") if cfg.get("logger") else None
    if csv_cfg:
        save_dir = csv_cfg.get("save_dir") or cfg.paths.logs
        roots.append(Path(str(save_dir)) / str(csv_cfg.get("name") or cfg.name))
    roots.append(Path(str(cfg.paths.logs)) / str(cfg.name))
    for root in roots:
        if root.is_dir():
            found = sorted(root.rglob("metrics.csv"), key=_version)
            if found:
                return found[-1]
    return None


def training_curves(metrics_csv: Path | None) -> list[dict[str, Any]]:
    """One row per epoch: ``epoch`` + the :data:`TRAINING_COLUMNS` (None where not logged).

    Lightning's CSV log has one row per logging call with the other columns empty; the last
    logged value of each epoch-level column within an epoch is kept.
    """
    if metrics_csv is None or not metrics_csv.is_file():
        return []
    import pandas as pd

    try:
        df = pd.read_csv(metrics_csv)
    except (OSError, ValueError) as exc:  # an unreadable log only costs the curves
        log.warning("training curves skipped: cannot read %s (%s)", metrics_csv, exc)
        return []
    if "epoch" not in df.columns:
        return []
    df = df.dropna(subset=["epoch"])
    rows: list[dict[str, Any]] = []
    for epoch, group in df.groupby("epoch", sort=True):
        row: dict[str, Any] = {"epoch": int(epoch)}
        for key, column in TRAINING_COLUMNS.items():
            values = group[key].dropna() if key in group.columns else []
            value = float(values.iloc[-1]) if len(values) else None
            row[column] = None if value is None or not math.isfinite(value) else round(value, 6)
        if any(row[c] is not None for c in TRAINING_COLUMNS.values()):
            rows.append(row)
    return rows
