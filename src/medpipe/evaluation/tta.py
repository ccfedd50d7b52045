"""Test-time augmentation by flips, for ``evaluate`` and ``predict``.

Each image is scored as is and once per configured flip (``task.evaluation.tta.flips``:
``horizontal``, ``vertical``, ``both`` = 180-degree rotation), and the *logits* are averaged,
which is ttach's default ``mean`` merge. Averaging logits (rather than probabilities) keeps a
logit output, so the loss and temperature scaling work on TTA outputs unchanged.

Flips are applied inside the model (:class:`FlipTTA` wraps ``task.model`` for the duration of
:func:`predict`), so the task's own ``predict_step`` (and anything it returns) is reused as is.
Written as a small wrapper instead of using ttach (a grad-cam dependency) to keep it a
``nn.Module`` the Lightning predict loop and the accelerator placement handle like the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from medpipe.errors import ConfigError
from medpipe.evaluation import inference

FLIPS: dict[str, tuple[int, ...]] = {"horizontal": (-1,), "vertical": (-2,), "both": (-2, -1)}


def check_flips(flips: Sequence[str] | str | None) -> tuple[str, ...]:
    """Canonical flip names (duplicates dropped); ConfigError naming the option otherwise."""
    if flips is None:
        return ()
    if isinstance(flips, str):
        flips = [flips]
    out: list[str] = []
    for f in flips:
        key = str(f).lower()
        if key not in FLIPS:
            raise ConfigError(
                f"task.evaluation.tta.flips: {f!r} is not a flip; use a list of "
                f"{sorted(FLIPS)} (or [] for no test-time augmentation)"
            )
        if key not in out:
            out.append(key)
    return tuple(out)


def flips_from_config(cfg: DictConfig) -> tuple[str, ...]:
    """``task.evaluation.tta.flips`` of a composed config (``()`` when absent)."""
    node = cfg.get("task", {}).get("evaluation", {}) or {}
    tta = node.get("tta", {}) or {}
    return check_flips(tta.get("flips"))


class FlipTTA(nn.Module):
    """``model``'s logits averaged over the identity and each flip of the input."""

    def __init__(self, model: nn.Module, flips: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.flips = check_flips(flips)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        for name in self.flips:
            out = out + self.model(torch.flip(x, dims=FLIPS[name]))
        return out / (1 + len(self.flips))


@contextlib.contextmanager
def applied(task: L.LightningModule, flips: Sequence[str]) -> Iterator[L.LightningModule]:
    """Within the block ``task.model`` averages over ``flips``; restored afterwards."""
    flips = check_flips(flips)
    if not flips:
        yield task
        return
    original = task.model
    task.model = FlipTTA(original, flips)
    try:
        yield task
    finally:
        task.model = original


def predict(
    task: L.LightningModule, loader: Any, accelerator: str = "cpu", flips: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """:func:`medpipe.evaluation.inference.predict` with flip TTA (none when ``flips`` is empty)."""
    with applied(task, flips):
        return inference.predict(task, loader, accelerator)
