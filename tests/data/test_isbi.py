"""ISBI 2012 membranes on the real mirror: pinned MD5s, membrane = black class, unlabelled test."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medpipe.data.isbi import BASE_URL, ISBIDataModule, isbi_remote_files
from medpipe.errors import ChecksumError


@pytest.fixture(scope="module")
def isbi_raw(tmp_path_factory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("isbi") / "raw"
    paths = ISBIDataModule(root=root, processed=root.parent / "p", mirror=str(shared_data)).fetch()
    assert len(paths) == 90  # every file checked against its pinned MD5
    return root


def test_real_slices_membrane_is_the_foreground(isbi_raw: Path, tmp_path: Path) -> None:
    dm = ISBIDataModule(root=isbi_raw, processed=tmp_path / "p", size=64, batch_size=4)
    dm.setup()
    assert sum(dm.split_sizes().values()) == 30
    assert len(dm.datasets["unlabelled"]) == 30
    assert all(dm.index.positive[r] for r in dm.split_rows["train"])
    # membrane (label 0 upstream) covers 16.8-27.0 % of each slice (SOURCE.md)
    fractions = [dm.original_mask("test", i).mean() for i in range(len(dm.datasets["test"]))]
    assert all(0.16 < f < 0.28 for f in fractions)
    assert dm.original_shape("unlabelled", 0) == (512, 512)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 64, 64)


def test_corrupt_mirror_file_fails_its_checksum(shared_data: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(shared_data / "isbi2012", mirror / "isbi2012")
    target = mirror / "isbi2012/membrane/train/label/7.png"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    dm = ISBIDataModule(root=tmp_path / "raw", processed=tmp_path / "p", mirror=str(mirror))
    with pytest.raises(ChecksumError, match=r"label/7\.png: expected MD5 [0-9a-f]{32}"):
        dm.fetch()
    assert not (tmp_path / "raw/membrane/train/label/7.png").exists()


def test_upstream_files_are_pinned() -> None:
    remotes = isbi_remote_files()
    assert len(remotes) == 90 and all(r.md5 and len(r.md5) == 32 for r in remotes)
    assert remotes[0].url == f"{BASE_URL}/membrane/train/image/0.png"
    assert len({r.md5 for r in remotes}) == 90
    np.testing.assert_equal(sorted(r.relpath for r in remotes)[0], "membrane/test/0.png")
