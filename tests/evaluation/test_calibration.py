"""ECE, reliability bins and temperature scaling against hand-computed values and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from sklearn.calibration import calibration_curve

from medpipe.errors import ConfigError
from medpipe.evaluation.calibration import (
    apply_temperature,
    ece_from_bins,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    scaled_loss,
)

RNG = np.random.default_rng(7)


def test_binary_ece_hand_computed():
    # 2 bins: [0, .5) holds p=.1,.2,.3 (mean .2, 1 positive of 3); [.5, 1] holds .8,.9 (mean .85,
    # 2 positives of 2). ECE = 3/5*|1/3-.2| + 2/5*|1-.85| = .08 + .06 = .14
    p = torch.tensor([0.1, 0.2, 0.3, 0.8, 0.9])
    t = torch.tensor([0, 1, 0, 1, 1])
    assert expected_calibration_error(p, t, "binary-class", 2, bins=2) == pytest.approx(0.14)
    bins = reliability_bins(p, t, "binary-class", bins=2)
    assert [(b.count, round(b.confidence, 6), round(b.observed, 6)) for b in bins] == [
        (3, 0.2, round(1 / 3, 6)),
        (2, 0.85, 1.0),
    ]


def test_multiclass_ece_hand_computed():
    # top-label confidences .5 (wrong), .7 (right), .9 (right), .9 (wrong); 10 bins
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.7, 0.2], [0.9, 0.05, 0.05], [0.05, 0.05, 0.9]])
    t = torch.tensor([1, 1, 0, 0])
    expected = 0.25 * 0.5 + 0.25 * 0.3 + 0.5 * abs(0.5 - 0.9)
    ece = expected_calibration_error(probs, t, "multi-class", 3, bins=10)
    assert ece == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("task_type", ["binary-class", "multi-class", "multi-label"])
def test_bins_reproduce_torchmetrics_ece(task_type):
    n, c = 500, 4
    if task_type == "binary-class":
        probs = torch.tensor(RNG.random(n), dtype=torch.float32)
        probs[:5] = 1.0  # exactly 1.0 gets its own bin in torchmetrics; must still agree
        t = torch.tensor((RNG.random(n) < probs.numpy() ** 2).astype(int))
    elif task_type == "multi-class":
        probs = torch.tensor(RNG.dirichlet(np.ones(c) * 0.5, n), dtype=torch.float32)
        t = torch.tensor(RNG.integers(0, c, n))
    else:
        probs = torch.tensor(RNG.random((n, c)), dtype=torch.float32)
        t = torch.tensor((RNG.random((n, c)) < 0.4).astype(int))
    bins = reliability_bins(probs, t, task_type, bins=15)
    expected_count = n if task_type == "multi-class" else t.numel()
    assert sum(b.count for b in bins) == expected_count
    assert ece_from_bins(bins) == pytest.approx(
        expected_calibration_error(probs, t, task_type, c, bins=15), abs=1e-6
    )


def test_binary_bins_match_sklearn_calibration_curve():
    p = RNG.random(1000)
    t = (RNG.random(1000) < p).astype(int)
    bins = reliability_bins(torch.tensor(p), torch.tensor(t), "binary-class", bins=10)
    prob_true, prob_pred = calibration_curve(t, p, n_bins=10, strategy="uniform")
    assert [b.observed for b in bins] == pytest.approx(prob_true.tolist(), abs=1e-9)
    assert [b.confidence for b in bins] == pytest.approx(prob_pred.tolist(), abs=1e-6)


def _overconfident(n: int = 2000, c: int = 3, temperature: float = 3.0):
    true_logits = RNG.normal(size=(n, c)) * 1.5
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([RNG.choice(c, p=row) for row in p])
    return torch.tensor(true_logits * temperature), torch.tensor(y)


def test_temperature_recovers_overconfidence_and_minimises_nll():
    logits, y = _overconfident(temperature=3.0)
    t = fit_temperature(logits, y, "multi-class")
    assert t == pytest.approx(3.0, rel=0.15)
    ref = minimize_scalar(
        lambda v: float(scaled_loss(logits / v, y, "multi-class")),
        bounds=(0.05, 20),
        method="bounded",
    )
    assert t == pytest.approx(ref.x, rel=1e-3)
    before = apply_temperature(logits, 1.0, "multi-class")
    after = apply_temperature(logits, t, "multi-class")
    assert torch.equal(before.argmax(1), after.argmax(1)), "T must not change the arg-max"
    ece_before = expected_calibration_error(before, y, "multi-class", 3)
    ece_after = expected_calibration_error(after, y, "multi-class", 3)
    assert ece_after < ece_before / 2


def test_temperature_binary_one_logit():
    z = torch.tensor(RNG.normal(size=3000) * 2)
    y = torch.tensor((RNG.random(3000) < torch.sigmoid(z).numpy()).astype(int))
    t = fit_temperature(z * 0.5, y, "binary-class")  # under-confident by 2x -> T ~ 0.5
    assert t == pytest.approx(0.5, rel=0.15)
    assert apply_temperature(z, 2.0, "binary-class").shape == (3000,)


def test_bad_bins():
    with pytest.raises(ConfigError, match="calibration.bins"):
        expected_calibration_error(torch.rand(3), torch.tensor([0, 1, 0]), "binary-class", 2, 0)
