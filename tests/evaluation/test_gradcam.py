"""Grad-CAM: a target layer for every registered classifier, example selection, real overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medpipe.errors import ConfigError
from medpipe.evaluation import gradcam
from medpipe.tasks.classification import ClassificationTask


@pytest.mark.parametrize(
    ("model", "channels", "size", "expected"),
    [
        ({"name": "cnn"}, 1, 28, "model.features"),
        ({"name": "lenet5"}, 1, 28, "model.features"),
        ({"name": "resnet18", "small_input": True}, 1, 28, "model.layer4"),
        ({"name": "resnet18", "small_input": False}, 3, 64, "model.layer4"),
        ({"name": "resnet50", "source": "timm"}, 3, 28, "model.layer4"),
        ({"name": "timm", "backbone": "efficientnet_lite0"}, 3, 64, "model.net.bn2"),
    ],
)
def test_target_layer_found_for_registered_models(model, channels, size, expected):
    task = ClassificationTask(
        model=model, task_type="multi-class", num_classes=3, in_channels=channels
    ).eval()
    x = torch.randn(2, channels, size, size)
    name, layer = gradcam.find_target_layer(task, x)
    assert name == expected
    cams = gradcam.compute_cams(
        task, x, gradcam._cam_targets([_ex(0, 0, True, 0, 1)] * 2, "multi-class"), layer
    )
    assert cams.shape == (2, size, size)
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6


def _ex(index, cls, correct, true, pred, score=0.9):
    return gradcam.Example(index, cls, correct, true, pred, score)


class BlobDetector(nn.Module):
    """Conv -> ReLU -> global max-pool -> linear: the evidence for class 1 is a bright blob."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.fill_(1.0 / 9)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(1, 1)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.fill_(-0.5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_cam_points_at_the_evidence():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 4:10, 20:26] = 1.0  # blob in the top-right corner
    model = BlobDetector().eval()
    _, layer = gradcam.find_target_layer(model, x)
    cam = gradcam.compute_cams(
        model, x, gradcam._cam_targets([_ex(0, 1, True, 1, 1)], "binary-class"), layer
    )[0]
    r, c = np.unravel_index(cam.argmax(), cam.shape)
    assert 3 <= r <= 10 and 19 <= c <= 26
    assert cam[20:, :16].max() < 0.1 * cam.max()


def test_frozen_backbone_still_gets_cams():
    task = ClassificationTask(
        model={"name": "cnn", "channels": [4, 8]},
        task_type="binary-class",
        num_classes=2,
        in_channels=1,
    ).eval()
    for p in task.parameters():
        p.requires_grad_(False)
    x = torch.rand(2, 1, 28, 28)
    _, layer = gradcam.find_target_layer(task, x)
    targets = gradcam._cam_targets([_ex(0, 0, True, 0, 0), _ex(1, 1, False, 1, 0)], "binary-class")
    cams = gradcam.compute_cams(task, x, targets, layer)
    assert cams.shape == (2, 28, 28)


def test_select_examples_correct_and_wrong_most_confident_first():
    probs = torch.tensor(
        [
            [0.9, 0.1, 0.0],
            [0.6, 0.3, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.1, 0.8],
            [0.95, 0.05, 0.0],
            [0.3, 0.3, 0.4],
        ]
    )
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    ex = gradcam.select_examples(probs, target, "multi-class", 3, per_class=1)
    got = {(e.cls, e.correct): (e.index, e.pred) for e in ex}
    assert got == {
        (0, True): (0, 0),  # 0.9 beats 0.6
        (0, False): (2, 1),
        (1, False): (4, 0),  # 0.95 beats 0.8: the most confidently wrong first
        (2, True): (5, 2),
    }
    assert len(gradcam.select_examples(probs, target, "multi-class", 3, per_class=0)) == 0


def test_select_examples_binary_and_multilabel():
    p = torch.tensor([0.9, 0.2, 0.6, 0.1, 0.45])
    t = torch.tensor([1, 1, 0, 0, 1])
    ex = gradcam.select_examples(p, t, "binary-class", 2, per_class=2)
    got = {(e.cls, e.correct, e.index, e.pred) for e in ex}
    assert got == {
        (0, True, 3, 0),
        (0, False, 2, 1),
        (1, True, 0, 1),
        (1, False, 1, 0),
        (1, False, 4, 0),
    }
    ml = gradcam.select_examples(
        torch.tensor([[0.9, 0.2], [0.1, 0.8]]), torch.tensor([[1, 1], [0, 1]]), "multi-label", 2, 1
    )
    assert {(e.cls, e.correct, e.index) for e in ml} == {(0, True, 0), (1, True, 1), (1, False, 0)}


def test_explain_writes_overlays(tmp_path):
    task = ClassificationTask(
        model={"name": "cnn", "channels": [4, 8]},
        task_type="binary-class",
        num_classes=2,
        in_channels=1,
    ).eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(1, 28, 28, generator=g), torch.tensor(i % 2)) for i in range(8)]
    probs = torch.tensor([0.8, 0.7, 0.3, 0.9, 0.2, 0.1, 0.6, 0.4])
    target = torch.tensor([d[1] for d in data])
    (tmp_path / "stale.png").write_bytes(b"old")
    out = gradcam.explain(
        task,
        data,
        probs,
        target,
        task_type="binary-class",
        class_names=["normal", "pneumonia"],
        out_dir=tmp_path,
        per_class=2,
    )
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "stale.png" not in names
    assert names == sorted(e.path.name for e in out)
    assert {"0_normal_correct_1.png", "0_normal_wrong_1.png", "1_pneumonia_correct_1.png"} <= set(
        names
    )
    img = Image.open(out[0].path)
    assert img.mode == "RGB" and img.size == (112, 112)  # 28 px upscaled for readability


def test_bad_target_layer_names_the_option():
    task = ClassificationTask(
        model={"name": "cnn"}, task_type="binary-class", num_classes=2, in_channels=1
    )
    with pytest.raises(ConfigError, match="gradcam.target_layer='model.nope'"):
        gradcam.named_layer(task, "model.nope")
    flat = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="gradcam.target_layer"):
        gradcam.find_target_layer(flat, torch.randn(1, 1, 2, 2))
