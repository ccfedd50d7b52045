"""Calibration: expected calibration error, reliability-diagram bins and temperature scaling.

What is measured (the same definition torchmetrics uses, which computes the ECE here):

- binary: the predicted P(class 1) against the observed frequency of class 1 (the classic
  reliability diagram, as in scikit-learn's ``calibration_curve``);
- multi-class / ordinal: the top-label confidence (max probability) against top-label accuracy;
- multi-label: every (sample, label) probability as one binary prediction.

ECE = sum over bins of (bin size / N) * |observed - mean confidence|, with ``bins`` equal-width
bins over [0, 1]; like torchmetrics, a confidence of exactly 1.0 gets a bin of its own.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T > 0 fitted on the
validation split by minimising the negative log-likelihood. It is written here (no maintained
library in the environment provides it) as a 1-parameter L-BFGS fit on log T. It leaves the
arg-max and the ranking unchanged (so accuracy and ROC-AUC stay the same), only the
probabilities move; for a binary task the 0.5-threshold decisions are unchanged too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torchmetrics.functional import classification as C

from medpipe.errors import ConfigError
from medpipe.evaluation.metrics import BINARY, MULTILABEL, logits_to_probs


def check_bins(bins: int) -> int:
    if int(bins) < 1:
        raise ConfigError(f"task.evaluation.calibration.bins={bins} must be >= 1 (15 is usual)")
    return int(bins)


def confidences(
    probs: torch.Tensor, target: torch.Tensor, task_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(confidence, correct)`` pairs, flat, as the reliability diagram plots them.

    Confidences stay float32, the dtype torchmetrics bins in, so both bin identically.
    """
    if task_type in (BINARY, MULTILABEL):
        return probs.reshape(-1).float(), target.reshape(-1).double()
    conf, pred = probs.float().max(dim=1)
    return conf, (pred == target.long()).double()


def expected_calibration_error(
    probs: torch.Tensor, target: torch.Tensor, task_type: str, num_classes: int, bins: int = 15
) -> float:
    """ECE (L1) from torchmetrics, with the definitions of the module docstring."""
    bins = check_bins(bins)
    if target.numel() == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task_type in (BINARY, MULTILABEL):
            p, t = probs.reshape(-1).float(), target.reshape(-1).long()
            return float(C.binary_calibration_error(p, t, bins))
        return float(
            C.multiclass_calibration_error(probs.float(), target.long(), num_classes, bins)
        )


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of the reliability diagram."""

    lower: float
    upper: float
    count: int
    confidence: float  # mean predicted confidence in the bin
    observed: float  # observed frequency / accuracy in the bin

    def as_dict(self) -> dict[str, float | int]:
        return {
            "bin_lower": round(self.lower, 6),
            "bin_upper": round(self.upper, 6),
            "count": self.count,
            "confidence": round(self.confidence, 6),
            "observed": round(self.observed, 6),
        }


def reliability_bins(
    probs: torch.Tensor, target: torch.Tensor, task_type: str, bins: int = 15
) -> list[ReliabilityBin]:
    """Non-empty bins, binned exactly as torchmetrics bins for the ECE (so the weighted mean
    gap of these bins equals :func:`expected_calibration_error`)."""
    bins = check_bins(bins)
    conf, correct = confidences(probs, target, task_type)
    edges = torch.linspace(0, 1, bins + 1, dtype=conf.dtype)
    # torchmetrics: bucketize(..., right=True) - 1; a confidence of exactly 1.0 lands in bin `bins`
    idx = torch.bucketize(conf, edges, right=True) - 1
    out: list[ReliabilityBin] = []
    for b in range(bins + 1):
        mask = idx == b
        n = int(mask.sum())
        if n == 0:
            continue
        lower = float(edges[b]) if b < bins else 1.0
        upper = float(edges[b + 1]) if b < bins else 1.0
        mean_conf = float(conf[mask].double().mean())
        out.append(ReliabilityBin(lower, upper, n, mean_conf, float(correct[mask].mean())))
    return out


def ece_from_bins(rbins: list[ReliabilityBin]) -> float:
    """Weighted mean |observed - confidence| of the bins."""
    total = sum(b.count for b in rbins)
    if total == 0:
        return math.nan
    return sum(b.count / total * abs(b.observed - b.confidence) for b in rbins)


def scaled_loss(logits: torch.Tensor, target: torch.Tensor, task_type: str) -> torch.Tensor:
    """Mean negative log-likelihood of ``logits`` (no class weights: a calibration measure)."""
    if task_type == BINARY:
        return F.binary_cross_entropy_with_logits(
            logits.reshape(-1).double(), target.reshape(-1).double()
        )
    if task_type == MULTILABEL:
        return F.binary_cross_entropy_with_logits(logits.double(), target.double())
    return F.cross_entropy(logits.double(), target.long())


def fit_temperature(
    logits: torch.Tensor, target: torch.Tensor, task_type: str, *, max_iter: int = 100
) -> float:
    """The temperature T minimising the NLL of ``logits / T`` on ``(logits, target)``."""
    if target.numel() == 0:
        return 1.0
    logits = logits.detach().double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = scaled_loss(logits / log_t.exp(), target, task_type)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    # A degenerate fit (perfectly separated validation data drives T -> 0) is clamped.
    return min(max(t, 1e-2), 1e2) if math.isfinite(t) else 1.0


def apply_temperature(logits: torch.Tensor, temperature: float, task_type: str) -> torch.Tensor:
    """Probabilities of ``logits / temperature``."""
    return logits_to_probs(logits / float(temperature), task_type)
