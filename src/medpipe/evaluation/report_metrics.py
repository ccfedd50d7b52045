"""The full metric set of the ``evaluate`` report: headline scalars and per-class values.

Built on :func:`medpipe.evaluation.metrics.classification_metrics` (so ``accuracy``, ``f1``,
``roc_auc``... are exactly the numbers training logs) and extended, from torchmetrics' functional
API, with balanced accuracy, PR-AUC (average precision), MCC and Cohen's kappa (quadratic
weights for ordinal tasks), plus per-class precision / recall / F1 / ROC-AUC / PR-AUC.

Definitions, per task type (the tests check each against scikit-learn):

- binary: ``probs`` (N,) = P(class 1); threshold metrics at ``threshold``; ``pr_auc`` is the
  average precision of class 1; ``balanced_accuracy`` = (sensitivity + specificity) / 2.
- multi-class / ordinal: ``probs`` (N, C); macro averages; ``roc_auc``/``pr_auc`` one-vs-rest;
  ``kappa`` is quadratic-weighted for ordinal tasks, unweighted otherwise.
- multi-label: ``probs`` (N, L); macro over labels, except ``mcc`` (pooled over all labels, as
  torchmetrics defines it); ``kappa`` is the mean of the per-label kappas.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torchmetrics.functional import classification as C

from medpipe.evaluation.metrics import (
    BINARY,
    MULTICLASS,
    MULTILABEL,
    ORDINAL,
    classification_metrics,
)

#: Headline metrics reported with bootstrap confidence intervals (when defined for the task).
HEADLINE: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "f1_macro",
    "roc_auc",
    "pr_auc",
    "mcc",
    "kappa",
)


def _single_class(target: torch.Tensor) -> bool:
    return target.numel() == 0 or bool((target == target.flatten()[0]).all())


def _nan_if_single(target: torch.Tensor, fn, *args, **kwargs) -> float:
    """A ranking metric (AUC, AP) is undefined when the split holds one class only: NaN."""
    return math.nan if _single_class(target) else float(fn(*args, **kwargs))


def headline_metrics(
    probs: torch.Tensor,
    target: torch.Tensor,
    task_type: str,
    num_classes: int,
    *,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Every headline metric of :data:`HEADLINE` (and the base ones) for one split."""
    target = target.long()
    out: dict[str, float] = classification_metrics(
        probs, target, task_type, num_classes, threshold=threshold
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # absent classes: torchmetrics warns, we report NaN/0
        if task_type == BINARY:
            p = probs.reshape(-1)
            pred = (p > threshold).long()  # torchmetrics' rule for the other binary metrics
            out["balanced_accuracy"] = float(
                C.multiclass_accuracy(pred, target, 2, average="macro")
            )
            out["pr_auc"] = _nan_if_single(target, C.binary_average_precision, p, target)
            out["mcc"] = float(C.binary_matthews_corrcoef(p, target, threshold=threshold))
            out["kappa"] = float(C.binary_cohen_kappa(p, target, threshold=threshold))
        elif task_type in (MULTICLASS, ORDINAL):
            out["f1_macro"] = out["f1"]
            out["pr_auc"] = _nan_if_single(
                target, C.multiclass_average_precision, probs, target, num_classes, average="macro"
            )
            out["mcc"] = float(C.multiclass_matthews_corrcoef(probs, target, num_classes))
            weights = "quadratic" if task_type == ORDINAL else None
            out["kappa"] = float(
                C.multiclass_cohen_kappa(probs, target, num_classes, weights=weights)
            )
        elif task_type == MULTILABEL:
            kw = {"num_labels": num_classes, "threshold": threshold}
            out["f1_macro"] = out["f1"]
            rec = C.multilabel_recall(probs, target, average=None, **kw)
            spec = C.multilabel_specificity(probs, target, average=None, **kw)
            out["balanced_accuracy"] = float(((rec + spec) / 2).mean())
            out["pr_auc"] = float(
                C.multilabel_average_precision(probs, target, num_classes, average="macro")
            )
            out["mcc"] = float(C.multilabel_matthews_corrcoef(probs, target, **kw))
            out["kappa"] = float(
                torch.stack(
                    [
                        C.binary_cohen_kappa(probs[:, j], target[:, j], threshold=threshold)
                        for j in range(num_classes)
                    ]
                ).mean()
            )
        else:
            raise ValueError(f"unknown task type {task_type!r}")
    return out


def per_class_metrics(
    probs: torch.Tensor,
    target: torch.Tensor,
    task_type: str,
    class_names: Sequence[str],
    *,
    threshold: float = 0.5,
) -> dict[str, dict[str, float | int]]:
    """``{class name: {precision, recall, f1, roc_auc, pr_auc, support}}``.

    For a binary task both classes are listed (class 0 scored with ``1 - p``), so the table
    reads the same as for multi-class; ROC-AUC is then equal for both classes by construction.
    Per-class ROC-AUC / PR-AUC are one-vs-rest; NaN for a class absent from the split.
    """
    n = len(class_names)
    target = target.long()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task_type == MULTILABEL:
            kw = {"num_labels": n, "threshold": threshold, "average": None}
            prec = C.multilabel_precision(probs, target, **kw)
            rec = C.multilabel_recall(probs, target, **kw)
            f1 = C.multilabel_f1_score(probs, target, **kw)
            support = target.sum(dim=0)
            auc = [
                _nan_if_single(target[:, j], C.binary_auroc, probs[:, j], target[:, j])
                for j in range(n)
            ]
            ap = [
                _nan_if_single(target[:, j], C.binary_average_precision, probs[:, j], target[:, j])
                for j in range(n)
            ]
        else:
            if task_type == BINARY:
                p = probs.reshape(-1)
                scores = torch.stack([1 - p, p], dim=1)
                pred = (p > threshold).long()
            else:
                scores, pred = probs, probs.argmax(dim=1)
            kw = {"num_classes": n, "average": None}
            prec = C.multiclass_precision(pred, target, **kw)
            rec = C.multiclass_recall(pred, target, **kw)
            f1 = C.multiclass_f1_score(pred, target, **kw)
            support = torch.bincount(target, minlength=n)
            auc, ap = [], []
            for c in range(n):
                t = (target == c).long()
                auc.append(_nan_if_single(t, C.binary_auroc, scores[:, c], t))
                ap.append(_nan_if_single(t, C.binary_average_precision, scores[:, c], t))
    return {
        str(name): {
            "precision": float(prec[c]),
            "recall": float(rec[c]),
            "f1": float(f1[c]),
            "roc_auc": float(auc[c]),
            "pr_auc": float(ap[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(class_names)
    }


def confusion_matrix(
    probs: torch.Tensor, target: torch.Tensor, task_type: str, num_classes: int, threshold: float
) -> torch.Tensor:
    """Counts ``[actual, predicted]`` (torchmetrics); multi-label has none (raises ValueError)."""
    if task_type == MULTILABEL:
        raise ValueError("a confusion matrix is not defined for multi-label outputs")
    if task_type == BINARY:
        return C.binary_confusion_matrix(probs.reshape(-1), target.long(), threshold=threshold)
    return C.multiclass_confusion_matrix(probs, target.long(), num_classes)


def predicted_labels(probs: torch.Tensor, task_type: str, threshold: float) -> torch.Tensor:
    """Class index per sample (binary: ``p > threshold``, torchmetrics' rule); multi-hot for
    multi-label."""
    if task_type == BINARY:
        return (probs.reshape(-1) > threshold).long()
    if task_type == MULTILABEL:
        return (probs > threshold).long()
    return probs.argmax(dim=1)


def clean(value: object) -> object:
    """JSON-safe copy: NaN/inf -> None (JSON has no NaN), recursively through dicts/lists."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
