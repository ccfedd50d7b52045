"""Output shapes of the classification models for 1/3 channels at 28 and 64 px."""

from __future__ import annotations

import pytest
import torch

from medpipe.errors import ConfigError
from medpipe.models.registry import build_model, list_models


@pytest.mark.parametrize("name", ["cnn", "lenet5", "resnet18", "resnet50"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 64])
def test_output_shapes(name, channels, size):
    model = build_model(name, in_channels=channels, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 5)


def test_small_input_stem_keeps_spatial_resolution():
    small = build_model("resnet18", in_channels=1, num_classes=2, small_input=True)
    std = build_model("resnet18", in_channels=1, num_classes=2, small_input=False)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert std.conv1.kernel_size == (7, 7) and std.conv1.stride == (2, 2)
    feats = {}
    small.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("small", o.shape))
    std.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("std", o.shape))
    x = torch.randn(1, 1, 28, 28)
    small.eval()(x)
    std.eval()(x)
    assert feats["small"][-1] == 4 and feats["std"][-1] == 1


def test_timm_source_and_registry_listing():
    model = build_model("resnet18", in_channels=1, num_classes=3, source="timm")
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    assert {"cnn", "lenet5", "resnet18", "resnet50"} <= set(list_models())


def test_bad_model_config():
    with pytest.raises(ConfigError, match="model.name='resnet99'"):
        build_model("resnet99", in_channels=1, num_classes=2)
    with pytest.raises(ConfigError, match="model.source"):
        build_model("resnet18", in_channels=1, num_classes=2, source="keras")
    with pytest.raises(ConfigError, match="model.dropout"):
        build_model("cnn", in_channels=1, num_classes=2, dropout=1.5)
