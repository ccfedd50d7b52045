"""Test-split report for segmentation: metrics at each image's original size.

The model predicts at the training size; every probability map is resized back (bilinear) to its
image's original size, thresholded (``task.threshold``) and compared with the original mask
re-read from ``data/raw``, so the figures do not depend on the training resolution.

Outputs (all written atomically):

- ``metrics/<name>.json`` (DVC metrics). Binary: ``dice``, ``iou`` (per-image means),
  ``dice_micro``, ``iou_micro`` (pooled pixels), ``pixel_accuracy``, ``jaccard_thresholded``
  (ISIC 2018), ``dice_positive``/``iou_positive`` (images whose truth has foreground: LGG tumour
  slices, BUSI lesions), ``empty_specificity`` (share of images with an empty truth predicted
  empty: BUSI normals, tumour-free slices), counts and the threshold. Multi-class: ``dice``,
  ``iou`` (foreground classes), per-class Dice and ``pixel_accuracy``.
- ``reports/<name>/per_image.csv``: one row per test image (DVC plot data);
- ``reports/<name>/test_overlays.png``: truth and prediction contours on a few test images.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from medpipe.callbacks.overlays import pick_indices, save_overlay_grid
from medpipe.data.segmentation import read_image
from medpipe.errors import DataError
from medpipe.evaluation import plots
from medpipe.evaluation.inference import eval_accelerator, predict
from medpipe.evaluation.segmentation_metrics import (
    confusion_per_image,
    dice_from_counts,
    iou_from_counts,
    thresholded_jaccard_from_iou,
)
from medpipe.io import write_json
from medpipe.tasks.segmentation import SegmentationTask, multiclass_scores

log = logging.getLogger(__name__)

N_OVERLAYS = 8


def probs_to_mask(
    probs: torch.Tensor, shape: tuple[int, int], *, threshold: float, multiclass: bool
) -> np.ndarray:
    """``(C, h, w)`` probabilities -> uint8 mask of ``shape`` (0/1, or class indices)."""
    p = probs.float()
    if tuple(p.shape[-2:]) != tuple(shape):
        p = F.interpolate(p[None], size=tuple(shape), mode="bilinear", align_corners=False)[0]
    if multiclass:
        return p.argmax(dim=0).to(torch.uint8).numpy()
    return (p[0] > threshold).to(torch.uint8).numpy()


def check_compatible(task: SegmentationTask, dm: L.LightningDataModule, ckpt: Path) -> None:
    """The checkpoint must match the dataset's mask mode and classes."""
    mode = getattr(dm, "mask_mode", None)
    if mode != task.mask_mode or dm.num_classes != task.num_classes:
        raise DataError(
            f"checkpoint {ckpt} was trained for {task.mask_mode} masks with {task.num_classes} "
            f"classes but data={getattr(dm, 'name', '?')} has {mode} masks with "
            f"{dm.num_classes}; evaluate it on the dataset it was trained on."
        )


def score_split(
    task: SegmentationTask, dm: Any, split: str, probs: torch.Tensor
) -> tuple[dict[str, Any], list[dict[str, Any]], list[np.ndarray]]:
    """Metrics, per-image rows and predicted masks (original sizes) for ``split``."""
    samples = dm.split_samples(split)
    multiclass = task.multiclass
    rows: list[dict[str, Any]] = []
    preds: list[np.ndarray] = []
    counts: list[tuple[int, int, int, int]] = []
    confusion = torch.zeros(task.num_classes, task.num_classes, dtype=torch.long)
    for i, sample in enumerate(samples):
        truth = dm.original_mask(split, i)
        pred = probs_to_mask(probs[i], truth.shape, threshold=task.threshold, multiclass=multiclass)
        preds.append(pred)
        row: dict[str, Any] = {
            "id": sample.id,
            "height": truth.shape[0],
            "width": truth.shape[1],
            "truth_pixels": int((truth > 0).sum()),
            "pred_pixels": int((pred > 0).sum()),
        }
        if multiclass:
            k = task.num_classes
            t = torch.as_tensor(truth, dtype=torch.long).reshape(-1)
            p = torch.as_tensor(pred, dtype=torch.long).reshape(-1)
            confusion += torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        else:
            tp, fp, fn, tn = (
                int(c[0])
                for c in confusion_per_image(
                    torch.as_tensor(pred[None] > 0), torch.as_tensor(truth[None])
                )
            )
            counts.append((tp, fp, fn, tn))
            row["dice"] = float(dice_from_counts(*map(torch.tensor, (tp, fp, fn))))
            row["iou"] = float(iou_from_counts(*map(torch.tensor, (tp, fp, fn))))
        rows.append(row)
    if multiclass:
        metrics = {k: float(v) for k, v in multiclass_scores(confusion).items()}
    else:
        metrics = binary_summary(
            np.asarray(counts, dtype=np.int64).reshape(-1, 4),
            float(task.hparams.jaccard_cutoff),
        )
    metrics["n_images"] = len(samples)
    return metrics, rows, preds


def binary_summary(counts: np.ndarray, cutoff: float) -> dict[str, Any]:
    """Dataset metrics from per-image ``(tp, fp, fn, tn)`` rows (empty-mask rule: both empty = 1)."""
    tp, fp, fn, tn = (torch.as_tensor(counts[:, j]) for j in range(4))
    dice = dice_from_counts(tp, fp, fn)
    iou = iou_from_counts(tp, fp, fn)
    positive = (tp + fn) > 0
    empty = ~positive
    total = float((tp + fp + fn + tn).sum())

    def mean(x: torch.Tensor) -> float | None:
        return float(x.mean()) if x.numel() else None

    return {
        "dice": mean(dice),
        "iou": mean(iou),
        "dice_micro": float(dice_from_counts(tp.sum(), fp.sum(), fn.sum())),
        "iou_micro": float(iou_from_counts(tp.sum(), fp.sum(), fn.sum())),
        "pixel_accuracy": float((tp + tn).sum()) / total if total else None,
        "jaccard_thresholded": mean(thresholded_jaccard_from_iou(iou, cutoff)),
        "dice_positive": mean(dice[positive]),
        "iou_positive": mean(iou[positive]),
        "empty_specificity": mean(((tp + fp)[empty] == 0).double()),
        "n_positive": int(positive.sum()),
        "n_empty": int(empty.sum()),
    }


def run(
    cfg: DictConfig, task: SegmentationTask, dm: L.LightningDataModule, ckpt: Path
) -> dict[str, Any]:
    """Evaluate ``task`` on ``dm``'s test split; returns what ``metrics/<name>.json`` holds."""
    dm.setup("test")
    check_compatible(task, dm, ckpt)
    out = predict(task, dm.test_dataloader(), eval_accelerator(cfg))
    metrics, rows, preds = score_split(task, dm, "test", out["probs"])
    metrics["threshold"] = task.threshold
    metrics.update({f"n_{k}": int(v) for k, v in dm.split_sizes().items()})
    metrics = {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()
    }
    name = str(cfg.name)
    write_json(Path(cfg.paths.metrics) / f"{name}.json", metrics)
    report_dir = Path(cfg.paths.reports) / name
    fields = list(rows[0]) if rows else ["id"]
    plots.write_csv(report_dir / "per_image.csv", rows, fields)
    _test_overlays(report_dir / "test_overlays.png", dm, rows, preds, name)
    log.info(
        "test metrics for %s: %s",
        name,
        {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
    )
    return metrics


def _test_overlays(
    path: Path, dm: Any, rows: list[dict[str, Any]], preds: list[np.ndarray], name: str
) -> None:
    if not rows:
        return
    idx = pick_indices([r["truth_pixels"] > 0 for r in rows], N_OVERLAYS)
    samples = dm.split_samples("test")
    images = [read_image(samples[i].image) for i in idx]
    truths = [dm.original_mask("test", i) for i in idx]
    titles = [
        f"{rows[i]['id']}" + (f"  Dice {rows[i]['dice']:.2f}" if "dice" in rows[i] else "")
        for i in idx
    ]
    save_overlay_grid(
        path, images, truths, [preds[i] for i in idx], titles, suptitle=f"test: {name}"
    )
