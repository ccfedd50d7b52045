"""Percentile bootstrap confidence intervals for every headline metric at once.

Written by hand (a short loop) rather than with ``scipy.stats.bootstrap`` or torchmetrics'
``BootStrapper`` because the report needs, at the same time:

- *paired* resamples: every metric of one resample is computed on the same indices, so the CIs
  of e.g. sensitivity and specificity describe the same hypothetical test sets (scipy resamples
  per statistic; ``BootStrapper`` wraps one metric and keeps a deep copy per resample);
- a private, seeded ``torch.Generator``: the CIs are reproducible from ``seed`` alone and the
  global RNG (used by training) is never touched;
- resamples in which a metric is undefined (ROC-AUC of a resample holding one class) skipped
  for that metric only, with the count of valid resamples reported.

The point estimate stays the metric on the full test set; the interval is the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the resampled values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from medpipe.errors import ConfigError

MetricFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


def check_settings(resamples: int, confidence: float) -> None:
    """ConfigError naming ``task.evaluation.bootstrap.*`` for unusable values."""
    if int(resamples) < 0:
        raise ConfigError(
            f"task.evaluation.bootstrap.resamples={resamples} must be >= 0 (0 turns CIs off; "
            "1000 is usual)"
        )
    if not 0.0 < float(confidence) < 1.0:
        raise ConfigError(
            f"task.evaluation.bootstrap.confidence={confidence} must be in (0, 1), e.g. 0.95"
        )


def resample_indices(
    target: torch.Tensor, generator: torch.Generator, *, stratified: bool = False
) -> torch.Tensor:
    """Indices of one bootstrap resample (with replacement) of ``len(target)`` samples.

    ``stratified`` resamples within each class so every resample keeps the class counts of the
    test set (useful for tiny test sets where a plain resample can miss a class); it applies to
    single-label targets only.
    """
    n = len(target)
    if not stratified or target.ndim != 1:
        return torch.randint(0, n, (n,), generator=generator)
    parts = []
    for c in torch.unique(target):
        members = torch.nonzero(target == c).reshape(-1)
        pick = torch.randint(0, len(members), (len(members),), generator=generator)
        parts.append(members[pick])
    return torch.cat(parts)


def bootstrap_ci(
    metric_fn: MetricFn,
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    keys: Sequence[str],
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = False,
) -> dict[str, dict[str, float | int]]:
    """``{metric: {low, high, n}}`` for each of ``keys`` that ``metric_fn`` returns.

    ``n`` is the number of resamples in which the metric was defined (finite); a metric defined
    in none gets ``low = high = NaN``. ``resamples=0`` returns ``{}``.
    """
    check_settings(resamples, confidence)
    if resamples == 0 or len(target) == 0:
        return {}
    generator = torch.Generator().manual_seed(int(seed))
    values: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(int(resamples)):
        idx = resample_indices(target, generator, stratified=stratified)
        scores = metric_fn(probs[idx], target[idx])
        for k in keys:
            v = scores.get(k)
            if v is not None and math.isfinite(v):
                values[k].append(float(v))
    alpha = (1.0 - float(confidence)) / 2.0
    out: dict[str, dict[str, float | int]] = {}
    for k, vals in values.items():
        if vals:
            lo, hi = np.quantile(np.asarray(vals), [alpha, 1.0 - alpha])
            out[k] = {"low": float(lo), "high": float(hi), "n": len(vals)}
        else:
            out[k] = {"low": math.nan, "high": math.nan, "n": 0}
    return out
