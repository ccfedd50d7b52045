"""``medpipe prepare``: decode raw images once into a uint8 cache under ``data/processed/``.

DataModules whose raw files are slow to decode (PNG folders, TIFF) implement ``prepare()``;
for the others (MedMNIST's npz is already arrays) this stage is a no-op.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from medpipe.data.registry import build_datamodule

log = logging.getLogger(__name__)


def run(cfg: DictConfig, force: bool = False) -> None:
    """Build the processed cache of ``cfg.data`` (if its DataModule has one)."""
    dm = build_datamodule(cfg.data)
    prepare = getattr(dm, "prepare", None)
    if prepare is None:
        log.info("data=%s needs no prepare step", cfg.data.name)
        return
    prepare(force=force)
