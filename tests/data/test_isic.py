"""ISIC: 2017 classification on the real mirror, 2018 one-hot CSVs, and Task 1 segmentation with
masks generated over real images (the mirror has none), plus the isic_cls experiment end to end."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from medpipe.data import isic as isic_module
from medpipe.data.isic import ISICDataModule, read_isic_labels
from medpipe.errors import ConfigError, DataError

OFFICIAL_2017 = {
    "train": {
        "images": "ISIC-2017_Training_Data",
        "labels": "ISIC-2017_Training_Part3_GroundTruth.csv",
    },
    "val": {
        "images": "ISIC-2017_Validation_Data",
        "labels": "ISIC-2017_Validation_Part3_GroundTruth.csv",
    },
    "test": {
        "images": "ISIC-2017_Test_v2_Data",
        "labels": "ISIC-2017_Test_v2_Part3_GroundTruth.csv",
    },
}
TASK1 = {
    "train": {"images": "ISIC-2017_Training_Data", "masks": "ISIC-2017_Training_Part1_GroundTruth"}
}
SPLIT = {"method": "stratified", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}


@pytest.fixture(scope="module")
def isic_raw(tmp_path_factory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("isic") / "raw"
    dm = ISICDataModule(
        root=root, processed=root.parent / "p", splits=OFFICIAL_2017, mirror=str(shared_data)
    )
    paths = dm.fetch()
    assert len(paths) == 450 + 3  # images and the three ground-truth CSVs
    return root


def make_task1_mirror(shared_data: Path, dest: Path, n: int = 10) -> Path:
    """Real ISIC images with generated lesion masks in the Task 1 layout (0/255 ellipses)."""
    src = shared_data / "isic" / "ISIC-2017_Training_Data"
    images = dest / "isic" / "ISIC-2017_Training_Data"
    masks = dest / "isic" / "ISIC-2017_Training_Part1_GroundTruth"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for k, path in enumerate(sorted(src.glob("ISIC_*.jpg"))[:n]):
        shutil.copyfile(path, images / path.name)
        w, h = Image.open(path).size
        mask = Image.new("L", (w, h), 0)
        r = 30 + 5 * k
        ImageDraw.Draw(mask).ellipse(
            (w // 2 - r, h // 2 - r // 2, w // 2 + r, h // 2 + r // 2), fill=255
        )
        mask.save(masks / f"{path.stem}_segmentation.png")
    # files of the real distribution that are not images of the task
    (images / "ISIC-2017_Training_Data_metadata.csv").write_text("image_id,age_approximate,sex\n")
    shutil.copyfile(
        masks / f"{path.stem}_segmentation.png", images / f"{path.stem}_superpixels.png"
    )
    return dest


def test_2017_classification_official_splits(isic_raw: Path, tmp_path: Path) -> None:
    dm = ISICDataModule(
        root=isic_raw, processed=tmp_path / "p", splits=OFFICIAL_2017, size=32, batch_size=16
    )
    assert dm.task_type == "multi-class"
    assert dm.class_names == ["melanoma", "seborrheic_keratosis", "nevus"] and dm.num_classes == 3
    dm.setup()
    assert dm.split_sizes() == {"train": 150, "val": 150, "test": 150}
    # class counts of SOURCE.md: training 50 / 40 / 60, test 40 / 30 / 80
    assert np.bincount(dm.datasets["train"].labels).tolist() == [50, 40, 60]
    assert np.bincount(dm.datasets["test"].labels).tolist() == [40, 30, 80]
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64
    assert dm.sample_ids("test")[0].startswith("ISIC_")
    assert not (tmp_path / "p/32x32/masks.npy").exists()  # classification caches images only


def test_2018_one_hot_labels_and_carved_splits(isic_raw: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    images = raw / "ISIC2018_Task3_Training_Input"
    images.mkdir(parents=True)
    labels = raw / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    labels.parent.mkdir()
    src = sorted((isic_raw / "ISIC-2017_Training_Data").glob("*.jpg"))[:35]
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", *isic_module.CLASSES_2018])
        for k, path in enumerate(src):
            shutil.copyfile(path, images / path.name)
            row = [0.0] * 7
            row[k % 7] = 1.0
            w.writerow([path.stem, *row])
    splits = {"train": {"images": images.name, "labels": str(labels.relative_to(raw))}}
    dm = ISICDataModule(
        root=raw, processed=tmp_path / "p", edition=2018, splits=splits, size=32, split=SPLIT
    )
    assert dm.num_classes == 7
    dm.setup()
    assert sum(dm.split_sizes().values()) == 35
    assert set(dm.datasets["test"].labels.tolist()) == set(range(7))  # stratified


@pytest.mark.parametrize(
    ("header", "row", "match"),
    [
        ("image_id,melanoma,seborrheic_keratosis", "ISIC_1,1.0,1.0", "marked both melanoma"),
        ("image,MEL,NV,BCC", "ISIC_1,1.0,1.0,0.0", "has 2 classes set"),
        ("image,MEL,NV,BCC", "ISIC_1,0.5,0.5,0.0", "is not 3 values of 0/1"),
        ("image_id,x", "ISIC_1,1", "expected image_id,melanoma"),
    ],
)
def test_bad_label_rows(tmp_path: Path, header: str, row: str, match: str) -> None:
    path = tmp_path / "gt.csv"
    path.write_text(f"{header}\n{row}\n")
    with pytest.raises(DataError, match=match):
        read_isic_labels(path)


def test_2017_labels_read_as_three_classes(isic_raw: Path) -> None:
    ids, labels, classes = read_isic_labels(isic_raw / "ISIC-2017_Validation_Part3_GroundTruth.csv")
    assert classes == ["melanoma", "seborrheic_keratosis", "nevus"]
    assert len(ids) == 150 and [labels.count(c) for c in classes] == [30, 42, 78]


def test_task1_segmentation_with_generated_masks(shared_data: Path, tmp_path: Path) -> None:
    mirror = make_task1_mirror(shared_data, tmp_path / "mirror")
    dm = ISICDataModule(
        mode="segmentation",
        root=tmp_path / "raw",
        processed=tmp_path / "p",
        splits=TASK1,
        mirror=str(mirror),
        size=64,
        split=SPLIT,
        batch_size=4,
    )
    fetched = dm.fetch()
    assert len(fetched) == 20  # images and masks; metadata and superpixels are not task files
    dm.setup()
    assert dm.task_type == "segmentation" and dm.num_classes == 2
    assert sum(dm.split_sizes().values()) == 10
    sample = dm.split_samples("test")[0]
    truth = dm.original_mask("test", 0)
    expected = np.asarray(Image.open(sample.masks[0])) > 0
    np.testing.assert_array_equal(truth, expected.astype(np.uint8))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].max() == 1


def test_task1_missing_mask_and_mirror_without_masks(shared_data: Path, tmp_path: Path) -> None:
    mirror = make_task1_mirror(shared_data, tmp_path / "mirror", n=4)
    first = sorted((mirror / "isic/ISIC-2017_Training_Part1_GroundTruth").iterdir())[0]
    first.unlink()
    shutil.copytree(mirror / "isic", tmp_path / "raw")
    dm = ISICDataModule(
        mode="segmentation", root=tmp_path / "raw", processed=tmp_path / "p", splits=TASK1
    )
    with pytest.raises(
        DataError, match=r"ISIC_\d+\.jpg has no mask: expected .*_segmentation\.png"
    ):
        dm.prepare()
    # the shared mirror has no Task 1 masks: fetch says which folder is missing
    real = ISICDataModule(
        mode="segmentation",
        root=tmp_path / "r2",
        processed=tmp_path / "p2",
        splits=TASK1,
        mirror=str(shared_data),
    )
    with pytest.raises(DataError, match=r"mirror lacks .*ISIC-2017_Training_Part1_GroundTruth"):
        real.fetch()


def test_online_download_plan(tmp_path: Path, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(
        isic_module, "fetch_archives", lambda remotes, root, force: seen.extend(remotes) or []
    )
    monkeypatch.delenv("MEDPIPE_DATA_MIRROR", raising=False)
    ISICDataModule(root=tmp_path, processed=tmp_path / "p", splits=OFFICIAL_2017).fetch()
    urls = sorted(r.url for r in seen)
    assert "https://isic-challenge-data.s3.amazonaws.com/2017/ISIC-2017_Training_Data.zip" in urls
    assert (
        "https://isic-challenge-data.s3.amazonaws.com/2017/ISIC-2017_Test_v2_Part3_GroundTruth.csv"
        in urls
    )
    assert len(urls) == 6


def test_bad_isic_config() -> None:
    with pytest.raises(ConfigError, match=r"data\.mode='detection'"):
        ISICDataModule(mode="detection", root="x", processed="y", splits=OFFICIAL_2017)
    with pytest.raises(ConfigError, match=r"needs 'images' and 'masks' for mode=segmentation"):
        ISICDataModule(mode="segmentation", root="x", processed="y", splits=OFFICIAL_2017)


@pytest.mark.slow
def test_isic_cls_experiment_trains_and_reports(
    isic_raw: Path, tmp_path: Path, monkeypatch
) -> None:
    """`medpipe train/evaluate experiment=isic_cls` (tiny budget): accuracy, f1, roc_auc."""
    from medpipe.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads per process thrash on a shared 2-core machine
    common = [
        "experiment=isic_cls",
        f"data.root={isic_raw}",
        f"paths.processed={tmp_path / 'processed'}",
        f"paths.models={tmp_path / 'models'}",
        f"paths.metrics={tmp_path / 'metrics'}",
        f"paths.reports={tmp_path / 'reports'}",
        f"paths.logs={tmp_path / 'logs'}",
        "data.size=32",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
    ]
    try:
        assert main(["train", *common]) == 0
        assert main(["evaluate", *common]) == 0
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((tmp_path / "metrics" / "isic_cls.json").read_text())
    for key in ("accuracy", "f1", "roc_auc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["n_test"] == 150
