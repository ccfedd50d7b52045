"""Bootstrap CIs: seeded, paired across metrics, checked against scipy and the normal theory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from medpipe.errors import ConfigError
from medpipe.evaluation.bootstrap import bootstrap_ci, resample_indices
from medpipe.evaluation.report_metrics import headline_metrics


def _accuracy(p: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    return {"accuracy": float(((p > 0.5).long() == t).double().mean())}


def _data(n: int = 400, acc: float = 0.8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, n)
    correct = rng.random(n) < acc
    p = np.where(correct, t, 1 - t) * 0.8 + 0.1  # 0.9 when predicting 1, 0.1 when predicting 0
    return torch.tensor(p), torch.tensor(t)


def test_seeded_and_reproducible():
    p, t = _data()
    a = bootstrap_ci(_accuracy, p, t, keys=["accuracy"], resamples=300, seed=7)
    b = bootstrap_ci(_accuracy, p, t, keys=["accuracy"], resamples=300, seed=7)
    c = bootstrap_ci(_accuracy, p, t, keys=["accuracy"], resamples=300, seed=8)
    assert a == b
    assert a != c
    state = torch.get_rng_state()
    bootstrap_ci(_accuracy, p, t, keys=["accuracy"], resamples=10, seed=1)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be touched"


def test_accuracy_ci_matches_normal_theory_and_scipy():
    p, t = _data(n=400, acc=0.8)
    point = _accuracy(p, t)["accuracy"]
    ci = bootstrap_ci(_accuracy, p, t, keys=["accuracy"], resamples=2000, seed=0)["accuracy"]
    assert ci["n"] == 2000
    assert ci["low"] < point < ci["high"]
    # the percentile interval of a proportion ~ point -/+ 1.96 * sqrt(p(1-p)/n)
    half = 1.96 * math.sqrt(point * (1 - point) / len(t))
    assert ci["low"] == pytest.approx(point - half, abs=0.012)
    assert ci["high"] == pytest.approx(point + half, abs=0.012)
    correct = ((p > 0.5).long() == t).double().numpy()
    ref = stats.bootstrap(
        (correct,), np.mean, n_resamples=2000, method="percentile", random_state=0
    ).confidence_interval
    assert ci["low"] == pytest.approx(ref.low, abs=0.01)
    assert ci["high"] == pytest.approx(ref.high, abs=0.01)


def test_wider_for_higher_confidence():
    p, t = _data()
    ci90 = bootstrap_ci(_accuracy, p, t, keys=["accuracy"], resamples=500, confidence=0.9)
    ci99 = bootstrap_ci(_accuracy, p, t, keys=["accuracy"], resamples=500, confidence=0.99)
    assert ci99["accuracy"]["low"] < ci90["accuracy"]["low"]
    assert ci99["accuracy"]["high"] > ci90["accuracy"]["high"]


def test_resamples_are_paired_across_metrics():
    p, t = _data(n=50)

    def two(pp, tt):
        acc = _accuracy(pp, tt)["accuracy"]
        return {"a": acc, "b": 1.0 - acc}

    ci = bootstrap_ci(two, p, t, keys=["a", "b"], resamples=200, seed=3)
    assert ci["a"]["low"] == pytest.approx(1 - ci["b"]["high"])
    assert ci["a"]["high"] == pytest.approx(1 - ci["b"]["low"])


def test_undefined_resamples_are_skipped_per_metric():
    # 12 samples, one positive: many resamples miss it and ROC-AUC is undefined there
    t = torch.tensor([0] * 11 + [1])
    p = torch.linspace(0.05, 0.95, 12)

    def fn(pp, tt):
        return headline_metrics(pp, tt, "binary-class", 2)

    ci = bootstrap_ci(fn, p, t, keys=["accuracy", "roc_auc"], resamples=300, seed=0)
    assert ci["accuracy"]["n"] == 300
    assert 0 < ci["roc_auc"]["n"] < 300
    assert math.isfinite(ci["roc_auc"]["low"])


def test_stratified_resamples_keep_class_counts():
    t = torch.tensor([0] * 7 + [1] * 3 + [2] * 5)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = resample_indices(t, g, stratified=True)
        assert torch.bincount(t[idx], minlength=3).tolist() == [7, 3, 5]


def test_off_and_bad_settings():
    p, t = _data(n=20)
    assert bootstrap_ci(_accuracy, p, t, keys=["accuracy"], resamples=0) == {}
    with pytest.raises(ConfigError, match="bootstrap.resamples"):
        bootstrap_ci(_accuracy, p, t, keys=["accuracy"], resamples=-1)
    with pytest.raises(ConfigError, match="bootstrap.confidence"):
        bootstrap_ci(_accuracy, p, t, keys=["accuracy"], confidence=95)
