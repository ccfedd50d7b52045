"""Grad-CAM overlays (the ``grad-cam`` package) for N test images per class, right and wrong.

For each class ``c`` the report picks up to ``per_class`` *correct* predictions (true ``c``,
predicted ``c``; the most confident first) and up to ``per_class`` *wrong* ones (true ``c``,
predicted otherwise; the most confidently wrong first), and explains the **predicted** class, so
a wrong case shows what the network looked at when it went wrong. For multi-label tasks label
``c`` is explained, and "wrong" means label ``c`` was predicted differently from the truth.

The target layer is found automatically for any registered model: the module that produces the
last spatial feature map (4-D output larger than 1x1, called once per forward) in a dry run,
which is ``layer4`` for ResNets, the conv stack for the seed CNN / LeNet-5, and the final
feature block for timm backbones (``bn2`` for EfficientNet, ``features`` for DenseNet). Set
``task.evaluation.gradcam.target_layer`` (a dotted module name inside the task, e.g.
``model.layer3``) to override. The task itself is explained (not ``task.model``), so any input
re-normalisation in its ``forward`` is included.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medpipe.errors import ConfigError
from medpipe.evaluation.metrics import BINARY, MULTILABEL
from medpipe.io import atomic_path

log = logging.getLogger(__name__)

OVERLAY_MIN_SIZE = 112  # small (28 px) images are upscaled so the overlay is readable


def find_target_layer(model: nn.Module, example: torch.Tensor) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` producing the last spatial feature map of ``model(example)``."""
    order: list[nn.Module] = []
    calls: dict[nn.Module, int] = {}

    def hook(module: nn.Module, _inp: Any, out: Any) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
            order.append(module)

    names = {m: n for n, m in model.named_modules() if n}
    handles = [m.register_forward_hook(hook) for m in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # A module called twice per forward (e.g. a shared ReLU) would give Grad-CAM two maps.
    once = [m for m in order if calls[m] == 1]
    if not once:
        raise ConfigError(
            f"Grad-CAM: {type(model).__name__} produces no spatial feature map larger than 1x1 "
            f"for {tuple(example.shape[-2:])} inputs; set task.evaluation.gradcam.target_layer to a "
            "module name (see model.named_modules()) or task.evaluation.gradcam.per_class=0"
        )
    return names[once[-1]], once[-1]


def named_layer(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with a ConfigError naming the option."""
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ConfigError(
            f"task.evaluation.gradcam.target_layer={name!r} is not a module of "
            f"{type(model).__name__}; pick one of its named_modules(), or null for automatic"
        ) from exc


@dataclass(frozen=True)
class Example:
    """One test image chosen for an explanation."""

    index: int  # position in the test split
    cls: int  # the class (or label) this example stands for
    correct: bool
    true: int
    pred: int
    score: float  # probability of the explained class


def select_examples(
    probs: torch.Tensor,
    target: torch.Tensor,
    task_type: str,
    num_classes: int,
    per_class: int,
    threshold: float = 0.5,
) -> list[Example]:
    """Up to ``per_class`` correct and ``per_class`` wrong examples per class (see module doc)."""
    out: list[Example] = []
    if per_class <= 0:
        return out
    if task_type == MULTILABEL:
        pred_ml = (probs > threshold).long()
        for c in range(num_classes):
            p, t = probs[:, c], target[:, c].long()
            for correct, mask in (
                (True, (t == 1) & (pred_ml[:, c] == 1)),
                (False, pred_ml[:, c] != t),
            ):
                idx = torch.nonzero(mask).reshape(-1)
                # correct: most confident first; wrong: farthest from the threshold first
                key = p[idx] if correct else (p[idx] - threshold).abs()
                order = idx[torch.argsort(key, descending=True, stable=True)]
                for i in order[:per_class].tolist():
                    out.append(Example(i, c, correct, int(t[i]), int(pred_ml[i, c]), float(p[i])))
        return out
    if task_type == BINARY:
        p1 = probs.reshape(-1)
        pred = (p1 > threshold).long()
        pred_score = torch.where(pred == 1, p1, 1 - p1)
    else:
        pred = probs.argmax(dim=1)
        pred_score = probs.max(dim=1).values
    target = target.long().reshape(-1)
    for c in range(num_classes):
        for correct in (True, False):
            mask = (target == c) & ((pred == c) if correct else (pred != c))
            idx = torch.nonzero(mask).reshape(-1)
            order = idx[torch.argsort(pred_score[idx], descending=True, stable=True)]
            for i in order[:per_class].tolist():
                out.append(Example(i, c, correct, c, int(pred[i]), float(pred_score[i])))
    return out


def _cam_targets(examples: Sequence[Example], task_type: str) -> list[Any]:
    from pytorch_grad_cam.utils.model_targets import (
        BinaryClassifierOutputTarget,
        ClassifierOutputTarget,
    )

    if task_type == BINARY:  # one logit: +logit explains class 1, -logit class 0
        return [BinaryClassifierOutputTarget(e.pred) for e in examples]
    if task_type == MULTILABEL:
        return [ClassifierOutputTarget(e.cls) for e in examples]
    return [ClassifierOutputTarget(e.pred) for e in examples]


def compute_cams(
    model: nn.Module, images: torch.Tensor, targets: list[Any], layer: nn.Module
) -> np.ndarray:
    """Grad-CAM maps ``(N, H, W)`` in [0, 1] at the input resolution."""
    from pytorch_grad_cam import GradCAM

    model.eval()
    # An input that requires grad gives the activations a gradient even when every parameter
    # before the target layer is frozen (linear probe).
    images = images.detach().clone().requires_grad_(True)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=images, targets=targets)


def overlay(image: torch.Tensor, cam: np.ndarray) -> np.ndarray:
    """RGB uint8 overlay of ``cam`` on one model input ``(C, H, W)`` (min-max rescaled)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = image.detach().float()
    img = img[:3] if img.shape[0] >= 3 else img[:1].repeat(3, 1, 1)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
    heat = torch.as_tensor(cam, dtype=torch.float32)[None, None]
    size = max(img.shape[-2:])
    if size < OVERLAY_MIN_SIZE:
        scale = OVERLAY_MIN_SIZE / size
        img = nn.functional.interpolate(img[None], scale_factor=scale, mode="bilinear")[0]
        heat = nn.functional.interpolate(heat, scale_factor=scale, mode="bilinear")
    rgb = img.clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)
    return show_cam_on_image(rgb, heat[0, 0].clamp(0, 1).numpy(), use_rgb=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_").lower() or "class"


@dataclass(frozen=True)
class Explanation:
    example: Example
    path: Path
    image: np.ndarray  # RGB uint8 overlay


def explain(
    model: nn.Module,
    dataset: Any,
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    task_type: str,
    class_names: Sequence[str],
    out_dir: Path,
    per_class: int = 2,
    threshold: float = 0.5,
    target_layer: str | None = None,
) -> list[Explanation]:
    """Write one overlay PNG per chosen example under ``out_dir``; returns what was written.

    ``dataset[i]`` must return ``(image tensor, label)`` for test index ``i`` (the order
    ``probs``/``target`` came in). Old PNGs in ``out_dir`` are removed first, so the folder
    always shows this run only.
    """
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    examples = select_examples(probs, target, task_type, len(class_names), per_class, threshold)
    if not examples:
        return []
    images = torch.stack([torch.as_tensor(dataset[e.index][0]).float() for e in examples])
    device = next(model.parameters()).device
    images = images.to(device)
    if target_layer:
        name, layer = target_layer, named_layer(model, target_layer)
    else:
        name, layer = find_target_layer(model, images[:1])
    log.info("Grad-CAM on layer %r for %d test images", name, len(examples))
    cams = compute_cams(model, images, _cam_targets(examples, task_type), layer)
    written: list[Explanation] = []
    counter: dict[tuple[int, bool], int] = {}
    for e, img, cam in zip(examples, images.cpu(), cams, strict=True):
        k = counter[(e.cls, e.correct)] = counter.get((e.cls, e.correct), 0) + 1
        kind = "correct" if e.correct else "wrong"
        path = out_dir / f"{e.cls}_{_slug(class_names[e.cls])}_{kind}_{k}.png"
        rgb = overlay(img, cam)
        with atomic_path(path) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
        written.append(Explanation(e, path, rgb))
    return written
