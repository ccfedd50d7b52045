"""Checkpoint writing that survives interruption.

Lightning's ``TorchCheckpointIO`` writes straight into the target file, so a kill during a save
leaves a truncated ``last.ckpt``. This plugin saves to a temporary file in the same folder and
renames it over the target (atomic on one filesystem).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medpipe.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temp-then-rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        with atomic_path(Path(path)) as tmp:
            torch.save(checkpoint, tmp)
