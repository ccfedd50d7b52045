"""Shared image+mask DataModule behaviour, on small generated data in the ISBI layout.

Covers decoding and validation errors (nothing half-written), the prepare cache, resizing with
original sizes kept, joint albumentations transforms, multi-class masks, splits, the empty-image
policy, and the archive / Kaggle download paths (with local stand-ins for the network).
"""

from __future__ import annotations

import logging
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpipe.data.isbi import ISBIDataModule
from medpipe.data.segmentation import (
    fetch_archives,
    read_image,
    read_mask_file,
    to_channels,
)
from medpipe.data.sources import RemoteFile
from medpipe.errors import ConfigError, DataError, MedpipeError


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def make_isbi(
    root: Path,
    n: int = 8,
    shape: tuple[int, int] = (48, 80),
    *,
    n_test: int = 2,
    empty: tuple[int, ...] = (),
) -> Path:
    """``n`` labelled slices whose membrane (label 0) is a left-hand block; image = pattern."""
    rng = np.random.default_rng(0)
    h, w = shape
    for i in range(n):
        label = np.full(shape, 255, np.uint8)
        if i not in empty:
            label[h // 4 : h // 2 + i % 3, 2 : w // 3] = 0  # membrane = black, on the left
        image = np.where(label == 0, 200, 40).astype(np.uint8) + rng.integers(0, 20, shape).astype(
            np.uint8
        )
        write_png(root / "membrane/train/image" / f"{i}.png", image)
        write_png(root / "membrane/train/label" / f"{i}.png", label)
    for i in range(n_test):
        write_png(root / "membrane/test" / f"{i}.png", rng.integers(0, 255, shape, np.uint8))
    return root


def isbi_dm(tmp_path: Path, **kwargs) -> ISBIDataModule:
    opts = {
        "root": tmp_path / "raw",
        "processed": tmp_path / "processed",
        "size": 32,
        "batch_size": 2,
        "split": {"method": "stratified", "val_fraction": 0.25, "test_fraction": 0.25, "seed": 0},
    }
    opts.update(kwargs)
    return ISBIDataModule(**opts)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def test_read_image_modes_and_channels(tmp_path: Path) -> None:
    grey = write_png(tmp_path / "g.png", np.full((4, 5), 7, np.uint8))
    rgba = write_png(tmp_path / "a.png", np.full((4, 5, 4), 9, np.uint8), "RGBA")
    assert read_image(grey).shape == (4, 5)
    assert read_image(rgba).shape == (4, 5, 3)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255
    assert to_channels(rgb, 1)[0, 0, 0] == round(0.299 * 255)
    assert to_channels(np.full((2, 2), 5, np.uint8), 3).shape == (2, 2, 3)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_unreadable_image_is_one_clear_error(tmp_path: Path, suffix: str) -> None:
    bad = tmp_path / f"broken{suffix}"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"broken\.(png|tif) cannot be read.*fetch --force"):
        read_image(bad)
    with pytest.raises(DataError, match=r"mask .*broken\.(png|tif) cannot be read"):
        read_mask_file(bad)


def test_mask_modes_are_binarised_with_convert_l(tmp_path: Path) -> None:
    one_bit = np.zeros((6, 6), bool)
    one_bit[1:3, 1:3] = True
    p1 = write_png(tmp_path / "m1.png", one_bit)  # PIL saves bool arrays as mode "1"
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[1:3, 1:3] = 255
    p2 = write_png(tmp_path / "m2.png", rgb, "RGB")
    assert Image.open(p1).mode == "1"
    for p in (p1, p2):
        m = read_mask_file(p)
        assert m.shape == (6, 6)
        assert set(np.unique(m)) == {0, 255}
        assert (m > 0).sum() == 4


# --------------------------------------------------------------------------------------------
# prepare: validation errors leave nothing behind
# --------------------------------------------------------------------------------------------


def test_prepare_caches_resized_arrays_and_keeps_original_sizes(tmp_path: Path) -> None:
    make_isbi(tmp_path / "raw")
    dm = isbi_dm(tmp_path)
    cache = dm.prepare()
    images = np.load(cache / "images.npy")
    masks = np.load(cache / "masks.npy")
    assert images.shape == (10, 32, 32, 1) and images.dtype == np.uint8
    assert masks.shape == (10, 32, 32) and set(np.unique(masks)) <= {0, 1}
    dm.setup()
    assert dm.split_sizes() == {"train": 4, "val": 2, "test": 2}
    assert len(dm.datasets["unlabelled"]) == 2
    assert dm.original_shape("test", 0) == (48, 80)
    full = dm.original_mask("test", 0)
    assert full.shape == (48, 80)
    # invert_mask: the black membrane block on the left is the foreground
    assert full[:, : 80 // 3].sum() > 0 and full[:, 80 // 3 + 1 :].sum() == 0
    # second prepare is a no-op; force rebuilds
    mtime = (cache / "images.npy").stat().st_mtime_ns
    dm.prepare()
    assert (cache / "images.npy").stat().st_mtime_ns == mtime
    dm.prepare(force=True)
    assert leftovers(tmp_path / "processed") == sorted(
        ["32x32", "images.npy", "index.json", "masks.npy"]
    )


def test_cache_is_rebuilt_when_raw_data_changes(tmp_path: Path) -> None:
    make_isbi(tmp_path / "raw", n=8)
    dm = isbi_dm(tmp_path)
    dm.prepare()
    make_isbi(tmp_path / "raw", n=9)
    dm2 = isbi_dm(tmp_path)
    dm2.setup()
    assert sum(dm2.split_sizes().values()) == 9


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("truncate_image", r"image/3\.png cannot be read as an image"),
        ("truncate_label", r"mask .*label/3\.png cannot be read"),
        ("grey_values", r"mask .*label/3\.png holds values \[128\] besides 0/1/255"),
        ("size", r"mask .*label/3\.png is 40x20 \(WxH\) but its image 3\.png is 80x48"),
        ("missing", r"image/3\.png has no label: expected .*label/3\.png"),
        ("orphan", r"label .*label/99\.png has no image"),
    ],
)
def test_bad_input_is_one_clear_error_and_nothing_half_written(
    tmp_path: Path, damage: str, match: str
) -> None:
    raw = make_isbi(tmp_path / "raw")
    label = raw / "membrane/train/label/3.png"
    if damage == "truncate_image":
        img = raw / "membrane/train/image/3.png"
        img.write_bytes(img.read_bytes()[:60])
    elif damage == "truncate_label":
        label.write_bytes(label.read_bytes()[:60])
    elif damage == "grey_values":
        arr = np.asarray(Image.open(label)).copy()
        arr[0, 0] = 128
        write_png(label, arr)
    elif damage == "size":
        write_png(label, np.zeros((20, 40), np.uint8))
    elif damage == "missing":
        label.unlink()
    else:
        write_png(raw / "membrane/train/label/99.png", np.zeros((48, 80), np.uint8))
    dm = isbi_dm(tmp_path)
    with pytest.raises(DataError, match=match):
        dm.prepare()
    assert leftovers(tmp_path / "processed") == []  # no cache, no temporary folder


def test_missing_raw_folder_says_fetch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"run `medpipe fetch data=isbi` first"):
        isbi_dm(tmp_path).setup()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 100}, r"data\.size=100.*multiples of 32"),
        ({"channels": 2}, r"data\.channels=2"),
        ({"mask_mode": "soft"}, r"data\.mask_mode='soft'"),
        ({"mask_size_mismatch": "ignore"}, r"data\.mask_size_mismatch='ignore'"),
        ({"empty_slices": {"policy": "drop"}}, r"data\.empty_slices"),
        ({"train_augment": [{"name": "NoSuchTransform"}]}, r"NoSuchTransform"),
        ({"mean": [0.5, 0.5]}, r"data\.mean/data\.std need 1 values"),
    ],
)
def test_bad_config_is_config_error(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        isbi_dm(tmp_path, **kwargs)


# --------------------------------------------------------------------------------------------
# Transforms, mask modes, splits
# --------------------------------------------------------------------------------------------


def test_albumentations_transform_is_joint(tmp_path: Path) -> None:
    make_isbi(tmp_path / "raw")
    flip = isbi_dm(tmp_path, train_augment=[{"name": "HorizontalFlip", "p": 1.0}])
    plain = isbi_dm(tmp_path)
    flip.setup()
    plain.setup()
    for i in range(len(flip.datasets["train"])):
        a, b = flip.datasets["train"][i], plain.datasets["train"][i]
        assert a["mask"].dtype.is_floating_point and set(a["mask"].unique().tolist()) <= {0, 1}
        np.testing.assert_array_equal(a["mask"].numpy(), b["mask"].numpy()[:, ::-1])
        np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy()[..., ::-1])
        # the mask still sits on the bright block of the image after the flip
        img, mask = a["image"][0].numpy(), a["mask"].numpy() > 0
        assert img[mask].mean() > img[~mask].mean()


def test_multiclass_masks_keep_class_indices(tmp_path: Path) -> None:
    make_isbi(tmp_path / "raw", n=6)
    label = tmp_path / "raw/membrane/train/label/0.png"
    arr = np.zeros((48, 80), np.uint8)
    arr[:10, :10], arr[20:30, 20:30] = 1, 2
    write_png(label, arr)
    for i in range(1, 6):  # class-index masks everywhere
        write_png(tmp_path / f"raw/membrane/train/label/{i}.png", (arr > 0).astype(np.uint8))
    dm = isbi_dm(
        tmp_path,
        mask_mode="multiclass",
        invert_mask=False,
        class_names=["bg", "a", "b"],
        split={"method": "stratified", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    )
    dm.setup()
    rows = {
        s.id: (split, i)
        for split in ("train", "val", "test")
        for i, s in enumerate(dm.split_samples(split))
    }
    split, i = rows["train_0"]
    full = dm.original_mask(split, i)
    assert set(np.unique(full)) == {0, 1, 2}
    item = dm.datasets[split][i]
    assert item["mask"].dtype.is_floating_point is False
    assert set(item["mask"].unique().tolist()) == {0, 1, 2}
    write_png(label, np.full((48, 80), 3, np.uint8))
    bad = isbi_dm(tmp_path, mask_mode="multiclass", invert_mask=False, class_names=["bg", "a", "b"])
    with pytest.raises(DataError, match=r"holds class index 3 but data\.class_names lists 3"):
        bad.prepare()


def test_empty_slices_sampling_policy_applies_to_training_only(tmp_path: Path) -> None:
    make_isbi(tmp_path / "raw", n=20, empty=tuple(range(8, 20)), n_test=0)
    split = {"method": "stratified", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 1}
    keep = isbi_dm(tmp_path, split=split)
    sample = isbi_dm(tmp_path, split=split, empty_slices={"policy": "sample", "ratio": 0.5})
    keep.setup()
    sample.setup()
    idx = keep.index

    def counts(dm, name):
        rows = dm.split_rows[name]
        pos = sum(idx.positive[r] for r in rows)
        return pos, len(rows) - pos

    pos, neg = counts(keep, "train")
    assert neg > 0
    assert counts(sample, "train") == (pos, round(0.5 * pos))
    for name in ("val", "test"):  # evaluation splits keep every image
        np.testing.assert_array_equal(keep.split_rows[name], sample.split_rows[name])
    # positive/empty are stratified: both kinds reach val and test
    assert all(0 < counts(keep, s)[0] < len(keep.split_rows[s]) for s in ("val", "test"))


def test_loaders_yield_dict_batches(tmp_path: Path) -> None:
    make_isbi(tmp_path / "raw")
    dm = isbi_dm(tmp_path)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32)
    assert batch["mask"].shape == (2, 32, 32)
    assert dm.sample_ids("unlabelled") == ["test_0", "test_1"]
    with pytest.raises(ConfigError, match=r"split 'holdout' does not exist"):
        dm.loader("holdout")


# --------------------------------------------------------------------------------------------
# Online sources, with local stand-ins for the network
# --------------------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_fetch_archives_extracts_atomically_and_once(tmp_path: Path) -> None:
    src = _zip(tmp_path / "Data.zip", {"Data/a.txt": b"a", "Data/b.txt": b"b"})
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("x\n")
    dest = tmp_path / "raw"
    remotes = [
        RemoteFile("Data.zip", src.as_uri()),
        RemoteFile("labels.csv", csv_file.as_uri()),
    ]
    placed = fetch_archives(remotes, dest)
    assert placed == [dest / "Data", dest / "labels.csv"]
    assert (dest / "Data/a.txt").read_bytes() == b"a"
    assert not (dest / ".downloads/Data.zip").exists()  # archive removed after extraction
    src.unlink()  # a second fetch needs no download
    assert fetch_archives(remotes, dest) == placed


def test_bad_archive_leaves_no_partial_folder(tmp_path: Path) -> None:
    src = tmp_path / "Data.zip"
    src.write_bytes(b"PK\x03\x04 truncated")
    dest = tmp_path / "raw"
    with pytest.raises(DataError, match=r"Data\.zip is not a readable zip archive"):
        fetch_archives([RemoteFile("Data.zip", src.as_uri())], dest)
    assert [p.name for p in dest.iterdir() if not p.name.startswith(".downloads")] == []


def test_kaggle_dataset_download_with_a_stand_in_api(tmp_path: Path, monkeypatch) -> None:
    from medpipe.data.lgg import LGGDataModule

    calls = []

    class FakeApi:
        def authenticate(self) -> None:
            calls.append("auth")

        def dataset_download_files(self, slug, path, unzip, quiet):
            calls.append(slug)
            _zip(
                Path(path) / "lgg.zip",
                {
                    "lgg-mri-segmentation/kaggle_3m/A/A_1.tif": b"x",
                    "kaggle_3m/A/A_1.tif": b"x",
                    "kaggle_3m/data.csv": b"Patient\n",
                },
            )

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = FakeApi
    for name in ("kaggle", "kaggle.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret-value-123")
    monkeypatch.delenv("MEDPIPE_DATA_MIRROR", raising=False)
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    dm = LGGDataModule(root=tmp_path / "raw", processed=tmp_path / "p")
    assert dm.fetch() == [tmp_path / "raw/kaggle_3m"]
    assert calls == ["auth", "mateuszbuda/lgg-mri-segmentation"]
    assert (tmp_path / "raw/kaggle_3m/data.csv").is_file()
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["kaggle_3m"]


def test_kaggle_download_failure_never_shows_the_key(tmp_path: Path, monkeypatch, caplog) -> None:
    from medpipe.data.busi import BUSIDataModule

    class FailingApi:
        def authenticate(self) -> None:
            pass

        def dataset_download_files(self, *args, **kwargs):
            raise RuntimeError("401 for key secret-value-123")

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = FailingApi
    for name in ("kaggle", "kaggle.api"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret-value-123")
    monkeypatch.delenv("MEDPIPE_DATA_MIRROR", raising=False)
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    dm = BUSIDataModule(root=tmp_path / "raw", processed=tmp_path / "p")
    with caplog.at_level(logging.INFO), pytest.raises(MedpipeError) as err:
        dm.fetch()
    assert "aryashah2k/breast-ultrasound-images-dataset" in str(err.value)
    assert "secret-value-123" not in str(err.value) + caplog.text
    assert [p.name for p in (tmp_path / "raw").iterdir()] == []
