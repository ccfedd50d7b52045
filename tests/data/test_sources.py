"""Fetching from a mirror and from a URL: checksums verified, nothing half-written left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medpipe.data.medmnist import MedMNISTDataModule
from medpipe.data.sources import RemoteFile, fetch_files, md5sum
from medpipe.errors import ChecksumError, DataError

PNEUMONIA_MD5 = "28209eda62fecd6e6a2d98b1501bb15f"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_mirror_fetch_copies_verified_file(tmp_path, shared_data, no_network, monkeypatch):
    monkeypatch.setenv("MEDPIPE_DATA_MIRROR", str(shared_data))
    dest = tmp_path / "raw"
    dm = MedMNISTDataModule(flag="pneumoniamnist", root=dest)
    (path,) = dm.fetch()
    assert path == dest / "pneumoniamnist.npz"
    assert md5sum(path) == PNEUMONIA_MD5
    assert path.stat().st_ino != (shared_data / "medmnist" / "pneumoniamnist.npz").stat().st_ino
    assert _leftovers(dest) == ["pneumoniamnist.npz"]
    # second fetch keeps the verified file
    mtime = path.stat().st_mtime_ns
    dm.fetch()
    assert path.stat().st_mtime_ns == mtime


def test_config_mirror_wins_over_env(tmp_path, shared_data, no_network, monkeypatch):
    monkeypatch.setenv("MEDPIPE_DATA_MIRROR", str(tmp_path / "does-not-exist"))
    dm = MedMNISTDataModule(flag="breastmnist", root=tmp_path / "raw", mirror=str(shared_data))
    (path,) = dm.fetch()
    assert path.is_file()


def _fake_mirror(
    tmp_path: Path, shared_data: Path, *, corrupt: bool = False, truncate: bool = False
) -> Path:
    mirror = tmp_path / "mirror"
    (mirror / "medmnist").mkdir(parents=True)
    target = mirror / "medmnist" / "pneumoniamnist.npz"
    shutil.copyfile(shared_data / "medmnist" / "pneumoniamnist.npz", target)
    data = target.read_bytes()
    if corrupt:
        data = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
    if truncate:
        data = data[: len(data) // 2]
    target.write_bytes(data)
    return mirror


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_bad_checksum_names_file_and_leaves_nothing(tmp_path, shared_data, no_network, damage):
    mirror = _fake_mirror(tmp_path, shared_data, **{damage: True})
    dest = tmp_path / "raw"
    dm = MedMNISTDataModule(flag="pneumoniamnist", root=dest, mirror=str(mirror))
    with pytest.raises(ChecksumError) as err:
        dm.fetch()
    msg = str(err.value)
    actual = md5sum(mirror / "medmnist" / "pneumoniamnist.npz")
    assert "pneumoniamnist.npz" in msg and PNEUMONIA_MD5 in msg and actual in msg
    assert _leftovers(dest) == []


def test_mirror_without_the_file(tmp_path, no_network):
    (tmp_path / "mirror" / "medmnist").mkdir(parents=True)
    dm = MedMNISTDataModule(
        flag="pneumoniamnist", root=tmp_path / "raw", mirror=str(tmp_path / "mirror")
    )
    with pytest.raises(DataError, match=r"pneumoniamnist\.npz is not in the data mirror"):
        dm.fetch()
    dm2 = MedMNISTDataModule(
        flag="pneumoniamnist", root=tmp_path / "raw", mirror=str(tmp_path / "nope")
    )
    with pytest.raises(DataError, match="does not exist"):
        dm2.fetch()


def test_download_path_verifies_md5(tmp_path, shared_data, monkeypatch):
    """The online path (here a file:// URL, which urllib serves like http) checks the MD5 too."""
    monkeypatch.delenv("MEDPIPE_DATA_MIRROR", raising=False)
    src = shared_data / "medmnist" / "breastmnist.npz"
    good = RemoteFile("breastmnist.npz", src.as_uri(), "750601b1f35ba3300ea97c75c52ff8f6")
    (path,) = fetch_files([good], tmp_path / "ok")
    assert md5sum(path) == good.md5
    bad = RemoteFile("breastmnist.npz", src.as_uri(), "0" * 32)
    with pytest.raises(ChecksumError, match="0{32}"):
        fetch_files([bad], tmp_path / "bad")
    assert _leftovers(tmp_path / "bad") == []
    unreachable = RemoteFile("x.npz", (tmp_path / "missing.npz").as_uri(), None)
    with pytest.raises(DataError, match="MEDPIPE_DATA_MIRROR"):
        fetch_files([unreachable], tmp_path / "none")
    assert _leftovers(tmp_path / "none") == []
