"""albumentations pipelines built from config.

Config lists transforms by albumentations class name with keyword arguments, e.g.::

    train_augment:
      - {name: HorizontalFlip, p: 0.5}
      - {name: Affine, rotate: [-10, 10], p: 0.5}

so that augmentation is changed in YAML, never in code. Normalization is appended last, then
conversion to a CHW float tensor.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
from albumentations.pytorch import ToTensorV2

from medpipe.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(
    spec: Mapping[str, Any], *, option: str = "data.train_augment"
) -> A.BasicTransform:
    """One albumentations transform from ``{name: ClassName, **kwargs}``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    cls = getattr(A, str(name), None) if name else None
    if cls is None or not isinstance(cls, type):
        raise ConfigError(
            f"{option}: {name!r} is not an albumentations transform "
            "(use the class name, e.g. HorizontalFlip, Affine, RandomBrightnessContrast)"
        )
    # albumentations 2 only warns about unknown arguments and ignores them: a typo would
    # silently train with the default, so unknown names are an error here.
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(spec) - set(params) - {"self"})
        if unknown:
            valid = ", ".join(k for k in params if k != "self")
            raise ConfigError(
                f"{option}: {name} has no argument(s) {', '.join(unknown)}; valid: {valid}"
            )
    try:
        return cls(**spec)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{option}: bad arguments for {name}: {exc}") from exc


def build_pipeline(
    augment: Sequence[Mapping[str, Any]] | None,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
    option: str = "data.train_augment",
    additional_targets: dict[str, str] | None = None,
) -> A.Compose:
    """Resize (optional) -> augmentations -> Normalize(mean, std) -> tensor."""
    steps: list[A.BasicTransform] = []
    if resize:
        steps.append(A.Resize(resize, resize))
    steps.extend(build_transform(s, option=option) for s in (augment or []))
    steps.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    steps.append(ToTensorV2())
    return A.Compose(steps, additional_targets=additional_targets)
