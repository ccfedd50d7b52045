"""LGG DataModule on the real mirror (13 patients, 183 slices, 65 with tumour) and bad layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from medpipe.data.lgg import LGGDataModule, institution, lgg_patient_id
from medpipe.data.splits import assert_no_group_leak
from medpipe.errors import DataError

SPLIT = {"method": "grouped", "val_fraction": 0.15, "test_fraction": 0.25, "seed": 0}


@pytest.fixture(scope="module")
def lgg_raw(tmp_path_factory, shared_data: Path) -> Path:
    """The real LGG files fetched from the mirror once for this module (no network)."""
    root = tmp_path_factory.mktemp("lgg") / "raw"
    dm = LGGDataModule(root=root, processed=root.parent / "p", mirror=str(shared_data))
    paths = dm.fetch()
    assert len(paths) == 183 * 2 + 1  # images, masks, data.csv
    return root


def lgg(root: Path, processed: Path, **kwargs) -> LGGDataModule:
    opts = {"size": 64, "split": SPLIT, "batch_size": 8}
    opts.update(kwargs)
    return LGGDataModule(root=root, processed=processed, **opts)


def test_patient_id() -> None:
    assert lgg_patient_id("TCGA_CS_5396_20010302") == "TCGA_CS_5396"
    assert lgg_patient_id("other_case") == "other_case"
    assert institution("TCGA_HT_7684") == "HT" and institution("other") == "?"


def test_real_data_counts_and_patient_level_split(lgg_raw: Path, tmp_path: Path) -> None:
    dm = lgg(lgg_raw, tmp_path / "p")
    dm.setup()
    assert len(dm.samples) == 183
    assert sum(dm.index.positive) == 65
    assert len({s.group for s in dm.samples}) == 13
    sizes = dm.split_sizes()
    assert sum(sizes.values()) == 183 and min(sizes.values()) > 0
    groups = [s.group for s in dm.samples]
    assert_no_group_leak(dm.split_rows, groups)  # raises on any patient in two splits
    # tumour slices reach every split (the grouped split keeps the label mix), and training
    # sees every institution of the test set (stratify_institution)
    for split in ("train", "val", "test"):
        assert any(dm.index.positive[r] for r in dm.split_rows[split])
    sites = {s: {institution(g.group) for g in dm.split_samples(s)} for s in ("train", "test")}
    assert sites["test"] <= sites["train"] == {"CS", "DU", "HT"}
    # masks are binarised 0/255 -> {0, 1} at the original 256x256 size
    i = next(i for i, r in enumerate(dm.split_rows["test"]) if dm.index.positive[r])
    full = dm.original_mask("test", i)
    raw = tifffile.imread(dm.split_samples("test")[i].masks[0])
    assert full.shape == (256, 256) == dm.original_shape("test", i)
    np.testing.assert_array_equal(full, (raw > 0).astype(np.uint8))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 64, 64)


def test_k_fold_by_patient_tests_every_slice_once(lgg_raw: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    for fold in range(4):
        split = {"method": "grouped", "val_fraction": 0.1, "test_fraction": None, "seed": 0}
        dm = lgg(lgg_raw, tmp_path / "p", split={**split, "n_folds": 4, "fold": fold})
        dm.setup()
        assert_no_group_leak(dm.split_rows, [s.group for s in dm.samples])
        seen += dm.split_rows["test"].tolist()
    assert sorted(seen) == list(range(183))


def test_tumour_free_slices_sampled_at_ratio(lgg_raw: Path, tmp_path: Path) -> None:
    dm = lgg(lgg_raw, tmp_path / "p", empty_slices={"policy": "sample", "ratio": 0.5})
    full = lgg(lgg_raw, tmp_path / "p")
    dm.setup()
    full.setup()
    pos = [r for r in full.split_rows["train"] if full.index.positive[r]]
    kept = dm.split_rows["train"]
    assert sum(dm.index.positive[r] for r in kept) == len(pos)
    assert len(kept) - len(pos) == round(0.5 * len(pos))
    np.testing.assert_array_equal(dm.split_rows["test"], full.split_rows["test"])


def _copy_patient(lgg_raw: Path, dest: Path, n_cases: int = 3) -> list[Path]:
    cases = sorted((lgg_raw / "kaggle_3m").iterdir())
    cases = [c for c in cases if c.is_dir()][:n_cases]
    out = []
    for case in cases:
        target = dest / "kaggle_3m" / case.name
        shutil.copytree(case, target)
        out.append(target)
    return out


def test_patient_folder_without_slices(lgg_raw: Path, tmp_path: Path) -> None:
    _copy_patient(lgg_raw, tmp_path / "raw")
    (tmp_path / "raw/kaggle_3m/TCGA_XX_0000_20000101").mkdir()
    with pytest.raises(DataError, match=r"patient folder .*TCGA_XX_0000_20000101 has no slices"):
        lgg(tmp_path / "raw", tmp_path / "p").prepare()
    assert not (tmp_path / "p").exists() or list((tmp_path / "p").rglob("*")) == []


def test_missing_mask_and_unreadable_tiff(lgg_raw: Path, tmp_path: Path) -> None:
    case = _copy_patient(lgg_raw, tmp_path / "raw")[0]
    mask = case / f"{case.name}_3_mask.tif"
    data = mask.read_bytes()
    mask.unlink()
    with pytest.raises(
        DataError, match=rf"{case.name}_3\.tif has no mask: expected .*_3_mask\.tif"
    ):
        lgg(tmp_path / "raw", tmp_path / "p").prepare()
    mask.write_bytes(data[:200])  # truncated TIFF
    with pytest.raises(DataError, match=rf"mask .*{case.name}_3_mask\.tif cannot be read"):
        lgg(tmp_path / "raw", tmp_path / "p").prepare()
    assert [p for p in (tmp_path / "p").rglob("*")] == []


def test_mask_with_grey_values_is_rejected(lgg_raw: Path, tmp_path: Path) -> None:
    case = _copy_patient(lgg_raw, tmp_path / "raw")[0]
    mask = case / f"{case.name}_2_mask.tif"
    arr = tifffile.imread(mask).copy()
    arr[10, 10] = 77
    tifffile.imwrite(mask, arr)
    with pytest.raises(DataError, match=r"_2_mask\.tif holds values \[77\] besides 0/1/255"):
        lgg(tmp_path / "raw", tmp_path / "p").prepare()


def test_mask_size_differs_from_image(lgg_raw: Path, tmp_path: Path) -> None:
    case = _copy_patient(lgg_raw, tmp_path / "raw")[0]
    tifffile.imwrite(case / f"{case.name}_2_mask.tif", np.zeros((128, 256), np.uint8))
    with pytest.raises(
        DataError, match=r"_2_mask\.tif is 256x128 \(WxH\) but its image .* 256x256"
    ):
        lgg(tmp_path / "raw", tmp_path / "p").prepare()
