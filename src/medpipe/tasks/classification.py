"""ClassificationTask: loss, metrics and optimisation around any registered model.

The task never imports a concrete model: it builds ``model.name`` through the registry. The loss
follows the dataset's task type (cross-entropy for multi-class/ordinal, BCE-with-logits for binary
and multi-label) with optional class weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medpipe.errors import ConfigError
from medpipe.evaluation.metrics import (
    BINARY,
    MULTILABEL,
    ClassificationMetrics,
    logits_to_probs,
    num_outputs,
)
from medpipe.models.registry import build_model
from medpipe.tasks.optim import build_optimizer, build_scheduler

TASK_TYPES = ("binary-class", "multi-class", "multi-label", "ordinal-regression")


def build_loss(
    task_type: str, num_classes: int, class_weights: Sequence[float] | None
) -> nn.Module:
    """CE for multi-class/ordinal, BCE-with-logits for binary (pos_weight=w1/w0) and multi-label."""
    w = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
    if w is not None and (w <= 0).any():
        raise ConfigError(f"task.class_weights={list(class_weights)} must all be positive")
    if task_type == BINARY:
        if w is not None and len(w) != 2:
            raise ConfigError(f"task.class_weights needs 2 values for a binary task, got {len(w)}")
        return nn.BCEWithLogitsLoss(pos_weight=None if w is None else (w[1] / w[0]).reshape(1))
    if task_type == MULTILABEL:
        if w is not None and len(w) != num_classes:
            raise ConfigError(f"task.class_weights needs {num_classes} values (one per label)")
        return nn.BCEWithLogitsLoss(pos_weight=w)
    if w is not None and len(w) != num_classes:
        raise ConfigError(f"task.class_weights needs {num_classes} values (one per class)")
    return nn.CrossEntropyLoss(weight=w)


class ClassificationTask(L.LightningModule):
    """Trains ``model`` on one task type; logs accuracy, F1 and ROC-AUC per split."""

    def __init__(
        self,
        *,
        model: Mapping[str, Any],
        task_type: str,
        num_classes: int,
        in_channels: int,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        class_weights: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if task_type not in TASK_TYPES:
            raise ConfigError(f"task type {task_type!r} is unknown; use one of {TASK_TYPES}")
        self.save_hyperparameters()
        model_cfg = dict(model)
        name = model_cfg.pop("name", None)
        if not name:
            raise ConfigError("model.name is missing; pick a model, e.g. model=resnet18")
        self.model = build_model(
            name,
            in_channels=in_channels,
            num_classes=num_outputs(task_type, num_classes),
            **model_cfg,
        )
        self.task_type, self.num_classes = task_type, num_classes
        self.criterion = build_loss(task_type, num_classes, class_weights)
        # A fresh optimizer now validates lr & co. before any data is touched.
        build_optimizer([nn.Parameter(torch.zeros(1))], optimizer or {})
        self.val_metrics = ClassificationMetrics(task_type, num_classes, threshold)
        self.test_metrics = ClassificationMetrics(task_type, num_classes, threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The configured loss, with targets shaped for it."""
        if self.task_type == BINARY:
            return self.criterion(logits.reshape(-1), y.float().reshape(-1))
        if self.task_type == MULTILABEL:
            return self.criterion(logits, y.float())
        return self.criterion(logits, y.long())

    def _shared_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return logits, y, self.loss(logits, y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        _, y, loss = self._shared_step(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); lower optimizer.lr or check "
                "the inputs. The last good checkpoint is kept."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits, y, loss = self._shared_step(batch)
        self.val_metrics.update(logits_to_probs(logits, self.task_type), y)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        logits, y, loss = self._shared_step(batch)
        self.test_metrics.update(logits_to_probs(logits, self.task_type), y)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(y), sync_dist=True)

    def _log_metrics(self, metric: ClassificationMetrics, prefix: str) -> None:
        values = metric.compute()
        for key in ("accuracy", "f1", "roc_auc"):
            self.log(f"{prefix}/{key}", values[key], prog_bar=key == "roc_auc", sync_dist=False)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def predict_step(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return {"logits": logits, "probs": logits_to_probs(logits, self.task_type), "target": y}

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.parameters(), self.hparams.optimizer or {})
        scheduler = build_scheduler(
            optimizer,
            self.hparams.scheduler,
            max_epochs=int(self.trainer.max_epochs or 1),
            total_steps=int(self.trainer.estimated_stepping_batches),
        )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def balanced_class_weights(labels: Any, num_classes: int) -> list[float]:
    """sklearn's 'balanced' weights n / (k * count_c) from the training labels."""
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes).astype(float)
    if (counts == 0).any():
        raise ConfigError("task.class_weights=balanced: a class has no training sample")
    return (counts.sum() / (num_classes * counts)).tolist()


def build(cfg: DictConfig, dm: L.LightningDataModule) -> ClassificationTask:
    """The LightningModule for ``cfg`` and the DataModule's task type / classes / channels."""
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    assert isinstance(task_cfg, dict)
    weights = task_cfg.get("class_weights")
    if weights == "balanced":
        dm.setup("fit")
        weights = balanced_class_weights(dm.datasets["train"].labels, dm.num_classes)
    elif isinstance(weights, str):
        raise ConfigError(f"task.class_weights={weights!r}: use null, balanced, or a list")
    return ClassificationTask(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        task_type=dm.task_type,
        num_classes=dm.num_classes,
        in_channels=dm.channels,
        optimizer=task_cfg.get("optimizer"),
        scheduler=task_cfg.get("scheduler"),
        class_weights=weights,
        class_names=list(dm.class_names),
        threshold=float(task_cfg.get("threshold", 0.5)),
    )


TASK_CLASS = ClassificationTask
