"""Imports every module that registers models, so the registry is complete on first use."""

from medpipe.models import (
    backbones,  # noqa: F401
    classifiers,  # noqa: F401
    segmentation,  # noqa: F401  (issue 4: U-Net)
    tiramisu,  # noqa: F401
)
