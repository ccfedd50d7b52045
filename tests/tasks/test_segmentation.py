"""SegmentationTask: smp losses, metrics and their empty-mask rule, U-Net registration with the
weights registry, and a short real training run (LGG, U-Net and Tiramisu) through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medpipe.errors import ConfigError
from medpipe.evaluation.segmentation_metrics import multiclass_dice_per_class
from medpipe.models.registry import build_model, list_models
from medpipe.models.segmentation import UNet
from medpipe.models.weights import fetch_state_dict
from medpipe.tasks.segmentation import (
    BINARY_LOSSES,
    MULTICLASS_LOSSES,
    MulticlassSegmentationMetrics,
    SegmentationLoss,
    SegmentationTask,
)

SMALL_UNET = {"name": "unet", "pretrained": None, "decoder_channels": [16, 8, 8, 8, 8]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _target(n: int = 2, size: int = 32) -> torch.Tensor:
    mask = torch.zeros(n, size, size)
    mask[:, 8:20, 10:24] = 1
    return mask


@pytest.mark.parametrize("name", BINARY_LOSSES)
def test_binary_losses_prefer_the_right_answer(name: str) -> None:
    loss = SegmentationLoss(name, multiclass=False)
    mask = _target()
    good = (mask * 2 - 1).unsqueeze(1) * 6  # confident and right
    bad = -good
    lg, lb = loss(good, mask), loss(bad, mask)
    assert torch.isfinite(lg) and lg < lb
    logits = torch.zeros(2, 1, 32, 32, requires_grad=True)
    loss(logits, mask).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", MULTICLASS_LOSSES)
def test_multiclass_losses_prefer_the_right_answer(name: str) -> None:
    loss = SegmentationLoss(name, multiclass=True)
    mask = _target().long()
    mask[:, 0:4, 0:4] = 2
    good = torch.nn.functional.one_hot(mask, 3).permute(0, 3, 1, 2).float() * 8
    bad = torch.roll(good, 1, dims=1)
    assert loss(good, mask) < loss(bad, mask)


def test_auto_loss_follows_the_mask_mode() -> None:
    assert SegmentationLoss("auto", multiclass=False).name == "dice_bce"
    assert SegmentationLoss("auto", multiclass=True).name == "ce_dice"


def test_unknown_loss_names_the_option() -> None:
    with pytest.raises(ConfigError, match=r"task\.loss='ce_dice' is not a binary loss"):
        SegmentationLoss("ce_dice", multiclass=False)
    with pytest.raises(ConfigError, match=r"task\.loss='hinge'"):
        SegmentationLoss("hinge", multiclass=True)


def _task(**kwargs) -> SegmentationTask:
    opts = {"model": SMALL_UNET, "mask_mode": "binary", "num_classes": 2, "in_channels": 1}
    opts.update(kwargs)
    return SegmentationTask(**opts)


def test_validation_metrics_empty_masks_and_threshold() -> None:
    task = _task(threshold=0.7)
    metrics = task.val_metrics
    empty = torch.zeros(1, 1, 8, 8)
    metrics.update(torch.full((1, 1, 8, 8), -5.0), empty)  # both empty -> Dice 1, IoU 1
    out = metrics.compute()
    assert out["dice"] == 1.0 and out["iou"] == 1.0 and out["pixel_accuracy"] == 1.0
    metrics.reset()
    # p = sigmoid(0.5) = 0.62: foreground at threshold 0.5, background at 0.7
    metrics.update(torch.full((1, 1, 8, 8), 0.5), empty)
    assert metrics.compute()["dice"] == 1.0
    low = _task(threshold=0.5).val_metrics
    low.update(torch.full((1, 1, 8, 8), 0.5), empty)
    assert low.compute()["dice"] == 0.0  # predicted everywhere, truth empty


def test_multiclass_metric_agrees_with_the_reference_dice() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (4, 16, 16), generator=gen)
    logits = torch.randn(4, 3, 16, 16, generator=gen)
    logits += torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2) * 1.5
    metric = MulticlassSegmentationMetrics(3)
    metric.update(logits[:2], target[:2])
    metric.update(logits[2:], target[2:])
    out = metric.compute()
    ref = multiclass_dice_per_class(logits.argmax(1), target, 3)
    assert out["dice"].item() == pytest.approx(ref[1:].mean().item())
    assert out["dice_class2"].item() == pytest.approx(ref[2].item())
    assert out["dice_micro"] == out["dice"]  # pooled already: the monitor name works for both
    acc = (logits.argmax(1) == target).float().mean().item()
    assert out["pixel_accuracy"].item() == pytest.approx(acc)


def test_unet_is_registered_and_loads_offline_encoder_weights() -> None:
    assert {"unet", "tiramisu56", "tiramisu67", "tiramisu103"} <= set(list_models())
    ref, _ = fetch_state_dict("offline", "efficientnet_lite0")
    rgb = build_model("unet", in_channels=3, num_classes=1, pretrained="offline")
    assert isinstance(rgb, UNet) and rgb.load_report.backbone_loaded == 288
    stem = rgb.net.encoder.model.conv_stem.weight
    torch.testing.assert_close(stem, ref["conv_stem.weight"])
    grey = build_model(
        "unet", in_channels=1, num_classes=3, pretrained="offline", decoder_channels=[8] * 5
    )
    assert grey.load_report.stem_adapted
    torch.testing.assert_close(
        grey.net.encoder.model.conv_stem.weight, ref["conv_stem.weight"].sum(1, keepdim=True)
    )
    with torch.no_grad():
        assert grey(torch.zeros(1, 1, 64, 96)).shape == (1, 3, 64, 96)
    with pytest.raises(ConfigError, match=r"multiples of 32"):
        grey(torch.zeros(1, 1, 50, 64))


def test_unet_encoder_from_a_segmentation_checkpoint(tmp_path: Path) -> None:
    src = build_model("unet", in_channels=3, num_classes=1, pretrained="offline")
    ckpt = tmp_path / "seg.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}}, ckpt)
    dst = build_model("unet", in_channels=3, num_classes=1, pretrained=str(ckpt))
    assert dst.load_report.backbone_loaded == 288
    torch.testing.assert_close(
        dst.net.encoder.model.blocks[3][0].conv_pw.weight,
        src.net.encoder.model.blocks[3][0].conv_pw.weight,
    )


def test_bad_unet_options() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.encoder='efficientnet_lit0' is not a timm model"
    ):
        build_model("unet", in_channels=3, num_classes=1, encoder="efficientnet_lit0")
    with pytest.raises(ConfigError, match=r"model\.decoder_channels"):
        build_model("unet", in_channels=3, num_classes=1, decoder_channels=[8, 8])


def test_checkpoint_hparams_do_not_refetch_pretrained_weights() -> None:
    task = _task(model={**SMALL_UNET, "pretrained": "offline"})
    ckpt = {"hyper_parameters": dict(task.hparams)}
    task.on_save_checkpoint(ckpt)
    assert ckpt["hyper_parameters"]["model"]["pretrained"] is None
    assert task.hparams.model["pretrained"] == "offline"  # the live task is untouched


def test_segmentation_task_refuses_a_classification_dataset() -> None:
    from omegaconf import OmegaConf

    from medpipe.tasks.segmentation import build

    class FakeDM:
        task_type = "binary-class"

    cfg = OmegaConf.create({"data": {"name": "pneumoniamnist"}, "task": {}, "model": SMALL_UNET})
    with pytest.raises(ConfigError, match=r"task\.kind=segmentation needs a segmentation dataset"):
        build(cfg, FakeDM())


@pytest.mark.parametrize("mask_mode", ["binary", "multiclass"])
def test_fit_logs_the_monitored_metric(tmp_path: Path, mask_mode: str) -> None:
    """A short Lightning fit with the default monitor picks a best checkpoint in both modes."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.data.test_segmentation import isbi_dm, make_isbi, write_png

    make_isbi(tmp_path / "raw", n=8, shape=(32, 32))
    extra = {}
    if mask_mode == "multiclass":
        arr = np.zeros((32, 32), np.uint8)
        arr[2:12, 2:12], arr[18:30, 4:28] = 1, 2
        for i in range(8):
            write_png(tmp_path / f"raw/membrane/train/label/{i}.png", arr)
        extra = {"mask_mode": "multiclass", "invert_mask": False, "class_names": ["b", "x", "y"]}
    dm = isbi_dm(tmp_path, **extra)
    task = SegmentationTask(
        model=SMALL_UNET,
        mask_mode=dm.mask_mode,
        num_classes=dm.num_classes,
        in_channels=1,
        overlays={"every_n_epochs": 1, "n_images": 2, "dir": str(tmp_path / "overlays")},
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path / "m", monitor=task.hparams.monitor, mode="max")
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ckpt],
    )
    trainer.fit(task, datamodule=dm)
    assert ckpt.best_model_score is not None and 0 <= float(ckpt.best_model_score) <= 1
    assert (tmp_path / "overlays" / "epoch_001.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["lgg_unet", "lgg_tiramisu"])
def test_short_training_run_on_real_lgg(
    experiment: str, shared_data: Path, tmp_path_factory, monkeypatch
) -> None:
    """fetch -> train (overlays every epoch) -> evaluate for a tiny budget on the real data."""
    from medpipe.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEDPIPE_DATA_MIRROR", str(shared_data))
    out = tmp_path_factory.getbasetemp() / "lgg_run"
    common = [
        f"experiment={experiment}",
        f"paths.raw={out / 'raw'}",
        f"paths.processed={out / 'processed'}",
        f"paths.models={out / 'models'}",
        f"paths.metrics={out / 'metrics'}",
        f"paths.reports={out / 'reports'}",
        f"paths.logs={out / 'logs'}",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",  # OneCycleLR needs a few steps (pct_start * steps > 1)
        "trainer.limit_val_batches=1",
        "task.overlays.every_n_epochs=1",
        "task.overlays.n_images=2",
    ]
    if experiment == "lgg_unet":
        common += ["data.size=64", "model.decoder_channels=[16,8,8,8,8]"]
    else:  # dense blocks at full resolution are slow on a CPU: smallest size
        common += ["data.size=32", "data.batch_size=8"]
    assert main(["fetch", *common]) == 0
    assert main(["train", *common]) == 0
    ckpt = out / "models" / experiment / "best.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["model"].get("pretrained") is None
    overlays = sorted((out / "reports" / experiment / "overlays").glob("*.png"))
    assert [p.name for p in overlays] == ["epoch_001.png", "epoch_002.png"]
    assert Image.open(overlays[0]).size[0] >= 400
    assert main(["evaluate", *common]) == 0
    metrics = json.loads((out / "metrics" / f"{experiment}.json").read_text())
    for key in ("dice", "iou", "pixel_accuracy", "dice_positive", "empty_specificity"):
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0
    assert metrics["n_positive"] + metrics["n_empty"] == metrics["n_test"] == metrics["n_images"]
    rows = (out / "reports" / experiment / "per_image.csv").read_text().splitlines()
    assert len(rows) == metrics["n_test"] + 1 and rows[1].split(",")[1:3] == ["256", "256"]
    assert np.isfinite(metrics["pixel_accuracy"])
