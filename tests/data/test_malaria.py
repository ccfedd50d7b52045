"""MalariaDataModule: fetch (mirror, NLM zip, Kaggle), prepare, splits, and bad input."""

from __future__ import annotations

import ast
import json
import logging
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medpipe.data import competition, malaria
from medpipe.data.malaria import CachedImageDataset, MalariaDataModule, verify_nlm_zip
from medpipe.errors import ChecksumError, ConfigError, DataError, MedpipeError

CELL = "C{p}P{q}ThinF_IMG_20150918_144104_cell_{i}.png"


def _dm(tmp_path: Path, mirror: Path | None = None, **kw) -> MalariaDataModule:
    opts = {
        "root": tmp_path / "raw",
        "processed": tmp_path / "processed",
        "mirror": str(mirror) if mirror else None,
        "size": 32,
        "batch_size": 16,
        **kw,
    }
    return MalariaDataModule(**opts)


def _write_cells(
    folder: Path, per_class: int = 12, patients: int = 6, mode: str = "RGB", seed: int = 0
) -> list[Path]:
    """Synthetic NLM-layout cells: RGB (or ``mode``) PNGs of varying sizes, several patients."""
    rng = np.random.default_rng(seed)
    paths = []
    for label, cls in enumerate(malaria.CLASS_DIRS):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(90, 200)), int(rng.integers(90, 200))
            arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            arr[..., 0] = 200 if label else 30  # red channel carries the label
            img = Image.fromarray(arr)
            if mode != "RGB":
                img = img.convert(mode)
            path = folder / cls / CELL.format(p=100 + i % patients + label * 50, q=i % 7, i=i)
            img.save(path)
            paths.append(path)
    (folder / "Parasitized" / "Thumbs.db").write_bytes(b"not an image")
    return paths


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_data) -> MalariaDataModule:
    tmp = tmp_path_factory.mktemp("malaria")
    dm = _dm(tmp, shared_data)
    dm.fetch()
    dm.prepare()
    dm.setup()
    return dm


# ------------------------------------------------------------------------ the shared cells


def test_shared_cells_fetch_prepare_setup(prepared: MalariaDataModule, shared_data: Path) -> None:
    dm = prepared
    arrays = np.load(dm.cache_path)
    assert arrays["images"].shape == (800, 32, 32, 3) and arrays["images"].dtype == np.uint8
    assert np.bincount(arrays["labels"]).tolist() == [400, 400]
    # 46 parasitized + 40 uninfected patient codes (SOURCE.md), 11 of them in both classes
    assert len(set(arrays["patients"].tolist())) == 75
    # greyscale source decoded to RGB: three equal channels
    assert np.array_equal(arrays["images"][..., 0], arrays["images"][..., 2])
    sizes = dm.split_sizes()
    assert sum(sizes.values()) == 800 and min(sizes.values()) > 50
    assert dm.num_classes == 2 and dm.task_type == "binary-class" and dm.channels == 3
    assert dm.class_names == ["Uninfected", "Parasitized"]
    # patient-level split: no patient in two splits
    seen = [set(dm.patients[s].tolist()) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1}
    assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6
    ids = dm.sample_ids("test")
    assert len(ids) == sizes["test"] and ids[0].split("/")[0] in malaria.CLASS_DIRS
    manifest = json.loads((dm.processed / "cells_32.json").read_text())
    assert manifest["images"] == 800 and manifest["skipped"] == []
    assert manifest["per_class"] == {"Uninfected": 400, "Parasitized": 400}
    # the mirror is only read
    assert (shared_data / "malaria" / "cell_images" / "Uninfected").is_dir()


def test_second_fetch_and_prepare_are_no_ops(prepared: MalariaDataModule) -> None:
    mtime = prepared.cache_path.stat().st_mtime_ns
    assert prepared.fetch() == [prepared.cells_dir]
    prepared.prepare()
    assert prepared.cache_path.stat().st_mtime_ns == mtime


def test_kfold_grouped_tests_every_cell_once(prepared: MalariaDataModule, tmp_path: Path) -> None:
    tested: list[str] = []
    for fold in range(4):
        dm = MalariaDataModule(
            root=prepared.root,
            processed=prepared.processed,
            size=32,
            split={"method": "grouped", "test_fraction": None, "n_folds": 4, "fold": fold},
        )
        dm.setup()
        tested += dm.sample_ids("test")
        assert not set(dm.patients["test"].tolist()) & set(dm.patients["train"].tolist())
    assert len(tested) == 800 and len(set(tested)) == 800


def test_stratified_split_is_seeded(prepared: MalariaDataModule) -> None:
    def test_ids(seed: int) -> list[str]:
        dm = MalariaDataModule(
            root=prepared.root,
            processed=prepared.processed,
            size=32,
            split={"method": "stratified", "seed": seed},
        )
        return dm.sample_ids("test")

    assert test_ids(1) == test_ids(1) != test_ids(2)


def test_grouped_leak_fails_loudly(prepared: MalariaDataModule, monkeypatch) -> None:
    def leaky(self, labels, groups=None):
        n = len(labels)
        return {"train": np.arange(0, n - 20), "val": np.arange(n - 20, n - 10),
                "test": np.arange(n - 11, n)}  # fmt: skip

    dm = MalariaDataModule(root=prepared.root, processed=prepared.processed, size=32)
    monkeypatch.setattr(type(dm.split), "split", leaky)
    with pytest.raises(DataError, match="group leak"):
        dm.setup()


def test_one_channel_batches(prepared: MalariaDataModule) -> None:
    dm = MalariaDataModule(
        root=prepared.root, processed=prepared.processed, size=32, channels=1, batch_size=8
    )
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (8, 1, 32, 32)


# ------------------------------------------------------------------------ original-style RGB


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L"])
def test_rgb_pngs_of_any_size_and_mode(tmp_path: Path, mode: str, no_network) -> None:
    mirror = tmp_path / "mirror"
    _write_cells(mirror / "malaria" / "cell_images", per_class=12, mode=mode)
    dm = _dm(tmp_path, mirror, split={"method": "grouped", "val_fraction": 0.2,
                                      "test_fraction": 0.25})  # fmt: skip
    dm.fetch()
    assert not (dm.cells_dir / "Parasitized" / "Thumbs.db").exists()
    dm.prepare()
    arrays = np.load(dm.cache_path)
    images, labels = arrays["images"], arrays["labels"]
    assert images.shape == (24, 32, 32, 3)
    if mode in ("RGB", "RGBA"):  # colour survives: the red channel carries the label
        assert (images[labels == 1][..., 0] == 200).all()
        assert (images[labels == 0][..., 0] == 30).all()
    dm.setup()
    assert sum(dm.split_sizes().values()) == 24


def test_sixteen_bit_grey_is_scaled(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.full((40, 50), 65535, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    out = malaria.decode_image(path, 16, name=str(path))
    assert out.shape == (16, 16, 3) and (out == 255).all()


# ------------------------------------------------------------------------ bad input


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_png_names_the_file_and_leaves_no_cache(tmp_path: Path) -> None:
    cells = tmp_path / "raw" / "cell_images"
    paths = _write_cells(cells, per_class=6)
    _truncate(paths[3])
    dm = _dm(tmp_path)
    with pytest.raises(DataError, match=paths[3].name) as err:
        dm.prepare()
    assert "on_bad_image=skip" in str(err.value)
    assert not dm.processed.exists() or not any(dm.processed.iterdir())


def test_corrupt_png_is_skipped_only_on_request_and_listed(tmp_path: Path, caplog) -> None:
    cells = tmp_path / "raw" / "cell_images"
    paths = _write_cells(cells, per_class=6)
    paths[0].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _truncate(paths[7])
    dm = _dm(tmp_path, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="medpipe.data.malaria"):
        dm.prepare()
    assert "skipped 2 unreadable" in caplog.text
    assert paths[0].name in caplog.text and paths[7].name in caplog.text
    manifest = json.loads((dm.processed / "cells_32.json").read_text())
    assert sorted(Path(s["file"]).name for s in manifest["skipped"]) == sorted(
        [paths[0].name, paths[7].name]
    )
    assert manifest["images"] == 10 and len(dm.skipped) == 2
    assert len(np.load(dm.cache_path)["labels"]) == 10


def test_empty_class_folder(tmp_path: Path) -> None:
    cells = tmp_path / "raw" / "cell_images"
    _write_cells(cells, per_class=4)
    for p in (cells / "Uninfected").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"Uninfected holds no images"):
        _dm(tmp_path).prepare()
    # the same check guards a mirror copy: nothing is installed
    mirror = tmp_path / "mirror"
    _write_cells(mirror / "malaria" / "cell_images", per_class=4)
    for p in (mirror / "malaria" / "cell_images" / "Parasitized").iterdir():
        p.unlink()
    dm = _dm(tmp_path / "second", mirror)
    with pytest.raises(DataError, match="Parasitized holds no images"):
        dm.fetch()
    assert not dm.cells_dir.exists()
    assert list(dm.root.iterdir()) == []


def test_unparsable_patient_name(tmp_path: Path) -> None:
    cells = tmp_path / "raw" / "cell_images"
    _write_cells(cells, per_class=4)
    Image.new("RGB", (10, 10)).save(cells / "Uninfected" / "cell.png")
    with pytest.raises(DataError, match=r"cell\.png"):
        _dm(tmp_path).prepare()


def test_bad_config_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.source"):
        _dm(tmp_path, source="ftp")
    with pytest.raises(ConfigError, match="data.on_bad_image"):
        _dm(tmp_path, on_bad_image="ignore")
    with pytest.raises(ConfigError, match="data.size"):
        _dm(tmp_path, size=3)
    with pytest.raises(ConfigError, match="split.method"):
        _dm(tmp_path, split={"method": "random"})
    with pytest.raises(ConfigError, match="data.split"):
        _dm(tmp_path, split={"folds": 3})
    with pytest.raises(ConfigError, match="data.train_augment"):
        _dm(tmp_path, train_augment=[{"name": "NoSuchTransform"}])


def test_missing_raw_folder_says_fetch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="medpipe fetch data=malaria"):
        _dm(tmp_path).prepare()


# ------------------------------------------------------------------------ the NLM zip


def _cells_zip(path: Path, tmp: Path) -> Path:
    _write_cells(tmp / "cells" / "cell_images", per_class=5)
    with zipfile.ZipFile(path, "w") as zf:
        for p in sorted((tmp / "cells").rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(tmp / "cells").as_posix())
    return path


def _pin_checksum(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setattr(malaria, "NLM_ZIP_SIZE", path.stat().st_size)
    monkeypatch.setattr(malaria, "NLM_ZIP_SHA256", malaria.sha256sum(path))


def test_nlm_checksum_constants_are_the_published_ones() -> None:
    assert malaria.NLM_ZIP_SIZE == 353_452_851
    assert malaria.NLM_ZIP_SHA256.startswith("0a949556b241")
    assert malaria.NLM_REMOTE.url.endswith("/Malaria/cell_images.zip")


def test_wrong_zip_is_deleted_with_a_checksum_error(tmp_path: Path) -> None:
    path = tmp_path / "cell_images.zip"
    path.write_bytes(b"x" * 100)
    with pytest.raises(ChecksumError, match="expected 353452851 bytes, got 100"):
        verify_nlm_zip(path)
    assert not path.exists()


def test_mirror_zip_is_verified_then_extracted(tmp_path: Path, monkeypatch, no_network) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "malaria").mkdir(parents=True)
    zpath = _cells_zip(mirror / "malaria" / "cell_images.zip", tmp_path)
    dm = _dm(tmp_path, mirror)
    with pytest.raises(ChecksumError, match="cell_images.zip"):
        dm.fetch()  # not the NLM release
    assert not dm.cells_dir.exists() and zpath.is_file()
    _pin_checksum(monkeypatch, zpath)
    dm.fetch()
    names, labels = malaria.list_cells(dm.cells_dir)
    assert len(names) == 10 and labels.sum() == 5
    assert not (dm.root / "cell_images.zip").exists()  # extracted, not kept twice
    assert json.loads((dm.root / "FETCHED.json").read_text())["source"] == "mirror"


def test_nlm_download_is_verified(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MEDPIPE_DATA_MIRROR", raising=False)
    zsrc = _cells_zip(tmp_path / "upstream.zip", tmp_path)
    urls: list[str] = []

    def fake_download(url: str, dest: Path, *, name: str) -> None:
        urls.append(url)
        dest.write_bytes(zsrc.read_bytes())

    monkeypatch.setattr("medpipe.data.sources._download", fake_download)
    dm = _dm(tmp_path, source="nlm")
    with pytest.raises(ChecksumError):
        dm.fetch()
    assert not (dm.root / "cell_images.zip").exists() and not dm.cells_dir.exists()
    _pin_checksum(monkeypatch, zsrc)
    dm.fetch(force=True)
    assert urls == [malaria.NLM_URL] * 2
    assert len(malaria.list_cells(dm.cells_dir)[0]) == 10


# ------------------------------------------------------------------------ Kaggle


@pytest.mark.parametrize("module", [malaria, competition])
def test_kaggle_is_imported_lazily(module: types.ModuleType) -> None:
    # Importing `kaggle` authenticates (and may exit) at import time: only inside functions.
    tree = ast.parse(Path(module.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "kaggle" or n == "medpipe.kaggle.client"]


@pytest.fixture
def kaggle_env(kaggle_home: Path) -> Path:
    return kaggle_home


def test_kaggle_source_without_credentials(tmp_path: Path, kaggle_env: Path) -> None:
    dm = _dm(tmp_path, source="kaggle")
    with pytest.raises(MedpipeError, match="No Kaggle credentials") as err:
        dm.fetch()
    assert "KAGGLE_USERNAME" in str(err.value)
    assert not dm.cells_dir.exists()


def test_kaggle_source_downloads_the_dataset(
    tmp_path: Path, kaggle_env: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    secret = "s3cr3t-kaggle-key-for-test"
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", secret)
    calls: list[tuple] = []

    class FakeApi:
        def authenticate(self) -> None:
            pass

        def dataset_download_files(self, dataset, path, unzip, quiet):
            calls.append((dataset, unzip))
            # Kaggle's copy nests a duplicate cell_images/ folder inside cell_images/
            _write_cells(Path(path) / "cell_images" / "cell_images", per_class=3)
            _write_cells(Path(path) / "cell_images", per_class=4)

    ext = types.ModuleType("kaggle.api.kaggle_api_extended")
    ext.KaggleApi = FakeApi  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", ext)
    dm = _dm(tmp_path, source="kaggle")
    dm.fetch()
    assert calls == [(malaria.KAGGLE_DATASET, True)]
    assert len(malaria.list_cells(dm.cells_dir)[0]) == 8  # the shallow copy
    out = capsys.readouterr()
    assert secret not in out.out + out.err


# ------------------------------------------------------------------------ the dataset


def test_cached_dataset_batches_equal_items() -> None:
    images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    ds = CachedImageDataset(images, np.array([0, 1, 0, 1]), mean=(0.5,) * 3, std=(0.25,) * 3)
    x, y = ds.__getitems__([3, 1])
    x1, y1 = ds[1]
    assert torch.equal(x[1], x1) and int(y1) == 1 and y.tolist() == [1, 1]
    expected = (images[1].transpose(2, 0, 1) / 255.0 - 0.5) / 0.25
    torch.testing.assert_close(x1, torch.as_tensor(expected, dtype=torch.float32))


def test_batch_dihedral_matches_albumentations_semantics() -> None:
    from medpipe.data.malaria import BatchDihedral

    imgs = np.arange(6 * 3 * 3 * 2, dtype=np.uint8).reshape(6, 3, 3, 2)
    flip = BatchDihedral([("HorizontalFlip", 1.0), ("VerticalFlip", 1.0)])
    assert np.array_equal(flip(imgs.copy()), imgs[:, ::-1, ::-1])
    np.random.seed(0)
    rot = BatchDihedral([("RandomRotate90", 1.0)])
    out = rot(np.repeat(imgs[:1], 400, axis=0))
    turns = [
        next(k for k in range(4) if np.array_equal(o, np.rot90(imgs[0], k, axes=(0, 1))))
        for o in out
    ]
    assert sorted(set(turns)) == [0, 1, 2, 3] and min(np.bincount(turns)) > 60
    assert BatchDihedral.from_config([{"name": "HorizontalFlip", "p": 0.5}]) is not None
    assert BatchDihedral.from_config([{"name": "Affine", "rotate": 10}]) is None
    assert BatchDihedral.from_config([{"name": "VerticalFlip", "p": 0.5, "x": 1}]) is None


def test_augmentation_never_alters_the_cache() -> None:
    from medpipe.data.malaria import BatchDihedral

    images = np.random.default_rng(0).integers(0, 255, (8, 4, 4, 3), dtype=np.uint8)
    before = images.copy()
    ds = CachedImageDataset(
        images, np.zeros(8, dtype=np.int64), mean=(0.5,) * 3, std=(0.5,) * 3,
        augment=BatchDihedral([("HorizontalFlip", 1.0), ("RandomRotate90", 1.0)]),
    )  # fmt: skip
    x, _ = ds.__getitems__(list(range(8)))
    assert np.array_equal(images, before) and x.shape == (8, 3, 4, 4)


def test_train_augment_split_into_batched_prefix_and_per_image_rest(tmp_path: Path) -> None:
    import albumentations as A

    dm = _dm(tmp_path, train_augment=[{"name": "HorizontalFlip", "p": 0.5}])
    aug = dm.train_augment
    assert isinstance(aug, malaria.BatchAugment) and aug.per_image is None
    assert [type(s) for s in aug.batch_steps] == [malaria.BatchDihedral]
    specs = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "VerticalFlip", "p": 0.5},
        {"name": "RandomBrightnessContrast", "p": 0.8},
        {"name": "Affine", "rotate": [-20, 20], "p": 0.7},
        {"name": "RandomRotate90", "p": 1.0},  # after Affine: stays per image, order kept
    ]
    aug = _dm(tmp_path, train_augment=specs).train_augment
    assert [type(s) for s in aug.batch_steps] == [
        malaria.BatchDihedral,
        malaria.BatchBrightnessContrast,
    ]
    assert [type(t).__name__ for t in aug.per_image.transforms] == ["Affine", "RandomRotate90"]
    assert isinstance(aug.per_image, A.Compose)
    # a brightness/contrast option the batch path does not know goes to albumentations
    aug = _dm(
        tmp_path,
        train_augment=[{"name": "RandomBrightnessContrast", "ensure_safe_range": True}],
    ).train_augment
    assert aug.batch_steps == [] and isinstance(aug.per_image, A.Compose)
    with pytest.raises(ConfigError, match="data.train_augment"):
        _dm(tmp_path, train_augment=[{"name": "RandomBrightnessContrast", "bogus": 1}])


def test_batch_brightness_contrast_matches_albumentations() -> None:
    import albumentations as A

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (64, 6, 6, 3), dtype=np.uint8)
    step = malaria.BatchBrightnessContrast(brightness_limit=0.3, contrast_limit=(-0.1, 0.4), p=0.6)
    np.random.seed(5)
    out = step(imgs.copy())
    np.random.seed(5)  # replay the draws: hit mask, then alpha and beta for every image
    hit = np.random.random_sample(64) < 0.6
    alpha = 1.0 + np.random.uniform(-0.1, 0.4, 64)
    beta = np.random.uniform(-0.3, 0.3, 64)
    reference = A.RandomBrightnessContrast(p=1.0)
    changed = 0
    for i in range(64):
        if hit[i]:
            want = reference.apply(imgs[i], alpha=float(alpha[i]), beta=float(beta[i]) * 255)
            changed += int(not np.array_equal(want, imgs[i]))
        else:
            want = imgs[i]
        assert np.abs(out[i].astype(int) - want.astype(int)).max() <= 1, i
    assert 20 < hit.sum() < 60 and changed > 15
    assert out.dtype == np.uint8


def test_albumentations_augmentation_repeats_for_a_seed(tmp_path: Path) -> None:
    import lightning as L

    images = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 3), dtype=np.uint8)
    dm = _dm(tmp_path, train_augment=[{"name": "RandomBrightnessContrast", "p": 1.0}])

    def draw(seed: int) -> torch.Tensor:
        L.seed_everything(seed, verbose=False)
        ds = CachedImageDataset(
            images, np.zeros(16, dtype=np.int64), mean=(0.5,) * 3, std=(0.5,) * 3,
            augment=dm.train_augment,
        )  # fmt: skip
        return ds.__getitems__(list(range(16)))[0]

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
