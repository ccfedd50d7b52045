"""Segmentation report: hand-computed summaries, resizing back to original sizes, and the report
files, with model outputs replaced by known probabilities so every number is predictable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from medpipe.errors import DataError
from medpipe.evaluation import segmentation_report as report
from medpipe.tasks.segmentation import SegmentationTask
from tests.data.test_segmentation import isbi_dm, make_isbi

SMALL_UNET = {"name": "unet", "pretrained": None, "decoder_channels": [8, 8, 8, 8, 8]}


def test_binary_summary_hand_computed() -> None:
    counts = np.array(
        [
            [3, 1, 0, 96],  # Dice 6/7, IoU 3/4
            [0, 0, 0, 100],  # truth and prediction empty: 1
            [0, 2, 0, 98],  # empty truth, 2 false-positive pixels: 0
            [0, 0, 4, 96],  # lesion missed: 0
        ]
    )
    out = report.binary_summary(counts, cutoff=0.65)
    assert out["dice"] == pytest.approx((6 / 7 + 1) / 4)
    assert out["iou"] == pytest.approx((3 / 4 + 1) / 4)
    assert out["dice_positive"] == pytest.approx((6 / 7) / 2)
    assert out["iou_positive"] == pytest.approx(3 / 8)
    assert out["empty_specificity"] == pytest.approx(0.5)
    assert out["jaccard_thresholded"] == pytest.approx((0.75 + 1) / 4)
    assert out["dice_micro"] == pytest.approx(6 / 13)
    assert out["iou_micro"] == pytest.approx(3 / 10)
    assert out["pixel_accuracy"] == pytest.approx((3 + 390) / 400)
    assert (out["n_positive"], out["n_empty"]) == (2, 2)
    # the ISIC cutoff: an IoU of 0.6 counts as 0
    assert report.binary_summary(np.array([[6, 4, 0, 0]]), 0.65)["jaccard_thresholded"] == 0.0
    assert report.binary_summary(np.array([[6, 4, 0, 0]]), 0.5)["jaccard_thresholded"] == 0.6


def test_probs_resized_back_to_the_original_size() -> None:
    probs = torch.zeros(1, 32, 32)
    probs[0, :, :16] = 0.9  # left half
    mask = report.probs_to_mask(probs, (48, 80), threshold=0.5, multiclass=False)
    assert mask.shape == (48, 80) and mask.dtype == np.uint8
    assert mask[:, :39].all() and not mask[:, 41:].any()
    assert not report.probs_to_mask(probs, (48, 80), threshold=0.95, multiclass=False).any()
    three = torch.zeros(3, 32, 32)
    three[2, :16], three[1, 16:] = 1, 1
    cls = report.probs_to_mask(three, (64, 64), threshold=0.5, multiclass=True)
    assert set(np.unique(cls[:30])) == {2} and set(np.unique(cls[34:])) == {1}


def _cfg(tmp_path: Path):
    return OmegaConf.create(
        {
            "name": "seg_test",
            "paths": {"metrics": str(tmp_path / "metrics"), "reports": str(tmp_path / "reports")},
            "trainer": {"accelerator": "cpu"},
        }
    )


def _task(multiclass: bool = False) -> SegmentationTask:
    return SegmentationTask(
        model=SMALL_UNET,
        mask_mode="multiclass" if multiclass else "binary",
        num_classes=3 if multiclass else 2,
        in_channels=1,
    )


def _perfect(monkeypatch, dm, one_hot: int | None = None) -> None:
    """Replace inference by the cached (training-size) test masks as probabilities."""

    def fake_predict(task, loader, accelerator="cpu"):
        masks = torch.stack([b["mask"] for b in loader.dataset])
        if one_hot:
            probs = torch.nn.functional.one_hot(masks.long(), one_hot).permute(0, 3, 1, 2)
        else:
            probs = masks[:, None]
        return {"probs": probs.float(), "index": torch.arange(len(masks))}

    monkeypatch.setattr(report, "predict", fake_predict)


def test_perfect_predictions_score_one_with_empty_images(tmp_path: Path, monkeypatch) -> None:
    make_isbi(tmp_path / "raw", n=12, shape=(32, 32), empty=(0, 1, 2, 3, 4, 5))
    dm = isbi_dm(tmp_path)
    _perfect(monkeypatch, dm)
    metrics = report.run(_cfg(tmp_path), _task(), dm, tmp_path / "x.ckpt")
    assert metrics["dice"] == metrics["iou"] == metrics["dice_micro"] == 1.0
    assert metrics["dice_positive"] == metrics["empty_specificity"] == 1.0
    assert metrics["jaccard_thresholded"] == metrics["pixel_accuracy"] == 1.0
    assert metrics["n_positive"] > 0 and metrics["n_empty"] > 0
    assert metrics["n_test"] == metrics["n_images"] == 3
    saved = json.loads((tmp_path / "metrics" / "seg_test.json").read_text())
    assert saved == metrics
    assert (tmp_path / "reports" / "seg_test" / "test_overlays.png").stat().st_size > 1000


def test_metrics_are_computed_at_the_original_size(tmp_path: Path, monkeypatch) -> None:
    make_isbi(tmp_path / "raw", n=8, shape=(48, 80))
    dm = isbi_dm(tmp_path)  # trained at 32x32
    _perfect(monkeypatch, dm)
    metrics = report.run(_cfg(tmp_path), _task(), dm, tmp_path / "x.ckpt")
    with open(tmp_path / "reports" / "seg_test" / "per_image.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["height"], r["width"]) for r in rows} == {("48", "80")}
    truth = sum(int(r["truth_pixels"]) for r in rows)
    assert truth == sum(int(dm.original_mask("test", i).sum()) for i in range(len(rows)))
    # a 32x32 mask resized back is close to, but not exactly, the original
    assert 0.8 < metrics["dice"] < 1.0


def test_multiclass_report(tmp_path: Path, monkeypatch) -> None:
    make_isbi(tmp_path / "raw", n=8, shape=(32, 32))
    for i in range(8):  # class-index masks 0/1/2
        arr = np.zeros((32, 32), np.uint8)
        arr[2:10, 2:10], arr[20:30, 5:25] = 1, 2
        from tests.data.test_segmentation import write_png

        write_png(tmp_path / f"raw/membrane/train/label/{i}.png", arr)
    dm = isbi_dm(tmp_path, mask_mode="multiclass", invert_mask=False, class_names=["bg", "a", "b"])
    _perfect(monkeypatch, dm, one_hot=3)
    metrics = report.run(_cfg(tmp_path), _task(multiclass=True), dm, tmp_path / "x.ckpt")
    assert metrics["dice"] == metrics["iou"] == metrics["pixel_accuracy"] == 1.0
    assert metrics["dice_class1"] == metrics["dice_class2"] == 1.0


def test_checkpoint_for_other_masks_is_refused(tmp_path: Path) -> None:
    make_isbi(tmp_path / "raw", n=8, shape=(32, 32))
    dm = isbi_dm(tmp_path)
    with pytest.raises(DataError, match=r"trained for multiclass masks with 3 classes .* binary"):
        report.run(_cfg(tmp_path), _task(multiclass=True), dm, tmp_path / "x.ckpt")
