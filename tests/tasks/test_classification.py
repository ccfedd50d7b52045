"""ClassificationTask: loss selection, config validation, and a short real fit whose loss falls."""

from __future__ import annotations

import shutil

import lightning as L
import pytest
import torch
from torch import nn

from medpipe.data.medmnist import MedMNISTDataModule
from medpipe.errors import ConfigError
from medpipe.tasks.classification import (
    ClassificationTask,
    balanced_class_weights,
    build,
    build_loss,
)


def _task(task_type="binary-class", num_classes=2, **kw) -> ClassificationTask:
    defaults = {"model": {"name": "cnn", "channels": [8, 16]}, "in_channels": 1}
    return ClassificationTask(task_type=task_type, num_classes=num_classes, **{**defaults, **kw})


def test_loss_follows_task_type():
    assert isinstance(build_loss("binary-class", 2, None), nn.BCEWithLogitsLoss)
    assert isinstance(build_loss("multi-label", 14, None), nn.BCEWithLogitsLoss)
    assert isinstance(build_loss("multi-class", 7, None), nn.CrossEntropyLoss)
    assert isinstance(build_loss("ordinal-regression", 5, None), nn.CrossEntropyLoss)
    weighted = build_loss("binary-class", 2, [1.0, 3.0])
    assert float(weighted.pos_weight) == pytest.approx(3.0)
    ce = build_loss("multi-class", 3, [1.0, 2.0, 0.5])
    assert ce.weight.tolist() == [1.0, 2.0, 0.5]


def test_binary_model_has_one_logit_and_multiclass_has_k():
    assert _task().model(torch.randn(2, 1, 28, 28)).shape == (2, 1)
    assert _task("multi-class", 7).model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_bad_config_values():
    with pytest.raises(ConfigError, match="optimizer.lr=-0.1"):
        _task(optimizer={"name": "adamw", "lr": -0.1})
    with pytest.raises(ConfigError, match="optimizer.name='rmsprop2'"):
        _task(optimizer={"name": "rmsprop2", "lr": 0.1})
    with pytest.raises(ConfigError, match="class_weights needs 2"):
        _task(class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="model.name='vgg99'"):
        _task(model={"name": "vgg99"})


def test_balanced_class_weights_match_sklearn_and_per_label_ratio():
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0, 0, 0, 1, 2, 2, 0, 1, 0, 0])
    want = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert balanced_class_weights(y[:, None], 3, "multi-class") == pytest.approx(want)
    multi = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])  # label 2 has no positives
    assert balanced_class_weights(multi, 3, "multi-label") == pytest.approx([1 / 3, 3.0, 1.0])
    with pytest.raises(ConfigError, match=r"class\(es\) \[1\] have no training sample"):
        balanced_class_weights(np.array([0, 2, 2]), 3, "multi-class")
    with pytest.raises(ConfigError, match="labels go up to 3"):
        balanced_class_weights(np.array([0, 3]), 2, "binary-class")


def test_build_with_balanced_weights_sets_pos_weight(tmp_path, shared_data):
    from omegaconf import OmegaConf

    from medpipe.config import compose

    root = tmp_path / "breastmnist"
    root.mkdir()
    shutil.copyfile(shared_data / "medmnist" / "breastmnist.npz", root / "breastmnist.npz")
    cfg = compose(["data=breastmnist", "model=cnn", f"data.root={root}"])
    assert OmegaConf.select(cfg, "task.class_weights") == "balanced"  # the default
    dm = MedMNISTDataModule(flag="breastmnist", root=root, batch_size=32)
    task = build(cfg, dm)
    y = dm.datasets["train"].labels.reshape(-1)
    # n / (2 n1) over n / (2 n0) = n0 / n1
    assert float(task.criterion.pos_weight) == pytest.approx((y == 0).sum() / (y == 1).sum())
    assert task.hparams.input_size == 28  # data.size, recorded for `medpipe export`
    # the weights are in the hparams, so a checkpoint rebuilds the same loss
    rebuilt = ClassificationTask(**task.hparams)
    assert float(rebuilt.criterion.pos_weight) == pytest.approx(float(task.criterion.pos_weight))


def test_short_real_fit_loss_falls(tmp_path, shared_data):
    root = tmp_path / "breastmnist"
    root.mkdir()
    shutil.copyfile(shared_data / "medmnist" / "breastmnist.npz", root / "breastmnist.npz")
    L.seed_everything(0, workers=True)
    dm = MedMNISTDataModule(flag="breastmnist", root=root, batch_size=32)
    task = _task(
        model={"name": "cnn"}, optimizer={"name": "adamw", "lr": 3e-3}, scheduler={"name": "none"}
    )
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            losses.append(float(trainer.callback_metrics["train/loss_epoch"]))

    trainer = L.Trainer(
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
        num_sanity_val_steps=0,
    )
    trainer.fit(task, datamodule=dm)
    assert len(losses) == 5
    assert losses[-1] < losses[0] * 0.9, losses
    assert 0.0 <= float(trainer.callback_metrics["val/roc_auc"]) <= 1.0


def test_nan_loss_stops_with_step_named():
    task = _task()
    task.trainer = None  # not attached: global_step reads 0
    bad = (torch.full((2, 1, 28, 28), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(FloatingPointError, match="global step 0"):
        task.training_step(bad, 0)
