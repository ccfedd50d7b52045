"""Shared pieces for the training tests (no tests here): a tiny real-data split and CLI runners.

The split is a stratified subset of the real BreastMNIST file from the mirror with ODD val and
test sizes (23 and 37), so a DistributedSampler over 2 ranks would have to pad them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import REPO

SIZES = {"train": (20, 44), "val": (7, 16), "test": (11, 26)}  # (class 0, class 1) per split


def make_tiny_breastmnist(shared_data: Path, dest: Path) -> Path:
    """``dest/breastmnist.npz``: 64 / 23 / 37 real BreastMNIST images, both classes in each split."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "breastmnist.npz"
    if out.is_file():
        return dest
    with np.load(shared_data / "medmnist" / "breastmnist.npz") as npz:
        arrays = {}
        for split, counts in SIZES.items():
            labels = npz[f"{split}_labels"].reshape(-1)
            idx = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(counts)])
            idx.sort()
            arrays[f"{split}_images"] = npz[f"{split}_images"][idx]
            arrays[f"{split}_labels"] = npz[f"{split}_labels"][idx]
    np.savez(out, **arrays)
    return dest


def tiny_overrides(data_root: Path, **extra: object) -> list[str]:
    """A seconds-long training config on the tiny split (a 2-layer CNN, 4 steps per epoch)."""
    base = {
        "data": "breastmnist",
        "data.root": str(data_root),
        "data.batch_size": 16,
        "model": "cnn",
        "model.channels": "[8,16]",
        "model.hidden": "[16]",
        "task.scheduler.name": "cosine",
        "trainer.max_epochs": 2,
        "trainer.enable_progress_bar": "false",
        "+trainer.enable_model_summary": "false",
        "logger": "none",
        "name": "tiny",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a ``medpipe`` subprocess run from a scratch directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PL_", "LOCAL_RANK"))}
    env.update(
        MEDPIPE_CONFIG_DIR=str(REPO / "conf"),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def medpipe_cmd(*args: str) -> list[str]:
    """``python -m medpipe.cli ...`` with this interpreter (Lightning re-runs it for DDP ranks)."""
    return [sys.executable, "-m", "medpipe.cli", *args]


def run_medpipe(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        medpipe_cmd(*args),
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc
