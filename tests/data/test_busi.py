"""BUSI on a subset of the real mirror: mixed mask modes, _mask_1 merging, the size rule."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpipe.data.busi import FOLDER, BUSIDataModule
from medpipe.errors import DataError

IMAGES = {
    "benign": [4, 25, 30, 31],  # (4): RGB mask + a 555x465 RGBA _mask_1; (25): two lesions
    "malignant": [1, 2, 3, 4],
    "normal": [1, 2, 3, 4],
}
SPLIT = {"method": "stratified", "val_fraction": 0.25, "test_fraction": 0.25, "seed": 0}


@pytest.fixture(scope="module")
def busi_mirror(tmp_path_factory, shared_data: Path) -> Path:
    """A mirror holding 12 real BUSI images (with all their mask files), in the upstream layout."""
    mirror = tmp_path_factory.mktemp("busi_mirror")
    for cls, numbers in IMAGES.items():
        src = shared_data / "busi" / FOLDER / cls
        dest = mirror / "busi" / FOLDER / cls
        dest.mkdir(parents=True)
        for n in numbers:
            for f in src.glob(f"{cls} ({n})*.png"):
                shutil.copyfile(f, dest / f.name)
    return mirror


@pytest.fixture(scope="module")
def busi_raw(tmp_path_factory, busi_mirror: Path) -> Path:
    root = tmp_path_factory.mktemp("busi") / "raw"
    paths = BUSIDataModule(root=root, processed=root.parent / "p", mirror=str(busi_mirror)).fetch()
    assert len(paths) == 12 * 2 + 2  # images, masks, two _mask_1 files
    return root


def busi(root: Path, processed: Path, **kwargs) -> BUSIDataModule:
    return BUSIDataModule(root=root, processed=processed, size=64, split=SPLIT, **kwargs)


def _rows(dm: BUSIDataModule) -> dict[str, tuple[str, int]]:
    return {
        s.id: (split, i)
        for split in ("train", "val", "test")
        for i, s in enumerate(dm.split_samples(split))
    }


def _binary(path: Path) -> np.ndarray:
    return (np.asarray(Image.open(path).convert("L")) > 0).astype(np.uint8)


def test_masks_merged_by_or_and_mismatch_skipped_with_warning(
    busi_raw: Path, tmp_path: Path, caplog
) -> None:
    dm = busi(busi_raw, tmp_path / "p")
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert "benign (4)_mask_1.png is 555x465 (WxH) but its image benign (4).png is 416x416" in (
        caplog.text
    )
    assert any("skipped benign (4)_mask_1.png" in n for n in dm.index.notes)
    rows = _rows(dm)
    folder = busi_raw / FOLDER / "benign"
    # benign (25): union of both lesion masks
    m25 = dm.original_mask(*rows["benign (25)"])
    first, second = (
        _binary(folder / "benign (25)_mask.png"),
        _binary(folder / "benign (25)_mask_1.png"),
    )
    np.testing.assert_array_equal(m25, first | second)
    assert m25.sum() > max(first.sum(), second.sum())
    # benign (4): only its _mask.png (RGB mode) remains
    np.testing.assert_array_equal(
        dm.original_mask(*rows["benign (4)"]), _binary(folder / "benign (4)_mask.png")
    )
    # normal images have empty masks; every binary mask is {0, 1}
    assert dm.original_mask(*rows["normal (1)"]).sum() == 0
    assert sum(dm.index.positive) == 8


def test_mismatch_policies_error_and_resize(busi_raw: Path, tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"benign \(4\)_mask_1\.png is 555x465 .*mask_size_mismatch"
    ):
        busi(busi_raw, tmp_path / "a", mask_size_mismatch="error").prepare()
    assert list((tmp_path / "a").rglob("*")) == []
    dm = busi(busi_raw, tmp_path / "b", mask_size_mismatch="resize")
    dm.setup()
    m4 = dm.original_mask(*_rows(dm)["benign (4)"])
    alone = _binary(busi_raw / FOLDER / "benign" / "benign (4)_mask.png")
    assert m4.shape == alone.shape and m4.sum() > alone.sum()


def test_split_is_stratified_by_class(busi_raw: Path, tmp_path: Path) -> None:
    dm = busi(busi_raw, tmp_path / "p")
    dm.setup()
    for split in ("train", "val", "test"):
        classes = {s.label for s in dm.split_samples(split)}
        assert classes == {"benign", "malignant", "normal"}, split
    # grey channel by default; images keep their own size
    item = dm.datasets["train"][0]
    assert item["image"].shape == (1, 64, 64)
    sizes = {dm.original_shape(s, i) for s in ("train", "val", "test") for i in range(3)}
    assert len(sizes) > 1


def test_multiclass_lesions_take_their_class_index(busi_raw: Path, tmp_path: Path) -> None:
    dm = busi(busi_raw, tmp_path / "p", mask_mode="multiclass")
    dm.setup()
    assert dm.class_names == ["background", "benign", "malignant"]
    rows = _rows(dm)
    assert set(np.unique(dm.original_mask(*rows["benign (30)"]))) == {0, 1}
    assert set(np.unique(dm.original_mask(*rows["malignant (2)"]))) == {0, 2}
    assert set(np.unique(dm.original_mask(*rows["normal (2)"]))) == {0}


def test_missing_mask_and_orphan_mask(busi_mirror: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(busi_mirror / "busi", raw)
    target = raw / FOLDER / "malignant" / "malignant (3)_mask.png"
    target.unlink()
    with pytest.raises(
        DataError, match=r"malignant \(3\)\.png has no mask: expected .*malignant \(3\)_mask\.png"
    ):
        busi(raw, tmp_path / "p").prepare()
    (raw / FOLDER / "malignant" / "malignant (3).png").unlink()
    shutil.copyfile(
        raw / FOLDER / "normal" / "normal (1)_mask.png",
        raw / FOLDER / "normal" / "normal (9)_mask.png",
    )
    with pytest.raises(DataError, match=r"normal \(9\)_mask\.png has no image"):
        busi(raw, tmp_path / "p").prepare()
