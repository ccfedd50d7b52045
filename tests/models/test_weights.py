"""Pretrained-weight sources: the offline ImageNet weights, hub errors, checkpoint loading."""

from __future__ import annotations

from types import SimpleNamespace

import huggingface_hub.errors
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from skimage import data as skdata

from medpipe.errors import ConfigError, DataError, MedpipeError
from medpipe.models import weights
from medpipe.models.backbones import build_timm_classifier
from medpipe.models.weights import (
    fetch_state_dict,
    imagenet_normalization,
    implies_imagenet_normalization,
    load_matching_state_dict,
    map_in_order,
)

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def _chelsea_batch() -> torch.Tensor:
    img = torch.from_numpy(np.ascontiguousarray(skdata.chelsea())).permute(2, 0, 1).float() / 255
    img = F.interpolate(img[None], size=(224, 224), mode="bilinear", antialias=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in imagenet_normalization())
    return (img - mean) / std


@pytest.fixture(scope="module")
def chelsea() -> torch.Tensor:
    return _chelsea_batch()


def _top1(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, float]:
    model.eval()
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    p, idx = probs.max(0)
    return int(idx), float(p)


def test_offline_efficientnet_lite0_recognises_a_cat(chelsea: torch.Tensor) -> None:
    model = build_timm_classifier(
        backbone="efficientnet_lite0", in_channels=3, num_classes=1000, pretrained="offline"
    )
    assert model.load_report is not None
    assert model.load_report.backbone_loaded == model.load_report.backbone_total
    assert model.load_report.head_loaded == 2  # ImageNet head kept: 1000 classes asked
    cls, prob = _top1(model, chelsea)
    assert cls in CAT_CLASSES
    assert prob > 0.3


def test_random_weights_do_not_recognise_the_cat(chelsea: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_timm_classifier(backbone="efficientnet_lite0", in_channels=3, num_classes=1000)
    assert model.load_report is None
    cls, prob = _top1(model, chelsea)
    assert not (cls in CAT_CLASSES and prob > 0.3)


def test_offline_state_dict_maps_onto_timm_in_order() -> None:
    sd, origin = fetch_state_dict("offline", "efficientnet_lite0")
    ref = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert list(sd) == list(ref)
    assert all(sd[k].shape == ref[k].shape for k in ref)
    assert "offline" in origin


def test_map_in_order_rejects_wrong_count_and_shape() -> None:
    ref = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    with pytest.raises(DataError, match="has 1 tensors"):
        map_in_order({"x.weight": torch.zeros(2, 3)}, ref, origin="f.pth")
    with pytest.raises(DataError, match=r"f\.pth"):
        map_in_order({"x.weight": torch.zeros(3, 2), "x.bias": torch.zeros(2)}, ref, origin="f.pth")
    with pytest.raises(DataError, match="does not match"):  # same shapes, swapped kinds
        map_in_order({"x.bias": torch.zeros(2, 3), "x.weight": torch.zeros(2)}, ref, origin="f")
    out = map_in_order({"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}, ref, origin="f")
    assert list(out) == ["a.weight", "a.bias"]


def test_offline_only_for_efficientnet_lite0() -> None:
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        fetch_state_dict("offline", "resnet18")


def test_hub_unreachable_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = timm.create_model

    def fake(name: str, pretrained: bool = False, **kw: object) -> torch.nn.Module:
        if pretrained:
            raise huggingface_hub.errors.LocalEntryNotFoundError("cannot find the requested files")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", fake)
    with pytest.raises(MedpipeError) as err:
        build_timm_classifier(
            backbone="efficientnet_lite0", in_channels=1, num_classes=2, pretrained="imagenet"
        )
    msg = str(err.value)
    assert "could not fetch" in msg and "model.pretrained=offline" in msg and "null" in msg
    with pytest.raises(MedpipeError, match="checkpoint"):
        fetch_state_dict("hub", "resnet18")


def test_hub_weights_are_loaded_when_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    real = timm.create_model
    torch.manual_seed(1)
    cached = real("resnet18", pretrained=False)

    def fake(name: str, pretrained: bool = False, **kw: object) -> torch.nn.Module:
        return cached if pretrained else real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", fake)
    model = build_timm_classifier(
        backbone="resnet18", in_channels=3, num_classes=4, pretrained="hub"
    )
    assert torch.equal(model.net.layer4[1].conv2.weight, cached.layer4[1].conv2.weight)
    assert model.load_report is not None and model.load_report.head_skipped == 2
    assert model.uses_imagenet_normalization


@pytest.mark.parametrize("layout", ["plain", "lightning"])
def test_checkpoint_loads_backbone_and_skips_other_head(layout: str, tmp_path) -> None:
    torch.manual_seed(0)
    src = build_timm_classifier(backbone="resnet18", in_channels=1, num_classes=3)
    if layout == "plain":
        payload: dict = src.net.state_dict()
    else:  # as saved by a LightningModule holding the classifier as ``self.model``
        payload = {
            "epoch": 3,
            # not allow-listed by torch.load(weights_only=True): exercises the trusted fallback
            "hyper_parameters": SimpleNamespace(lr=0.1),
            "state_dict": {f"model.{k}": v for k, v in src.state_dict().items()},
        }
    path = tmp_path / "run.ckpt"
    torch.save(payload, path)

    torch.manual_seed(1)
    dst = build_timm_classifier(backbone="resnet18", in_channels=1, num_classes=5, pretrained=path)
    report = dst.load_report
    assert report is not None
    assert report.head_loaded == 0 and report.head_skipped == 2
    assert report.backbone_loaded == report.backbone_total
    assert not report.stem_adapted  # the 1-channel stem is taken as is
    src_sd, dst_sd = src.net.state_dict(), dst.net.state_dict()
    for key, value in dst_sd.items():
        if key.startswith("fc."):
            assert value.shape[0] == 5
        else:
            assert torch.equal(value, src_sd[key]), key


def test_checkpoint_with_same_classes_loads_head(tmp_path) -> None:
    src = build_timm_classifier(backbone="resnet18", in_channels=3, num_classes=3)
    path = tmp_path / "m.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = build_timm_classifier(backbone="resnet18", in_channels=3, num_classes=3, pretrained=path)
    assert torch.equal(dst.head.weight, src.head.weight)
    assert dst.load_report is not None and dst.load_report.head_loaded == 2


def test_checkpoint_of_another_architecture_is_refused(tmp_path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(DataError, match=r"resnet\.pt"):
        build_timm_classifier(
            backbone="efficientnet_lite0", in_channels=3, num_classes=2, pretrained=str(path)
        )


def test_too_few_matching_tensors_raise() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    partial = {"0.weight": torch.zeros(2, 2), "model.1.weight": torch.zeros(2, 2)}
    with pytest.raises(DataError, match="only 2 of"):
        load_matching_state_dict(net, partial, origin="x.ckpt")
    more = {**partial, "0.bias": torch.zeros(2), "backbone.1.bias": torch.ones(2)}
    report = load_matching_state_dict(net, more, origin="x.ckpt", head_name="2")
    assert report.backbone_loaded == 4 and torch.equal(net[1].bias, torch.ones(2))


def test_missing_file_and_unknown_source(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        fetch_state_dict(str(tmp_path / "nope.ckpt"), "resnet18")
    with pytest.raises(ConfigError, match="imagenet"):
        fetch_state_dict("imagenett", "resnet18")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"bad\.ckpt"):
        fetch_state_dict(str(bad), "resnet18")


def test_normalization_rules(tmp_path) -> None:
    mean, std = imagenet_normalization()
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx(
        (0.229, 0.224, 0.225)
    )
    assert implies_imagenet_normalization("imagenet")
    assert implies_imagenet_normalization("HUB")
    assert implies_imagenet_normalization("offline")
    assert not implies_imagenet_normalization(None)
    assert not implies_imagenet_normalization("null")
    assert not implies_imagenet_normalization(str(tmp_path / "x.ckpt"))
    assert "offline" in weights.available_sources()
