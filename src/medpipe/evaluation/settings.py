"""``task.evaluation``: the knobs of the classification report, validated up front.

Every value is checked before any data is read, and a typo in a key is an error naming the key
(a silently ignored ``resample: 100`` would report CIs from the default instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medpipe.errors import ConfigError
from medpipe.evaluation.bootstrap import check_settings
from medpipe.evaluation.calibration import check_bins
from medpipe.evaluation.thresholds import check_method
from medpipe.evaluation.tta import check_flips

DEFAULTS: dict[str, dict[str, Any]] = {
    "bootstrap": {"resamples": 1000, "confidence": 0.95, "seed": 0, "stratified": False},
    "threshold": {"method": "youden", "target_sensitivity": 0.9},
    "calibration": {"bins": 15, "temperature_scaling": True},
    "tta": {"flips": []},
    "gradcam": {"per_class": 2, "target_layer": None},
}


@dataclass(frozen=True)
class EvaluationSettings:
    """Resolved ``task.evaluation`` (defaults for anything not set)."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    stratified: bool = False
    threshold_method: str = "youden"
    target_sensitivity: float = 0.9
    bins: int = 15
    temperature_scaling: bool = True
    flips: tuple[str, ...] = field(default_factory=tuple)
    gradcam_per_class: int = 2
    gradcam_layer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "bootstrap": {
                "resamples": self.resamples,
                "confidence": self.confidence,
                "seed": self.seed,
                "stratified": self.stratified,
            },
            "threshold": {
                "method": self.threshold_method,
                "target_sensitivity": self.target_sensitivity,
            },
            "calibration": {"bins": self.bins, "temperature_scaling": self.temperature_scaling},
            "tta": {"flips": list(self.flips)},
            "gradcam": {"per_class": self.gradcam_per_class, "target_layer": self.gradcam_layer},
        }


def _merged(node: Any) -> dict[str, dict[str, Any]]:
    given = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    given = dict(given or {})
    out: dict[str, dict[str, Any]] = {}
    for group in given:
        if group not in DEFAULTS:
            raise ConfigError(
                f"task.evaluation.{group} is not an option; use {sorted(DEFAULTS)} "
                "(see conf/task/classification.yaml)"
            )
    for group, defaults in DEFAULTS.items():
        values = given.get(group) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"task.evaluation.{group} must be a mapping of options")
        for key in values:
            if key not in defaults:
                raise ConfigError(
                    f"task.evaluation.{group}.{key} is not an option; use one of {sorted(defaults)}"
                )
        out[group] = {**defaults, **values}
    return out


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ConfigError(f"task.evaluation.{key}={value!r} must be a whole number")
    return int(value)


def settings_from_config(cfg: DictConfig) -> EvaluationSettings:
    """Validated :class:`EvaluationSettings` from ``cfg.task.evaluation`` (may be absent)."""
    node = cfg.get("task", {}).get("evaluation") if cfg.get("task") else None
    v = _merged(node)
    b, t, c, g = v["bootstrap"], v["threshold"], v["calibration"], v["gradcam"]
    resamples = _int(b["resamples"], "bootstrap.resamples")
    check_settings(resamples, float(b["confidence"]))
    method = check_method(str(t["method"]), float(t["target_sensitivity"]))
    per_class = _int(g["per_class"], "gradcam.per_class")
    if per_class < 0:
        raise ConfigError(f"task.evaluation.gradcam.per_class={per_class} must be >= 0 (0 = off)")
    layer = g["target_layer"]
    return EvaluationSettings(
        resamples=resamples,
        confidence=float(b["confidence"]),
        seed=_int(b["seed"], "bootstrap.seed"),
        stratified=bool(b["stratified"]),
        threshold_method=method,
        target_sensitivity=float(t["target_sensitivity"]),
        bins=check_bins(_int(c["bins"], "calibration.bins")),
        temperature_scaling=bool(c["temperature_scaling"]),
        flips=check_flips(v["tta"]["flips"]),
        gradcam_per_class=per_class,
        gradcam_layer=str(layer) if layer else None,
    )
