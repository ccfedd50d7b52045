"""``medpipe fetch``: upstream (or mirror) files -> ``data/raw/<dataset>/``."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from medpipe.data.registry import build_datamodule

log = logging.getLogger(__name__)


def run(cfg: DictConfig, *, force: bool = False) -> None:
    """Fetch the files of ``cfg.data`` and verify them."""
    dm = build_datamodule(cfg.data)
    paths = dm.fetch(force=force)
    for p in paths:
        log.info("ready: %s", p)
