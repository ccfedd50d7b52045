"""Name -> model constructor, in the style of timm / segmentation-models-pytorch.

A model is added by one ``@register_model("name")`` entry; tasks only ever call
:func:`build_model` with a name from config, never import a concrete model class.
Every constructor takes ``in_channels`` and ``num_classes`` keyword arguments plus its own options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from medpipe.errors import ConfigError

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``fn`` under ``name`` (lower-case)."""

    def deco(fn: ModelFactory) -> ModelFactory:
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not fn:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[key] = fn
        return fn

    return deco


def _ensure_builtin_models() -> None:
    # Importing the modules runs their @register_model decorators.
    from medpipe.models import builtin  # noqa: F401


def list_models() -> list[str]:
    """All registered model names."""
    _ensure_builtin_models()
    return sorted(_REGISTRY)


def build_model(name: str, *, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``.

    Raises :class:`ConfigError` naming ``model.name`` and the known names for an unknown model.
    """
    _ensure_builtin_models()
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ConfigError(
            f"model.name={name!r} is not a known model. Choose one of: {', '.join(list_models())}"
        )
    if in_channels < 1 or num_classes < 1:
        raise ConfigError(
            f"model {name!r}: in_channels ({in_channels}) and num_classes ({num_classes}) "
            "must both be >= 1"
        )
    return _REGISTRY[key](in_channels=in_channels, num_classes=num_classes, **kwargs)
