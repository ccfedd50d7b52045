"""Classification metrics for every MedMNIST task type, from torchmetrics' functional API.

One function computes all reported metrics from predicted probabilities, so that validation
during training (through :class:`ClassificationMetrics`) and the ``evaluate`` stage report the
same numbers. Probabilities are accumulated over the whole split and the metrics computed once,
which is exact for ROC-AUC (a per-batch average would not be).
"""

from __future__ import annotations

import math
import warnings

import torch
from torchmetrics import Metric
from torchmetrics.functional import classification as C

BINARY, MULTICLASS, MULTILABEL, ORDINAL = (
    "binary-class",
    "multi-class",
    "multi-label",
    "ordinal-regression",
)


def num_outputs(task_type: str, num_classes: int) -> int:
    """Logits the model must produce: 1 for binary tasks (sigmoid), one per class otherwise."""
    return 1 if task_type == BINARY else num_classes


def logits_to_probs(logits: torch.Tensor, task_type: str) -> torch.Tensor:
    """Binary -> P(class 1) of shape (N,); multi-label -> sigmoid; multi-class/ordinal -> softmax."""
    if task_type == BINARY:
        return torch.sigmoid(logits.reshape(len(logits), -1)[:, 0])
    if task_type == MULTILABEL:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-1)


def _single_class(target: torch.Tensor) -> bool:
    return target.numel() == 0 or bool((target == target.flatten()[0]).all())


def classification_metrics(
    probs: torch.Tensor,
    target: torch.Tensor,
    task_type: str,
    num_classes: int,
    *,
    threshold: float = 0.5,
) -> dict[str, float]:
    """accuracy, f1, f1_macro, roc_auc, precision, recall, specificity for one split.

    - binary: ``probs`` (N,) = P(class 1); ``f1``/precision/recall for class 1, ``f1_macro`` over
      both classes, ``roc_auc`` the usual binary AUC.
    - multi-class / ordinal: ``probs`` (N, C); ``f1`` = macro F1, ``roc_auc`` = macro one-vs-rest.
    - multi-label: ``probs`` (N, L); accuracy = mean per-label accuracy (MedMNIST's definition).
    ROC-AUC is NaN when the split holds a single class (it is undefined there).
    """
    target = target.long()
    out: dict[str, torch.Tensor | float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns on absent classes; we report NaN
        if task_type == BINARY:
            p = probs.reshape(-1)
            out["accuracy"] = C.binary_accuracy(p, target, threshold=threshold)
            out["f1"] = C.binary_f1_score(p, target, threshold=threshold)
            pred = (p >= threshold).long()
            out["f1_macro"] = C.multiclass_f1_score(pred, target, 2, average="macro")
            out["precision"] = C.binary_precision(p, target, threshold=threshold)
            out["recall"] = C.binary_recall(p, target, threshold=threshold)
            out["specificity"] = C.binary_specificity(p, target, threshold=threshold)
            out["roc_auc"] = math.nan if _single_class(target) else C.binary_auroc(p, target)
        elif task_type in (MULTICLASS, ORDINAL):
            kw = {"num_classes": num_classes}
            out["accuracy"] = C.multiclass_accuracy(probs, target, average="micro", **kw)
            out["balanced_accuracy"] = C.multiclass_accuracy(probs, target, average="macro", **kw)
            out["f1"] = C.multiclass_f1_score(probs, target, average="macro", **kw)
            out["precision"] = C.multiclass_precision(probs, target, average="macro", **kw)
            out["recall"] = C.multiclass_recall(probs, target, average="macro", **kw)
            out["specificity"] = C.multiclass_specificity(probs, target, average="macro", **kw)
            out["roc_auc"] = (
                math.nan
                if _single_class(target)
                else C.multiclass_auroc(probs, target, average="macro", **kw)
            )
        elif task_type == MULTILABEL:
            kw = {"num_labels": num_classes, "threshold": threshold}
            out["accuracy"] = C.multilabel_accuracy(probs, target, average="macro", **kw)
            out["f1"] = C.multilabel_f1_score(probs, target, average="macro", **kw)
            out["precision"] = C.multilabel_precision(probs, target, average="macro", **kw)
            out["recall"] = C.multilabel_recall(probs, target, average="macro", **kw)
            out["specificity"] = C.multilabel_specificity(probs, target, average="macro", **kw)
            out["roc_auc"] = C.multilabel_auroc(
                probs, target, num_labels=num_classes, average="macro"
            )
        else:
            raise ValueError(f"unknown task type {task_type!r}")
    return {k: float(v) for k, v in out.items()}


class ClassificationMetrics(Metric):
    """Accumulates probabilities and targets over a split (all ranks), then computes once."""

    full_state_update = False

    def __init__(self, task_type: str, num_classes: int, threshold: float = 0.5) -> None:
        super().__init__()
        self.task_type, self.num_classes, self.threshold = task_type, num_classes, threshold
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.target.append(target.detach())

    def compute(self) -> dict[str, float]:
        probs = self.probs if isinstance(self.probs, torch.Tensor) else torch.cat(self.probs)
        target = self.target if isinstance(self.target, torch.Tensor) else torch.cat(self.target)
        return classification_metrics(
            probs, target, self.task_type, self.num_classes, threshold=self.threshold
        )
