"""Imports every module that registers models, so the registry is complete on first use."""

from medpipe.models import (
    backbones,  # noqa: F401
    classifiers,  # noqa: F401
    tiramisu,  # noqa: F401
)
