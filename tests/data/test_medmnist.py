"""MedMNISTDataModule on the real mirror files, plus synthetic npz files for untested flags."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.data.medmnist import MedMNISTDataModule, load_npz, medmnist_info, remote_files
from medpipe.errors import ConfigError, DataError


def _dm(tmp_path: Path, shared_data: Path, flag: str, **kw) -> MedMNISTDataModule:
    root = tmp_path / flag
    root.mkdir()
    shutil.copyfile(shared_data / "medmnist" / f"{flag}.npz", root / f"{flag}.npz")
    return MedMNISTDataModule(flag=flag, root=root, batch_size=16, **kw)


@pytest.mark.parametrize(
    ("flag", "sizes", "counts"),
    [
        ("pneumoniamnist", {"train": 4708, "val": 524, "test": 624}, {"train": [1214, 3494]}),
        ("breastmnist", {"train": 546, "val": 78, "test": 156}, {"train": [147, 399]}),
    ],
)
def test_real_splits_shapes_and_labels(tmp_path, shared_data, flag, sizes, counts):
    dm = _dm(tmp_path, shared_data, flag)
    assert dm.task_type == "binary-class" == medmnist_info(flag)["task"]
    assert dm.num_classes == 2 and dm.channels == 1
    assert dm.split_sizes() == sizes
    labels = dm.datasets["train"].labels
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == counts["train"]
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1}
    # default normalization maps [0, 255] to [-1, 1]
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_three_channels_and_custom_normalization(tmp_path, shared_data):
    dm = _dm(tmp_path, shared_data, "breastmnist", channels=3, mean=[0.5] * 3, std=[0.25] * 3)
    dm.setup()
    x, _ = dm.datasets["val"][0]
    assert x.shape == (3, 28, 28)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    raw = dm.datasets["val"].images[0].astype(np.float32) / 255.0
    assert torch.allclose(x[0], torch.from_numpy((raw - 0.5) / 0.25), atol=1e-5)


def test_eval_split_is_not_augmented(tmp_path, shared_data):
    dm = _dm(
        tmp_path, shared_data, "breastmnist", train_augment=[{"name": "HorizontalFlip", "p": 1.0}]
    )
    dm.setup()
    train_x, _ = dm.datasets["train"][0]
    raw = torch.from_numpy(dm.datasets["train"].images[0].astype(np.float32) / 255.0)
    assert torch.allclose(train_x[0], (raw.flip(-1) - 0.5) / 0.5, atol=1e-5)
    val_x, _ = dm.datasets["val"][0]
    raw_val = torch.from_numpy(dm.datasets["val"].images[0].astype(np.float32) / 255.0)
    assert torch.allclose(val_x[0], (raw_val - 0.5) / 0.5, atol=1e-5)


def _synthetic_npz(path: Path, n_labels: int, multilabel: bool, size: int, rgb: bool) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in {"train": 20, "val": 6, "test": 8}.items():
        shape = (n, size, size, 3) if rgb else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if multilabel:
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, n_labels), dtype=np.uint8)
        else:
            arrays[f"{split}_labels"] = rng.integers(0, n_labels, (n, 1), dtype=np.uint8)
    np.savez_compressed(path, **arrays)


@pytest.mark.parametrize(
    ("flag", "size", "task", "rgb"),
    [
        ("chestmnist", 28, "multi-label", False),
        ("dermamnist", 64, "multi-class", True),
        ("retinamnist", 28, "ordinal-regression", True),
    ],
)
def test_untested_flags_work_from_info_alone(tmp_path, flag, size, task, rgb):
    info = medmnist_info(flag)
    n = len(info["label"])
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    _synthetic_npz(tmp_path / name, n, task == "multi-label", size, rgb)
    dm = MedMNISTDataModule(flag=flag, size=size, root=tmp_path, batch_size=4)
    assert dm.task_type == task and dm.num_classes == n
    assert dm.channels == (3 if rgb else 1)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, dm.channels, size, size)
    if task == "multi-label":
        assert y.shape == (4, n) and y.dtype == torch.float32
    else:
        assert y.shape == (4,) and y.dtype == torch.int64


def test_remote_files_use_medmnist_urls_and_md5():
    (r,) = remote_files("pneumoniamnist", 28)
    assert r.relpath == "pneumoniamnist.npz" and r.md5 == "28209eda62fecd6e6a2d98b1501bb15f"
    (r64,) = remote_files("dermamnist", 64)
    assert r64.relpath == "dermamnist_64.npz" and r64.url.startswith("https://")
    assert r64.md5 == medmnist_info("dermamnist")["MD5_64"]


def test_bad_flag_size_and_options():
    with pytest.raises(ConfigError, match="data.flag='nosuchmnist'"):
        MedMNISTDataModule(flag="nosuchmnist")
    with pytest.raises(ConfigError, match="data.size=30"):
        MedMNISTDataModule(flag="pneumoniamnist", size=30)
    with pytest.raises(ConfigError, match="data.channels"):
        MedMNISTDataModule(flag="pneumoniamnist", channels=2)
    with pytest.raises(ConfigError, match="data.batch_size"):
        MedMNISTDataModule(flag="pneumoniamnist", batch_size=0)
    with pytest.raises(ConfigError, match="data.train_augment: 'NoSuchFlip'"):
        MedMNISTDataModule(flag="pneumoniamnist", root="x", train_augment=[{"name": "NoSuchFlip"}])


def test_missing_and_corrupt_npz(tmp_path):
    with pytest.raises(DataError, match="medpipe fetch"):
        load_npz(tmp_path / "pneumoniamnist.npz")
    bad = tmp_path / "pneumoniamnist.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="not a readable npz"):
        load_npz(bad)
    np.savez(bad, train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="lacks arrays"):
        load_npz(bad)
