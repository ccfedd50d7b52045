"""Choosing the decision threshold of a binary classifier on the validation split.

A model trained on imbalanced data rarely has its best operating point at 0.5. The threshold is
picked on *validation* (never on test, which would leak) from scikit-learn's ROC curve:

- ``youden``: maximise Youden's J = sensitivity + specificity - 1 (= TPR - FPR);
- ``sensitivity``: the highest threshold whose sensitivity reaches ``target_sensitivity`` (so the
  best specificity among those that meet the target), the usual screening requirement.

Ties are broken towards the higher threshold (fewer positives), deterministically. The reported
threshold is the midpoint between the chosen validation score and the next lower one, so
``p >= t`` (scikit-learn's ROC convention) and ``p > t`` (torchmetrics') classify every
validation sample the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medpipe.errors import ConfigError, DataError

METHODS: tuple[str, ...] = ("youden", "sensitivity", "none")


@dataclass(frozen=True)
class ThresholdChoice:
    """The tuned threshold and the validation operating point it gives."""

    method: str
    threshold: float
    val_sensitivity: float
    val_specificity: float

    def as_dict(self) -> dict[str, float | str]:
        return {
            "method": self.method,
            "value": self.threshold,
            "val_sensitivity": self.val_sensitivity,
            "val_specificity": self.val_specificity,
        }


def check_method(method: str, target_sensitivity: float) -> str:
    """Canonical method name; ConfigError naming ``task.evaluation.threshold.*`` otherwise."""
    key = str(method).lower()
    if key not in METHODS:
        raise ConfigError(
            f"task.evaluation.threshold.method={method!r} is unknown; use one of {list(METHODS)}"
        )
    if key == "sensitivity" and not 0.0 < float(target_sensitivity) <= 1.0:
        raise ConfigError(
            f"task.evaluation.threshold.target_sensitivity={target_sensitivity} must be in (0, 1]"
        )
    return key


def _roc(probs: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    t = np.asarray(target).reshape(-1).astype(int)
    if len(np.unique(t)) < 2:
        raise DataError(
            "cannot tune the decision threshold: the validation split holds a single class; "
            "set task.evaluation.threshold.method=none or use a validation split with both classes"
        )
    # drop_intermediate=False keeps every distinct score, so no optimal point is lost.
    fpr, tpr, thr = roc_curve(t, p, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing predicted positive); it is not usable.
    keep = np.isfinite(thr)
    return fpr[keep], tpr[keep], thr[keep]


def _between(thr: np.ndarray, best: int) -> float:
    """Midpoint between the chosen score and the next lower distinct score (or 0)."""
    lower = float(thr[best + 1]) if best + 1 < len(thr) else 0.0
    return (float(thr[best]) + lower) / 2.0


def youden_threshold(probs: np.ndarray, target: np.ndarray) -> ThresholdChoice:
    """Threshold maximising TPR - FPR on ``(probs, target)``."""
    fpr, tpr, thr = _roc(probs, target)
    j = tpr - fpr
    best = int(np.flatnonzero(j == j.max())[0])  # thresholds decrease: first = highest
    return ThresholdChoice("youden", _between(thr, best), float(tpr[best]), float(1 - fpr[best]))


def sensitivity_threshold(
    probs: np.ndarray, target: np.ndarray, target_sensitivity: float
) -> ThresholdChoice:
    """Highest threshold with TPR >= ``target_sensitivity`` (ties: highest threshold)."""
    fpr, tpr, thr = _roc(probs, target)
    ok = np.flatnonzero(tpr >= float(target_sensitivity) - 1e-12)
    best = int(ok[0])  # tpr is non-decreasing as thresholds decrease
    return ThresholdChoice(
        "sensitivity", _between(thr, best), float(tpr[best]), float(1 - fpr[best])
    )


def tune_threshold(
    probs: np.ndarray, target: np.ndarray, method: str, target_sensitivity: float = 0.9
) -> ThresholdChoice | None:
    """The threshold for ``method`` tuned on validation ``(probs, target)``; None for ``none``."""
    method = check_method(method, target_sensitivity)
    if method == "none":
        return None
    if method == "youden":
        return youden_threshold(probs, target)
    return sensitivity_threshold(probs, target, target_sensitivity)
