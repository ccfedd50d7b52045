"""MedMNIST 2D: any flag and size the ``medmnist`` package knows, with the official splits.

The ``medmnist`` package's ``INFO`` table is the single source of truth for URLs, MD5s, task type,
label names and channels, so a flag nobody tested here works without code changes. The npz arrays
are loaded once into memory (the largest 2D flag at 224 px is a few GB; at 28 px all are tiny)
instead of going through ``medmnist``'s PIL-per-item dataset classes, which decode to PIL and back
on every access.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medpipe.data.base import LoaderOptions, check_mean_std
from medpipe.data.sources import RemoteFile, fetch_files
from medpipe.data.transforms import build_pipeline
from medpipe.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SIZES = (28, 64, 128, 224)
TASK_TYPES = ("binary-class", "multi-class", "multi-label", "ordinal-regression")
SPLITS = ("train", "val", "test")


def medmnist_info(flag: str) -> dict[str, Any]:
    """The ``medmnist.INFO`` entry of a 2D flag, or a ConfigError listing the valid flags."""
    from medmnist import INFO

    flag = str(flag).lower()
    flags_2d = sorted(k for k in INFO if not k.endswith("3d"))
    if flag not in flags_2d:
        raise ConfigError(
            f"data.flag={flag!r} is not a MedMNIST 2D flag. Known: {', '.join(flags_2d)}"
        )
    return INFO[flag]


def npz_name(flag: str, size: int) -> str:
    """Upstream file name: ``<flag>.npz`` at 28 px, ``<flag>_<size>.npz`` otherwise."""
    check_size(size)
    return f"{flag}.npz" if int(size) == 28 else f"{flag}_{int(size)}.npz"


def check_size(size: int) -> None:
    if int(size) not in SIZES:
        raise ConfigError(f"data.size={size!r} is not a MedMNIST size; use one of {SIZES}")


def remote_files(flag: str, size: int) -> list[RemoteFile]:
    """The one upstream npz for ``flag`` at ``size``, with the URL and MD5 medmnist publishes."""
    info = medmnist_info(flag)
    suffix = "" if int(size) == 28 else f"_{int(size)}"
    url, md5 = info.get(f"url{suffix}"), info.get(f"MD5{suffix}")
    if not url:
        raise ConfigError(f"MedMNIST flag {flag!r} has no size {size} release")
    return [RemoteFile(npz_name(flag, size), url, md5)]


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load and validate a MedMNIST npz; errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist. Run `medpipe fetch data=<dataset>` first.")
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"{path} is not a readable npz ({exc}). Delete it and run `medpipe fetch` again."
        ) from exc
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays]
    if missing:
        raise DataError(f"{path} lacks arrays {missing}; it is not a MedMNIST file.")
    for s in SPLITS:
        x, y = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if len(x) != len(y):
            raise DataError(f"{path}: {s} has {len(x)} images but {len(y)} labels")
    return arrays


class ArrayDataset(Dataset):
    """uint8 images (N,H,W) or (N,H,W,C) + labels, transformed by albumentations on access."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, transform: Any, *, rgb: bool
    ) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform
        self.rgb = rgb

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[idx]
        if img.ndim == 2:
            img = img[..., None]
        if self.rgb and img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        elif not self.rgb and img.shape[-1] == 3:
            img = img.mean(axis=-1, keepdims=True).astype(np.uint8)
        x = self.transform(image=img)["image"].float()
        return x, torch.as_tensor(self.labels[idx])


class MedMNISTDataModule(LoaderOptions, L.LightningDataModule):
    """Official train/val/test splits of one MedMNIST 2D flag at one size.

    The task type comes from ``medmnist.INFO``; labels are returned as ``long`` class indices for
    binary/multi-class/ordinal tasks and as a float multi-hot vector for multi-label tasks.
    """

    def __init__(
        self,
        flag: str = "pneumoniamnist",
        size: int = 28,
        root: str | Path = "data/raw/medmnist",
        mirror: str | Path | None = None,
        mirror_subdir: str = "medmnist",
        channels: int | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        train_augment: Sequence[Mapping[str, Any]] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **_: Any,
    ) -> None:
        super().__init__()
        self.info = medmnist_info(flag)
        check_size(size)
        self.flag, self.size, self.root = str(flag).lower(), int(size), Path(root)
        self.mirror, self.mirror_subdir = mirror, mirror_subdir
        # ChestMNIST says "multi-label, binary-class": 14 independent binary labels.
        task = str(self.info["task"])
        self.task_type: str = "multi-label" if task.startswith("multi-label") else task
        if self.task_type not in TASK_TYPES:
            raise ConfigError(f"unsupported MedMNIST task type {self.task_type!r} for {flag}")
        self.class_names = [self.info["label"][k] for k in sorted(self.info["label"], key=int)]
        self.num_classes = len(self.class_names)
        native = int(self.info["n_channels"])
        self.channels = int(channels) if channels else native
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels={channels!r}: use 1 (grey), 3 (RGB) or null (native)")
        self.set_loader_options(batch_size, num_workers, pin_memory, persistent_workers)
        self.mean, self.std = check_mean_std(mean, std, self.channels)
        # Built now so that a bad transform name fails before any data is read.
        self.train_transform = build_pipeline(train_augment, mean=self.mean, std=self.std)
        self.eval_transform = build_pipeline(None, mean=self.mean, std=self.std)
        self.datasets: dict[str, ArrayDataset] = {}

    @property
    def path(self) -> Path:
        return self.root / npz_name(self.flag, self.size)

    def fetch(self, *, force: bool = False) -> list[Path]:
        """Put the upstream npz into ``root`` (from the mirror when one is set), MD5-verified."""
        return fetch_files(
            remote_files(self.flag, self.size),
            self.root,
            mirror=self.mirror,
            mirror_subdir=self.mirror_subdir,
            force=force,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        arrays = load_npz(self.path)
        rgb = self.channels == 3
        for split in SPLITS:
            labels = self._labels(arrays[f"{split}_labels"], split)
            tf = self.train_transform if split == "train" else self.eval_transform
            self.datasets[split] = ArrayDataset(arrays[f"{split}_images"], labels, tf, rgb=rgb)

    def _labels(self, raw: np.ndarray, split: str) -> np.ndarray:
        if self.task_type == "multi-label":
            if raw.ndim != 2 or raw.shape[1] != self.num_classes:
                raise DataError(
                    f"{self.path}: {split}_labels has shape {raw.shape}, expected (N, {self.num_classes})"
                )
            return raw.astype(np.float32)
        labels = raw.reshape(len(raw), -1)[:, 0].astype(np.int64)
        bad = np.unique(labels[(labels < 0) | (labels >= self.num_classes)])
        if bad.size:
            raise DataError(
                f"{self.path}: {split}_labels has values {bad.tolist()} outside 0..{self.num_classes - 1}"
            )
        return labels

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        return self.split_loader(split, data=self.flag, shuffle=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        return {s: len(d) for s, d in self.datasets.items()}
