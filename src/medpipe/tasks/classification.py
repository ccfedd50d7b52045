"""ClassificationTask: loss, metrics and optimisation around any registered model.

The task never imports a concrete model: it builds ``model.name`` through the registry. The loss
follows the dataset's task type (cross-entropy for multi-class/ordinal, BCE-with-logits for binary
and multi-label) with optional class weights.

Transfer learning (models offering a backbone/head split, e.g. ``model.name=timm``) follows
``model.finetune``: ``linear_probe`` optimises the head only (backbone frozen, its BatchNorm in
eval mode), ``finetune`` trains everything with the backbone at ``lr * model.backbone_lr_mult``,
and ``gradual`` adds a :class:`~medpipe.models.finetuning.GradualUnfreeze` callback through
``configure_callbacks`` that unfreezes the backbone at ``model.unfreeze_at_epoch``. For
ImageNet-pretrained weights :func:`build` makes the task re-normalise its inputs from the
DataModule's mean/std to ImageNet's, inside ``forward``, so the checkpoint, ``evaluate``,
``predict`` and exported models all see what the weights expect.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer

from medpipe.errors import ConfigError
from medpipe.evaluation.metrics import (
    BINARY,
    MULTILABEL,
    ClassificationMetrics,
    logits_to_probs,
    num_outputs,
)
from medpipe.models.finetuning import GradualUnfreeze, finetune_param_groups
from medpipe.models.registry import build_model
from medpipe.models.weights import imagenet_normalization, implies_imagenet_normalization
from medpipe.tasks.factory import recorded_input_size
from medpipe.tasks.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

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


def renormalization(
    from_mean: Sequence[float],
    from_std: Sequence[float],
    to_mean: Sequence[float],
    to_std: Sequence[float],
    channels: int,
) -> dict[str, list[float]]:
    """Per-channel ``scale``/``shift`` so that ``x * scale + shift`` re-normalises a batch.

    ``x = (p - from_mean) / from_std`` becomes ``(p - to_mean) / to_std``. A 1-channel input
    gets the mean of the RGB statistics (its stem sums the RGB weights, so a grey image behaves
    like the same grey replicated to RGB); other channel counts cycle through them.
    """

    def per_channel(values: Sequence[float]) -> list[float]:
        values = [float(v) for v in values]
        if len(values) == channels:
            return values
        if channels == 1:
            return [sum(values) / len(values)]
        return [values[i % len(values)] for i in range(channels)]

    fm, fs = per_channel(from_mean), per_channel(from_std)
    tm, ts = per_channel(to_mean), per_channel(to_std)
    return {
        "scale": [f / t for f, t in zip(fs, ts, strict=True)],
        "shift": [(m - n) / t for m, n, t in zip(fm, tm, ts, strict=True)],
    }


class ScheduledGradualUnfreeze(GradualUnfreeze):
    """:class:`GradualUnfreeze` that also gives the new backbone group its scheduler's keys.

    Schedulers such as OneCycleLR keep per-group state in the group itself (``max_lr``,
    ``min_lr``, momentum bounds); a group added mid-training lacks them and the next step would
    fail. They are copied from the head group, learning rates scaled by ``backbone_lr_mult``.
    """

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        before = len(optimizer.param_groups)
        super().finetune_function(pl_module, epoch, optimizer)
        if len(optimizer.param_groups) == before:
            return
        first, new = optimizer.param_groups[0], optimizer.param_groups[-1]
        for key, value in first.items():
            if key in new or key == "params":
                continue
            is_lr = key.endswith("_lr") and isinstance(value, float)
            new[key] = value * self.backbone_lr_mult if is_lr else value


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
        input_renorm: Mapping[str, Sequence[float]] | None = None,
        input_size: int | None = None,
    ) -> None:
        # input_size (data.size at training) is only recorded, in the checkpoint's hparams, so
        # that `medpipe export` knows the input shape without being told.
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
        # Transfer-learning options the model carries (TimmClassifier; None for other models).
        self.finetune_mode: str | None = getattr(self.model, "finetune_mode", None)
        self.renorm = input_renorm is not None
        if input_renorm is not None:
            shape = (1, in_channels, 1, 1)
            for key in ("scale", "shift"):
                values = torch.as_tensor(list(input_renorm[key]), dtype=torch.float32)
                if values.numel() != in_channels:
                    raise ConfigError(
                        f"input re-normalisation needs {in_channels} {key} values, got "
                        f"{values.numel()}"
                    )
                # Not persistent: recomputed from the hyper-parameters on load.
                self.register_buffer(f"input_{key}", values.view(shape), persistent=False)

    def set_class_weights(self, class_weights: Sequence[float] | None) -> None:
        """Replace the loss weights (``balanced`` ones are known only once data is read).

        Recorded in the hyper-parameters, so a checkpoint rebuilds the same loss.
        """
        self.criterion = build_loss(self.task_type, self.num_classes, class_weights)
        self.hparams["class_weights"] = None if class_weights is None else list(class_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renorm:
            x = x * self.input_scale + self.input_shift
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

    def _backbone_lr_mult(self) -> float:
        mult = getattr(self.model, "backbone_lr_mult", None)
        return 0.1 if mult is None else float(mult)

    def configure_callbacks(self) -> list[Callback]:
        """``model.finetune=gradual`` brings its unfreezing callback along with the model."""
        if self.finetune_mode != "gradual":
            return []
        at = getattr(self.model, "unfreeze_at_epoch", None)
        return [ScheduledGradualUnfreeze(1 if at is None else int(at), self._backbone_lr_mult())]

    def configure_optimizers(self) -> Any:
        opt_cfg = dict(self.hparams.optimizer or {})
        if self.finetune_mode is not None:
            # Head at lr, backbone at lr * backbone_lr_mult; frozen parameters left out (a linear
            # probe, or a gradual run before unfreezing, optimises the head only).
            params: Any = finetune_param_groups(
                self.model, float(opt_cfg.get("lr", 1e-3)), self._backbone_lr_mult()
            )
        else:
            params = self.parameters()
        optimizer = build_optimizer(params, opt_cfg)
        scheduler = build_scheduler(
            optimizer,
            self.hparams.scheduler,
            max_epochs=int(self.trainer.max_epochs or 1),
            total_steps=int(self.trainer.estimated_stepping_batches),
        )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def balanced_class_weights(labels: Any, num_classes: int, task_type: str = "") -> list[float]:
    """``task.class_weights=balanced`` from the training labels.

    Single-label tasks: sklearn's 'balanced' weights n / (k * count_c). Multi-label: one
    BCE ``pos_weight`` per label, negatives / positives, which balances each label's two classes
    the same way (a label without positives or negatives keeps weight 1).
    """
    labels = np.asarray(labels)
    if task_type == MULTILABEL:
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise ConfigError(
                f"task.class_weights=balanced: multi-label targets must be (N, {num_classes}), "
                f"got {labels.shape}"
            )
        pos = labels.sum(axis=0).astype(float)
        neg = len(labels) - pos
        return np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0).tolist()
    counts = np.bincount(labels.reshape(-1), minlength=num_classes).astype(float)
    if len(counts) != num_classes:
        raise ConfigError(
            f"task.class_weights=balanced: labels go up to {len(counts) - 1}, but the data has "
            f"{num_classes} classes"
        )
    if (counts == 0).any():
        missing = [int(c) for c in np.flatnonzero(counts == 0)]
        raise ConfigError(
            f"task.class_weights=balanced: class(es) {missing} have no training sample; "
            "set task.class_weights=null or give explicit weights"
        )
    return (counts.sum() / (num_classes * counts)).tolist()


def build(cfg: DictConfig, dm: L.LightningDataModule) -> ClassificationTask:
    """The LightningModule for ``cfg`` and the DataModule's task type / classes / channels."""
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    assert isinstance(task_cfg, dict)
    weights = task_cfg.get("class_weights")
    balanced = weights == "balanced"
    if isinstance(weights, str) and not balanced:
        raise ConfigError(f"task.class_weights={weights!r}: use null, balanced, or a list")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(model_cfg, dict)
    # Built before any data is read, so a bad model/optimizer value fails first; "balanced"
    # weights need the training labels and are set afterwards.
    task = ClassificationTask(
        model=model_cfg,
        task_type=dm.task_type,
        num_classes=dm.num_classes,
        in_channels=dm.channels,
        optimizer=task_cfg.get("optimizer"),
        scheduler=task_cfg.get("scheduler"),
        class_weights=None if balanced else weights,
        class_names=list(dm.class_names),
        threshold=float(task_cfg.get("threshold", 0.5)),
        input_renorm=imagenet_renorm(model_cfg, dm),
        input_size=recorded_input_size(cfg),
    )
    if balanced:
        dm.setup("fit")
        labels = dm.datasets["train"].labels
        task.set_class_weights(balanced_class_weights(labels, dm.num_classes, dm.task_type))
    return task


def imagenet_renorm(
    model_cfg: Mapping[str, Any], dm: L.LightningDataModule
) -> dict[str, list[float]] | None:
    """Re-normalisation to ImageNet statistics when ``model.pretrained`` is ImageNet weights.

    The DataModule normalises with its own ``mean``/``std`` (0.5 by default); ImageNet weights
    expect ImageNet's, so the task converts. ``None`` for random init or a pipeline checkpoint
    (whose run already used this data's normalisation).
    """
    if not implies_imagenet_normalization(model_cfg.get("pretrained")):
        return None
    mean, std = getattr(dm, "mean", None), getattr(dm, "std", None)
    if mean is None or std is None:
        raise ConfigError(
            f"model.pretrained={model_cfg.get('pretrained')!r} needs ImageNet normalisation, but "
            f"the DataModule {type(dm).__name__} exposes no mean/std to convert from"
        )
    to_mean, to_std = imagenet_normalization()
    renorm = renormalization(mean, std, to_mean, to_std, int(dm.channels))
    log.info(
        "ImageNet-pretrained backbone: inputs re-normalised from data mean/std %s/%s to ImageNet's",
        list(mean),
        list(std),
    )
    return renorm


TASK_CLASS = ClassificationTask
