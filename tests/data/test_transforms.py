"""Config -> albumentations transforms: names, arguments and the clear errors for typos."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from medpipe.data.transforms import build_pipeline, build_transform
from medpipe.errors import ConfigError


def test_build_transform_by_class_name() -> None:
    t = build_transform({"name": "Affine", "rotate": [-10, 10], "p": 0.3})
    assert isinstance(t, A.Affine) and t.p == 0.3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "HorizontalFlipp"}, "'HorizontalFlipp' is not an albumentations transform"),
        ({"name": "Affine", "rotat": 10}, "Affine has no argument.s. rotat; valid: .*rotate"),
        ({"name": "RandomBrightnessContrast", "p": 2.0}, "bad arguments for RandomBrightness"),
    ],
)
def test_bad_transform_specs_name_the_option(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"data.val_augment: {message}"):
        build_transform(spec, option="data.val_augment")


def test_pipeline_normalises_and_returns_chw_tensor() -> None:
    pipe = build_pipeline([], mean=(0.5,), std=(0.25,), resize=8)
    out = pipe(image=np.full((4, 4, 1), 255, np.uint8))["image"]
    assert tuple(out.shape) == (1, 8, 8)
    assert float(out.min()) == pytest.approx(2.0)
