"""``medpipe config``: print the composed config; ``medpipe config > params.yaml`` refreshes DVC's."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from medpipe.config import to_yaml


def run(cfg: DictConfig) -> None:
    """Write the resolved config as YAML to stdout."""
    sys.stdout.write(to_yaml(cfg))
