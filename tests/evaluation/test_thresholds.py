"""Decision-threshold tuning: checked by brute force over every candidate threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from medpipe.errors import ConfigError, DataError
from medpipe.evaluation.report_metrics import headline_metrics
from medpipe.evaluation.thresholds import tune_threshold

RNG = np.random.default_rng(3)


def _val(n: int = 300):
    y = RNG.integers(0, 2, n)
    p = np.clip(0.25 + 0.35 * y + RNG.normal(0, 0.2, n), 0.001, 0.999).round(3)  # with ties
    return p, y


def _sens_spec(p: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float]:
    tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]).ravel()
    return tp / (tp + fn), tn / (tn + fp)


def _candidates(p: np.ndarray) -> list[float]:
    return sorted(set(p.tolist()), reverse=True)


def test_youden_is_the_brute_force_optimum():
    p, y = _val()
    choice = tune_threshold(p, y, "youden")
    best_j = max(sum(_sens_spec(p, y, t)) - 1 for t in _candidates(p))
    sens, spec = _sens_spec(p, y, choice.threshold)
    assert sens + spec - 1 == pytest.approx(best_j)
    assert (choice.val_sensitivity, choice.val_specificity) == pytest.approx((sens, spec))


def test_threshold_means_the_same_for_sklearn_and_torchmetrics():
    p, y = _val()
    t = tune_threshold(p, y, "youden").threshold
    assert np.array_equal(p >= t, p > t), "no validation score may sit exactly on the threshold"
    m = headline_metrics(torch.tensor(p), torch.tensor(y), "binary-class", 2, threshold=t)
    sens, spec = _sens_spec(p, y, t)
    assert m["recall"] == pytest.approx(sens, abs=1e-6)
    assert m["specificity"] == pytest.approx(spec, abs=1e-6)


@pytest.mark.parametrize("target", [0.8, 0.95, 1.0])
def test_sensitivity_target_is_met_with_best_specificity(target):
    p, y = _val()
    choice = tune_threshold(p, y, "sensitivity", target_sensitivity=target)
    sens, spec = _sens_spec(p, y, choice.threshold)
    assert sens >= target
    feasible = [_sens_spec(p, y, t) for t in _candidates(p)]
    assert spec == pytest.approx(max(sp for se, sp in feasible if se >= target))


def test_hand_computed_youden():
    # p >= t for t = .9/.8/.7/.6/.2 gives J = 1/3, 2/3, 1/6, 1/2, 0: the cut below 0.8 wins
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    y = np.array([1, 1, 0, 1, 0])
    choice = tune_threshold(p, y, "youden")
    assert choice.threshold == pytest.approx(0.75)  # midway to the next lower score
    assert choice.val_sensitivity == pytest.approx(2 / 3)
    assert choice.val_specificity == pytest.approx(1.0)


def test_none_and_bad_input():
    p, y = _val(20)
    assert tune_threshold(p, y, "none") is None
    with pytest.raises(ConfigError, match="threshold.method='f1'"):
        tune_threshold(p, y, "f1")
    with pytest.raises(ConfigError, match="target_sensitivity"):
        tune_threshold(p, y, "sensitivity", target_sensitivity=1.5)
    with pytest.raises(DataError, match="single class"):
        tune_threshold(p, np.ones_like(y), "youden")
