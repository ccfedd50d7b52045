"""``medpipe predict`` for segmentation: PNG masks at original sizes and the Kaggle RLE CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from omegaconf import OmegaConf
from PIL import Image

from medpipe.errors import ConfigError
from medpipe.kaggle.rle import rle_decode, rle_encode
from medpipe.prediction import segmentation as pred
from medpipe.tasks.segmentation import SegmentationTask
from tests.data.test_segmentation import isbi_dm, make_isbi, write_png

SMALL_UNET = {"name": "unet", "pretrained": None, "decoder_channels": [8, 8, 8, 8, 8]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(tmp_path: Path, header=("ImageId", "EncodedPixels")):
    return OmegaConf.create(
        {
            "name": "seg_pred",
            "paths": {"predictions": str(tmp_path / "predictions")},
            "trainer": {"accelerator": "cpu"},
            "task": {"rle_header": list(header)},
        }
    )


def _read_rle(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _fake_predict(probs_for):
    def fake(task, loader, accelerator="cpu"):
        probs = torch.stack([probs_for(b) for b in loader.dataset])
        return {"probs": probs, "index": torch.arange(len(probs))}

    return fake


def test_binary_masks_at_original_size_and_rle(tmp_path: Path, monkeypatch) -> None:
    make_isbi(tmp_path / "raw", n=8, shape=(48, 80), n_test=3)
    dm = isbi_dm(tmp_path)
    task = SegmentationTask(model=SMALL_UNET, mask_mode="binary", num_classes=2, in_channels=1)
    monkeypatch.setattr(pred, "predict", _fake_predict(lambda b: b["mask"][None].float()))
    out = pred.run(_cfg(tmp_path), task, dm, tmp_path / "x.ckpt", split="test")
    assert out == tmp_path / "predictions" / "seg_pred" / "test"
    header, rows = _read_rle(out / "rle.csv")
    assert header == ["ImageId", "EncodedPixels"]
    assert [r[0] for r in rows] == dm.sample_ids("test")
    for image_id, rle in rows:
        png = np.asarray(Image.open(out / "masks" / f"{image_id}.png"))
        assert png.shape == (48, 80) and set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(rle_decode(rle, png.shape), png // 255)
        assert png.any()  # the membrane block was predicted
    # images without ground truth (ISBI's challenge test slices) can be predicted too
    monkeypatch.setattr(pred, "predict", _fake_predict(lambda b: torch.zeros(1, 32, 32)))
    out = pred.run(
        _cfg(tmp_path),
        task,
        dm,
        tmp_path / "x.ckpt",
        split="unlabelled",
        output=str(tmp_path / "u"),
    )
    header, rows = _read_rle(out / "rle.csv")
    assert rows == [["test_0", ""], ["test_1", ""], ["test_2", ""]]  # empty mask -> ""


def test_multiclass_masks_hold_class_indices(tmp_path: Path, monkeypatch) -> None:
    make_isbi(tmp_path / "raw", n=8, shape=(32, 64))
    arr = np.zeros((32, 64), np.uint8)
    arr[:, :20], arr[:, 40:] = 1, 2
    for i in range(8):
        write_png(tmp_path / f"raw/membrane/train/label/{i}.png", arr)
    dm = isbi_dm(tmp_path, mask_mode="multiclass", invert_mask=False, class_names=["bg", "a", "b"])
    task = SegmentationTask(
        model=SMALL_UNET,
        mask_mode="multiclass",
        num_classes=3,
        in_channels=1,
        class_names=["bg", "a", "b"],
    )

    def one_hot(b):
        return torch.nn.functional.one_hot(b["mask"].long(), 3).permute(2, 0, 1).float()

    monkeypatch.setattr(pred, "predict", _fake_predict(one_hot))
    out = pred.run(_cfg(tmp_path, ("id", "rle")), task, dm, tmp_path / "x.ckpt")
    first = dm.sample_ids("test")[0]
    png = np.asarray(Image.open(out / "masks" / f"{first}.png"))
    assert png.shape == (32, 64)
    # nearest-resized class blocks come back at the original size
    assert (png[:, :18] == 1).all() and (png[:, 22:38] == 0).all() and (png[:, 42:] == 2).all()
    header, rows = _read_rle(out / "rle.csv")
    assert header == ["id", "rle"]
    assert [r[0] for r in rows[:2]] == [f"{first}_a", f"{first}_b"]
    np.testing.assert_array_equal(rle_decode(rows[1][1], png.shape), (png == 2).astype(np.uint8))


@pytest.mark.parametrize("header", [["id"], ["id", ""], ["a", "b", "c"]])
def test_bad_rle_header(tmp_path: Path, header) -> None:
    with pytest.raises(ConfigError, match=r"task\.rle_header"):
        pred.rle_header(_cfg(tmp_path, header))


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(st.integers(1, 30), st.integers(1, 30)).flatmap(
        lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 1))
    )
)
def test_png_and_rle_round_trip(mask: np.ndarray) -> None:
    """A predicted mask survives PNG writing and Kaggle RLE encoding unchanged."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = pred.write_mask_png(Path(tmp) / "m.png", mask, binary=True)
        back = np.asarray(Image.open(path)) // 255
    np.testing.assert_array_equal(back, mask)
    rle = rle_encode(back)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
    starts = [int(t) for t in rle.split()[0::2]]
    assert starts == sorted(starts) and all(s >= 1 for s in starts)


@pytest.mark.slow
def test_predict_cli_end_to_end(tmp_path: Path, monkeypatch) -> None:
    """train (1 tiny epoch) then `medpipe predict` on synthetic ISBI data, real CLI."""
    from medpipe.cli import main

    make_isbi(tmp_path / "raw", n=10, shape=(48, 80), n_test=2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    common = [
        "data=isbi",
        "model=unet",
        "task=segmentation",
        "model.pretrained=null",
        "model.decoder_channels=[8,8,8,8,8]",
        f"data.root={tmp_path / 'raw'}",
        f"data.processed={tmp_path / 'processed'}",
        "data.size=32",
        f"paths.models={tmp_path / 'models'}",
        f"paths.reports={tmp_path / 'reports'}",
        f"paths.logs={tmp_path / 'logs'}",
        f"+paths.predictions={tmp_path / 'predictions'}",
        "task.scheduler.name=none",
        "task.rle_header=[id,rle_mask]",
        "trainer.max_epochs=1",
    ]
    assert main(["train", *common]) == 0
    assert main(["predict", *common, "--split", "unlabelled"]) == 0
    out = tmp_path / "predictions" / "isbi_unet" / "unlabelled"
    header, rows = _read_rle(out / "rle.csv")
    assert header == ["id", "rle_mask"] and [r[0] for r in rows] == ["test_0", "test_1"]
    for image_id, rle in rows:
        png = np.asarray(Image.open(out / "masks" / f"{image_id}.png"))
        assert png.shape == (48, 80)
        np.testing.assert_array_equal(rle_decode(rle, png.shape), png // 255)
