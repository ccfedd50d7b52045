"""Plot data for ``dvc plots`` (CSV) and PNG figures for people who would rather look than read."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medpipe.io import atomic_open, atomic_path


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


def save_roc_png(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name in dict.fromkeys(r["class"] for r in rows):
        pts = [r for r in rows if r["class"] == name]
        ax.plot([r["fpr"] for r in pts], [r["tpr"] for r in pts], label=str(name))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(
        xlabel="False positive rate",
        ylabel="True positive rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def save_confusion_png(
    path: Path, matrix: np.ndarray, class_names: Sequence[str], title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="Predicted", ylabel="Actual", title=title)
    vmax = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            color = "white" if matrix[i, j] > vmax / 2 else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=color)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
