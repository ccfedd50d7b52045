"""Flip test-time augmentation: logits averaged over the views, the task left as it was."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from medpipe.errors import ConfigError
from medpipe.evaluation import inference, tta
from medpipe.tasks.classification import ClassificationTask


def _task(task_type: str = "multi-class", num_classes: int = 3) -> ClassificationTask:
    torch.manual_seed(0)
    task = ClassificationTask(
        model={"name": "cnn", "channels": [4, 8], "hidden": [8]},
        task_type=task_type,
        num_classes=num_classes,
        in_channels=1,
    )
    return task.eval()


def _loader(n: int = 10, classes: int = 3) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4)


def test_logits_are_the_mean_over_views():
    task = _task()
    x = torch.randn(5, 1, 16, 16)
    wrapped = tta.FlipTTA(task.model, ["horizontal", "vertical", "both"])
    with torch.no_grad():
        expected = (
            task.model(x)
            + task.model(x.flip(-1))
            + task.model(x.flip(-2))
            + task.model(x.flip(-2).flip(-1))
        ) / 4
        assert torch.allclose(wrapped(x), expected, atol=1e-6)


def test_predict_with_flips_equals_manual_average_and_restores_the_model():
    task = _task()
    loader = _loader()
    model = task.model
    plain = inference.predict(task, loader)
    out = tta.predict(task, loader, flips=["horizontal"])
    assert task.model is model, "the task's model must be restored after TTA"
    x = torch.cat([b[0] for b in loader])
    with torch.no_grad():
        manual = (task.model(x) + task.model(x.flip(-1))) / 2
    assert torch.allclose(out["logits"], manual, atol=1e-5)
    assert torch.allclose(out["probs"], torch.softmax(manual, -1), atol=1e-5)
    assert torch.equal(out["target"], plain["target"])
    assert not torch.allclose(out["logits"], plain["logits"])
    assert torch.equal(tta.predict(task, loader, flips=[])["logits"], plain["logits"])


def test_symmetric_images_are_unchanged_by_horizontal_flips():
    task = _task("binary-class", 2)
    x = torch.randn(6, 1, 16, 8)
    x = torch.cat([x, x.flip(-1)], dim=-1)  # mirror-symmetric
    loader = DataLoader(TensorDataset(x, torch.zeros(6, dtype=torch.long)), batch_size=6)
    a = inference.predict(task, loader)["probs"]
    b = tta.predict(task, loader, flips=["horizontal"])["probs"]
    assert torch.allclose(a, b, atol=1e-6)


def test_model_restored_even_when_prediction_fails():
    task = _task()
    model = task.model
    with pytest.raises(RuntimeError), tta.applied(task, ["vertical"]):
        assert isinstance(task.model, tta.FlipTTA)
        raise RuntimeError("boom")
    assert task.model is model


def test_config_parsing():
    cfg = OmegaConf.create({"task": {"evaluation": {"tta": {"flips": ["Horizontal", "both"]}}}})
    assert tta.flips_from_config(cfg) == ("horizontal", "both")
    assert tta.flips_from_config(OmegaConf.create({"task": {}})) == ()
    assert tta.check_flips("vertical") == ("vertical",)
    with pytest.raises(ConfigError, match="tta.flips: 'rotate'"):
        tta.check_flips(["rotate"])
