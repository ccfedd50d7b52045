"""Plot data for ``dvc plots`` (CSV) and PNG figures for people who would rather look than read.

PNGs: ROC and PR curves, confusion matrix (counts and row-normalised), reliability diagram,
training curves and the Grad-CAM grid; all written atomically. :func:`log_to_wandb` sends them
to Weights & Biases when ``logger.wandb`` is configured, and is a no-op otherwise.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medpipe.io import atomic_open, atomic_path

log = logging.getLogger(__name__)


def roc_points(
    probs: np.ndarray, target: np.ndarray, task_type: str, class_names: Sequence[str]
) -> list[dict]:
    """ROC curve rows ``{class, fpr, tpr, threshold}``; one-vs-rest per class beyond binary."""
    from sklearn.metrics import roc_curve

    rows: list[dict] = []
    if task_type == "binary-class":
        curves = [(class_names[1] if len(class_names) > 1 else "1", target, probs.reshape(-1))]
    else:
        curves = []
        for c, name in enumerate(class_names):
            t = target[:, c] if target.ndim == 2 else (target == c).astype(int)
            curves.append((name, t, probs[:, c]))
    for name, t, p in curves:
        if len(np.unique(t)) < 2:
            continue
        fpr, tpr, thr = roc_curve(t, p)
        thr = np.where(np.isfinite(thr), thr, 1.0)
        rows += [
            {
                "class": name,
                "fpr": round(float(a), 6),
                "tpr": round(float(b), 6),
                "threshold": round(float(c), 6),
            }
            for a, b, c in zip(fpr, tpr, thr, strict=True)
        ]
    return rows


def write_csv(path: Path, rows: list[dict], fieldnames: Sequence[str]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Save a figure as PNG atomically and release it."""
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def save_curve_png(
    path: Path,
    rows: list[dict],
    *,
    x: str,
    y: str,
    title: str,
    xlabel: str,
    ylabel: str,
    diagonal: bool = False,
) -> None:
    """One line per ``class`` of ``rows`` (ROC or PR points), axes on [0, 1]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name in dict.fromkeys(r["class"] for r in rows):
        pts = [r for r in rows if r["class"] == name]
        ax.plot([r[x] for r in pts], [r[y] for r in pts], label=str(name))
    if diagonal:
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1.01))
    if rows:
        ax.legend(loc="lower right" if diagonal else "lower left", fontsize=8)
    _save(fig, path)


def save_roc_png(path: Path, rows: list[dict], title: str) -> None:
    save_curve_png(
        path,
        rows,
        x="fpr",
        y="tpr",
        title=title,
        xlabel="False positive rate",
        ylabel="True positive rate",
        diagonal=True,
    )


def save_pr_png(path: Path, rows: list[dict], title: str) -> None:
    save_curve_png(
        path, rows, x="recall", y="precision", title=title, xlabel="Recall", ylabel="Precision"
    )


def save_confusion_png(
    path: Path,
    matrix: np.ndarray,
    class_names: Sequence[str],
    title: str,
    *,
    normalized: bool = False,
) -> None:
    """Confusion matrix ``[actual, predicted]``; ``normalized`` divides each row by its total
    (so the diagonal reads as per-class recall)."""
    plt = _pyplot()
    n = len(class_names)
    values = np.asarray(matrix, dtype=float)
    if normalized:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2), dpi=120)
    ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="Predicted", ylabel="Actual")
    ax.set_title(title, fontsize=9)
    vmax = 1.0 if normalized else (values.max() if values.size else 0)
    for i in range(n):
        for j in range(n):
            color = "white" if values[i, j] > vmax / 2 else "black"
            text = f"{values[i, j]:.2f}" if normalized else str(int(values[i, j]))
            ax.text(j, i, text, ha="center", va="center", color=color)
    _save(fig, path)


def save_reliability_png(
    path: Path,
    bins: Sequence[dict],
    title: str,
    *,
    ece: float,
    scaled_bins: Sequence[dict] | None = None,
    scaled_ece: float | None = None,
    temperature: float | None = None,
    xlabel: str = "Confidence",
    ylabel: str = "Observed accuracy",
) -> None:
    """Reliability diagram: observed frequency vs mean confidence per bin (marker area ~ bin
    size), the diagonal is perfect calibration; optionally after temperature scaling too."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.8), dpi=120)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    series = [(bins, f"model (ECE {ece:.3f})", "tab:blue")]
    if scaled_bins is not None and scaled_ece is not None:
        label = f"T={temperature:.2f} (ECE {scaled_ece:.3f})" if temperature else "scaled"
        series.append((scaled_bins, label, "tab:orange"))
    for data, label, color in series:
        total = sum(b["count"] for b in data) or 1
        ax.plot(
            [b["confidence"] for b in data],
            [b["observed"] for b in data],
            "-",
            color=color,
            lw=1,
            label=label,
        )
        ax.scatter(
            [b["confidence"] for b in data],
            [b["observed"] for b in data],
            s=[15 + 300 * b["count"] / total for b in data],
            color=color,
            alpha=0.6,
        )
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def save_training_png(path: Path, rows: Sequence[dict], title: str) -> None:
    """Loss (left) and validation metrics (right) per epoch; a note when nothing was logged."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
    if not rows:
        for ax in (left, right):
            ax.axis("off")
        left.text(
            0.5,
            0.5,
            "no training log found\n(train with logger=csv to get curves)",
            ha="center",
            va="center",
        )
    else:
        epochs = [r["epoch"] for r in rows]
        for ax, keys in (
            (left, ("train_loss", "val_loss")),
            (right, ("val_accuracy", "val_f1", "val_roc_auc")),
        ):
            for key in keys:
                pts = [
                    (e, r[key]) for e, r in zip(epochs, rows, strict=True) if r.get(key) is not None
                ]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=key)
            ax.set(xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        left.set(ylabel="loss", title="Loss")
        right.set(ylabel="score", title="Validation", ylim=(0, 1.01))
    fig.suptitle(title)
    _save(fig, path)


def save_gradcam_grid(
    path: Path, explanations: Sequence, class_names: Sequence[str], per_class: int, title: str
) -> None:
    """All Grad-CAM overlays on one page: a row per (class, correct|wrong), ``per_class``
    columns; a note when Grad-CAM is off or nothing qualified."""
    plt = _pyplot()
    if not explanations or per_class <= 0:
        fig, ax = plt.subplots(figsize=(4, 2), dpi=120)
        ax.axis("off")
        reason = (
            "Grad-CAM off (task.evaluation.gradcam.per_class=0)"
            if per_class <= 0
            else ("no test image qualified for Grad-CAM")
        )
        ax.text(0.5, 0.5, reason, ha="center", va="center", fontsize=8)
        fig.suptitle(title)
        _save(fig, path)
        return
    rows = [(c, ok) for c in range(len(class_names)) for ok in (True, False)]
    fig, axes = plt.subplots(
        len(rows), per_class, figsize=(2.2 * per_class, 2.3 * len(rows)), dpi=80, squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
        ax.text(0.5, 0.5, "(none)", ha="center", va="center", fontsize=7, color="grey")
    placed: dict[tuple[int, bool], int] = {}
    for ex in explanations:
        e = ex.example
        r = rows.index((e.cls, e.correct))
        k = placed.get((e.cls, e.correct), 0)
        if k >= per_class:
            continue
        placed[(e.cls, e.correct)] = k + 1
        ax = axes[r][k]
        ax.clear()
        ax.axis("off")
        ax.imshow(ex.image)
        true = class_names[e.true] if e.true < len(class_names) else str(e.true)
        pred = class_names[e.pred] if e.pred < len(class_names) else str(e.pred)
        ax.set_title(f"true {true}\npred {pred} ({e.score:.2f})", fontsize=7)
    for r, (c, ok) in enumerate(rows):
        axes[r][0].text(
            -0.08,
            0.5,
            f"{class_names[c]}\n{'correct' if ok else 'wrong'}",
            transform=axes[r][0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    fig.suptitle(title)
    _save(fig, path)


def wandb_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``logger.wandb`` options of ``cfg``, or None when W&B is not configured."""
    node = cfg.get("logger")
    if not node or "wandb" not in node:
        return None
    opts = OmegaConf.to_container(node["wandb"], resolve=True) if node["wandb"] else {}
    return dict(opts or {})


def _has_wandb_credentials() -> bool:
    """An API key in the environment or ~/.netrc (never read into logs: only its presence)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def log_to_wandb(
    cfg: DictConfig, images: dict[str, Path], metrics: dict[str, Any] | None = None
) -> bool:
    """Log the report's PNGs (and flat numeric metrics) to W&B when ``logger.wandb`` is on.

    Uses the active run if there is one, else starts an ``evaluate`` run for the experiment
    (offline when no API key is available or ``logger.wandb.offline`` is set, as the training
    logger does). Never raises: W&B trouble costs the upload, not the report. Returns whether
    anything was logged.
    """
    opts = wandb_settings(cfg)
    if opts is None:
        return False
    try:
        import wandb

        run = wandb.run
        started = False
        if run is None:
            mode = opts.get("mode")
            if mode is None and (opts.get("offline") or not _has_wandb_credentials()):
                mode = "offline"
            run = wandb.init(
                project=opts.get("project") or "medpipe",
                entity=opts.get("entity"),
                name=f"{cfg.name}-evaluate",
                group=opts.get("group") or str(cfg.name),
                tags=opts.get("tags"),
                job_type="evaluate",
                dir=opts.get("save_dir") or opts.get("dir") or str(cfg.paths.logs),
                mode=mode,
                reinit="finish_previous",
            )
            started = True
        payload: dict[str, Any] = {
            f"evaluate/{key}": wandb.Image(str(p)) for key, p in images.items() if Path(p).is_file()
        }
        for key, value in (metrics or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                payload[f"test/{key}"] = value
        run.log(payload)
        if started:
            run.finish()
        return True
    except Exception as exc:  # logging must never break the evaluation
        first_line = (str(exc).splitlines() or [""])[0][:200]
        log.warning("W&B logging of the report skipped: %s: %s", type(exc).__name__, first_line)
        return False
