"""Imports every module that registers models, so the registry is complete on first use."""

from medpipe.models import classifiers  # noqa: F401
