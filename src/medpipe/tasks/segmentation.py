"""SegmentationTask: losses, metrics and optimisation around any registered segmentation model.

Binary masks use one logit channel (sigmoid) and ``task.loss`` in ``dice | bce | dice_bce |
focal | lovasz``; multi-class masks use one channel per class (softmax) and ``ce_dice | ce |
dice | focal | lovasz``; ``auto`` picks ``dice_bce`` or ``ce_dice``. All losses are
segmentation-models-pytorch's implementations.

Metrics (binary, :mod:`medpipe.evaluation.segmentation_metrics`): per-image Dice and IoU averaged
over images (``dice``, ``iou``), pooled over the split (``dice_micro``, ``iou_micro``), pixel
accuracy, and the ISIC 2018 thresholded Jaccard (per-image Jaccard below ``jaccard_cutoff`` = 0).
An image whose prediction and truth are both empty scores 1. The probability threshold is
``task.threshold``. Multi-class: Dice and IoU per foreground class from the split's confusion
matrix, averaged over classes (``dice``, ``iou``; pooled over pixels, so ``dice_micro`` and
``iou_micro`` carry the same values), and pixel accuracy. The best checkpoint is
chosen by ``task.monitor`` (``val/dice_micro`` by default: the pooled Dice, which an
all-empty prediction cannot game the way the per-image mean can when most images are empty).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import segmentation_models_pytorch as smp
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import Metric

from medpipe.errors import ConfigError
from medpipe.evaluation.segmentation_metrics import ISIC_JACCARD_CUTOFF, SegmentationMetrics
from medpipe.models.registry import build_model
from medpipe.tasks.factory import recorded_input_size
from medpipe.tasks.optim import build_optimizer, build_scheduler

BINARY_LOSSES = ("dice", "bce", "dice_bce", "focal", "lovasz")
MULTICLASS_LOSSES = ("ce_dice", "ce", "dice", "focal", "lovasz")


class SegmentationLoss(nn.Module):
    """Sum of smp losses named by ``task.loss`` (e.g. ``dice_bce`` = Dice + BCE).

    ``auto`` is Dice + BCE for binary masks and cross-entropy + Dice for multi-class masks.
    """

    def __init__(self, name: str, *, multiclass: bool) -> None:
        super().__init__()
        if name == "auto":
            name = "ce_dice" if multiclass else "dice_bce"
        allowed = MULTICLASS_LOSSES if multiclass else BINARY_LOSSES
        if name not in allowed:
            kind = "multi-class" if multiclass else "binary"
            raise ConfigError(f"task.loss={name!r} is not a {kind} loss; use one of {allowed}")
        self.name, self.multiclass = name, multiclass  # the resolved name ("auto" replaced)
        mode = smp.losses.MULTICLASS_MODE if multiclass else smp.losses.BINARY_MODE
        parts: list[nn.Module] = []
        if name in ("dice", "dice_bce", "ce_dice"):
            parts.append(smp.losses.DiceLoss(mode, from_logits=True))
        if name in ("bce", "dice_bce"):
            parts.append(smp.losses.SoftBCEWithLogitsLoss())
        if name in ("ce", "ce_dice"):
            parts.append(nn.CrossEntropyLoss())
        if name == "focal":
            parts.append(smp.losses.FocalLoss(mode))
        if name == "lovasz":
            parts.append(smp.losses.LovaszLoss(mode, per_image=False))
        self.parts = nn.ModuleList(parts)

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        """``logits`` (N, C, H, W); ``mask`` (N, H, W) of 0/1 (binary) or class indices."""
        target = mask.long() if self.multiclass else mask.float().unsqueeze(1)
        return sum(
            (part(logits, target) for part in self.parts), torch.zeros((), device=logits.device)
        )


def multiclass_scores(confusion: Tensor) -> dict[str, Tensor]:
    """Dice/IoU per foreground class (classes absent from truth and prediction skipped) and
    pixel accuracy from a ``(C, C)`` confusion matrix (rows = truth, columns = prediction)."""
    conf = confusion.double()
    tp = conf.diag()
    fp = conf.sum(0) - tp
    fn = conf.sum(1) - tp
    dice = 2 * tp / (2 * tp + fp + fn)
    iou = tp / (tp + fp + fn)
    fg = slice(1, None)  # class 0 is the background

    def mean(values: Tensor) -> Tensor:
        v = values[fg][~values[fg].isnan()]
        return v.mean() if v.numel() else torch.tensor(1.0, dtype=torch.float64)

    total = conf.sum()
    out = {
        "dice": mean(dice),
        "iou": mean(iou),
        # already pooled over every pixel of the split: the same values under the binary names,
        # so task.monitor=val/dice_micro works for both mask modes
        "dice_micro": mean(dice),
        "iou_micro": mean(iou),
        "pixel_accuracy": tp.sum() / total if total > 0 else torch.tensor(float("nan")),
    }
    for c in range(1, conf.shape[0]):
        out[f"dice_class{c}"] = dice[c]
    return out


class MulticlassSegmentationMetrics(Metric):
    """Confusion matrix over every pixel of a split (summed across processes)."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state(
            "confusion",
            default=torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred = logits.argmax(dim=1).reshape(-1)
        t = target.long().reshape(-1)
        k = self.num_classes
        self.confusion += torch.bincount(t * k + pred, minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, Tensor]:
        return multiclass_scores(self.confusion)


class SegmentationTask(L.LightningModule):
    """Trains a segmentation model (``model.name``: unet, tiramisu56/67/103) on image+mask data."""

    def __init__(
        self,
        *,
        model: Mapping[str, Any],
        mask_mode: str,
        num_classes: int,
        in_channels: int,
        class_names: Sequence[str] | None = None,
        loss: str = "auto",
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        threshold: float = 0.5,
        jaccard_cutoff: float = ISIC_JACCARD_CUTOFF,
        monitor: str = "val/dice_micro",
        overlays: Mapping[str, Any] | None = None,
        input_size: int | None = None,
    ) -> None:
        # input_size: data.size at training, recorded for `medpipe export` (see ClassificationTask)
        super().__init__()
        if mask_mode not in ("binary", "multiclass"):
            raise ConfigError(f"mask mode {mask_mode!r}: use binary or multiclass")
        self.save_hyperparameters()
        self.task_type = "segmentation"
        self.mask_mode, self.num_classes = mask_mode, int(num_classes)
        self.multiclass = mask_mode == "multiclass"
        model_cfg = dict(model)
        name = model_cfg.pop("name", None)
        if not name:
            raise ConfigError("model.name is missing; pick a model, e.g. model=unet")
        self.model = build_model(
            name,
            in_channels=in_channels,
            num_classes=self.num_classes if self.multiclass else 1,
            **model_cfg,
        )
        self.criterion = SegmentationLoss(str(loss), multiclass=self.multiclass)
        build_optimizer([nn.Parameter(torch.zeros(1))], optimizer or {})  # validate early
        self.threshold = float(threshold)
        self.val_metrics = self._metrics()
        self.test_metrics = self._metrics()

    def _metrics(self) -> Metric:
        if self.multiclass:
            return MulticlassSegmentationMetrics(self.num_classes)
        return SegmentationMetrics(
            threshold=self.threshold,
            from_logits=True,
            jaccard_cutoff=float(self.hparams.jaccard_cutoff),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Sigmoid (binary, one channel) or softmax over classes."""
        return torch.softmax(logits, dim=1) if self.multiclass else torch.sigmoid(logits)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); lower optimizer.lr or check "
                "the inputs. The last good checkpoint is kept."
            )
        n = len(batch["image"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def _eval_step(self, batch: Mapping[str, Tensor], metrics: Metric, prefix: str) -> None:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        metrics.update(logits, batch["mask"])
        n = len(batch["image"])
        self.log(f"{prefix}/loss", loss, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def _log_metrics(self, metrics: Metric, prefix: str) -> None:
        for key, value in metrics.compute().items():
            self.log(f"{prefix}/{key}", value.float(), prog_bar=key == "dice")
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def predict_step(
        self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Probabilities at the training size (``(N, C, h, w)``) and each item's split index."""
        return {"probs": self.probabilities(self(batch["image"])), "index": batch["index"]}

    def configure_optimizers(self) -> Any:
        sched_cfg = dict(self.hparams.scheduler or {})
        if str(sched_cfg.get("name", "none")).lower() == "plateau":
            sched_cfg.setdefault("monitor", self.hparams.monitor)
        optimizer = build_optimizer(self.parameters(), self.hparams.optimizer or {})
        scheduler = build_scheduler(
            optimizer,
            sched_cfg,
            max_epochs=int(self.trainer.max_epochs or 1),
            total_steps=int(self.trainer.estimated_stepping_batches),
        )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def configure_callbacks(self) -> list[L.Callback]:
        """Validation overlays (``task.overlays``), merged into the Trainer's callbacks."""
        cfg = dict(self.hparams.overlays or {})
        every = int(cfg.get("every_n_epochs", 0) or 0)
        if every <= 0 or not cfg.get("dir"):
            return []
        from medpipe.callbacks.overlays import ValidationOverlays

        return [
            ValidationOverlays(
                cfg["dir"],
                every_n_epochs=every,
                n_images=int(cfg.get("n_images", 4)),
                threshold=self.threshold,
            )
        ]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The weights are in the checkpoint: rebuilding the model to load it must not fetch the
        # pretrained encoder again (no network on an offline evaluation machine).
        hp = dict(checkpoint.get("hyper_parameters", {}))
        if isinstance(hp.get("model"), Mapping):
            hp["model"] = {**hp["model"], "pretrained": None}
            checkpoint["hyper_parameters"] = hp


def build(cfg: DictConfig, dm: L.LightningDataModule) -> SegmentationTask:
    """The SegmentationTask for ``cfg`` and a segmentation DataModule (mask mode, classes)."""
    if getattr(dm, "task_type", None) != "segmentation":
        raise ConfigError(
            f"task.kind=segmentation needs a segmentation dataset (data=lgg, busi, isbi or "
            f"isic_seg), but data={cfg.data.get('name')} is a {getattr(dm, 'task_type', '?')} "
            "dataset; use task=classification for it."
        )
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    assert isinstance(task_cfg, dict)
    return SegmentationTask(
        model=OmegaConf.to_container(cfg.model, resolve=True),  # type: ignore[arg-type]
        mask_mode=dm.mask_mode,
        num_classes=dm.num_classes,
        in_channels=dm.channels,
        class_names=list(dm.class_names),
        loss=str(task_cfg.get("loss", "auto")),
        optimizer=task_cfg.get("optimizer"),
        scheduler=task_cfg.get("scheduler"),
        threshold=float(task_cfg.get("threshold", 0.5)),
        jaccard_cutoff=float(task_cfg.get("jaccard_cutoff", ISIC_JACCARD_CUTOFF)),
        monitor=str(task_cfg.get("monitor", "val/dice_micro")),
        overlays=task_cfg.get("overlays"),
        input_size=recorded_input_size(cfg),
    )


TASK_CLASS = SegmentationTask
