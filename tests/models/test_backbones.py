"""TimmClassifier construction, input-channel adaptation and the fine-tuning modes."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from timm.models import adapt_input_conv
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from medpipe.errors import ConfigError
from medpipe.models.backbones import TimmClassifier, build_timm_classifier
from medpipe.models.finetuning import (
    GradualUnfreeze,
    finetune_param_groups,
    finetuning_callbacks,
    freeze_backbone,
    set_backbone_bn_eval,
    unfreeze_backbone,
    validate_mode,
)
from medpipe.models.registry import build_model, list_models


@pytest.mark.parametrize(
    ("backbone", "in_channels"), [("resnet18", 1), ("mobilenetv3_large_100", 3)]
)
def test_construction_and_backbone_head_split(backbone: str, in_channels: int) -> None:
    model = build_model("timm", in_channels=in_channels, num_classes=3, backbone=backbone)
    assert isinstance(model, TimmClassifier)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 3)
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    head_ids = {id(p) for p in model.head_parameters()}
    assert backbone_ids.isdisjoint(head_ids)
    assert backbone_ids | head_ids == {id(p) for p in model.parameters()}
    assert model.head.out_features == 3
    assert all(model.head is not m for m in model.backbone_modules())


def test_registry_and_config_errors() -> None:
    assert "timm" in list_models()
    with pytest.raises(ConfigError, match=r"model\.backbone="):
        build_model("timm", in_channels=1, num_classes=2, backbone="resnet1888")
    with pytest.raises(ConfigError, match=r"model\.backbone is required"):
        build_model("timm", in_channels=1, num_classes=2)
    with pytest.raises(ConfigError, match="linear_probe, finetune, gradual"):
        build_model("timm", in_channels=1, num_classes=2, backbone="resnet18", finetune="probe")


def test_registry_offline_build_with_linear_probe() -> None:
    model = build_model(
        "timm",
        in_channels=1,
        num_classes=2,
        backbone="efficientnet_lite0",
        pretrained="offline",
        finetune="linear_probe",
    )
    assert model.finetune_mode == "linear_probe"
    assert model.uses_imagenet_normalization
    assert model.load_report is not None and model.load_report.stem_adapted
    assert all(not p.requires_grad for p in model.backbone_parameters())


def test_fresh_head_starts_near_zero_on_pretrained_features() -> None:
    """timm's own EfficientNet head init (U(-1, 1) for one logit) gives |logit| ~ 10 here."""
    torch.manual_seed(0)
    model = build_model(
        "timm", in_channels=3, num_classes=1, backbone="efficientnet_lite0", pretrained="offline"
    )
    assert float(model.head.weight.std()) < 0.02
    assert torch.count_nonzero(model.head.bias) == 0
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(8, 3, 64, 64))
    assert float(logits.abs().max()) < 1.0
    # the pretrained backbone is untouched: its features are far from zero
    with torch.no_grad():
        features = model.net.forward_head(
            model.net.forward_features(torch.randn(8, 3, 64, 64)), pre_logits=True
        )
    assert float(features.abs().mean()) > 0.05


def test_one_channel_stem_is_rgb_sum_and_matches_replicated_grey() -> None:
    rgb = build_timm_classifier(
        backbone="efficientnet_lite0", in_channels=3, num_classes=1000, pretrained="offline"
    ).eval()
    grey = build_timm_classifier(
        backbone="efficientnet_lite0", in_channels=1, num_classes=1000, pretrained="offline"
    ).eval()
    w3 = rgb.net.conv_stem.weight
    w1 = grey.net.conv_stem.weight
    assert w1.shape == (w3.shape[0], 1, *w3.shape[2:])
    assert torch.allclose(w1, w3.sum(dim=1, keepdim=True))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)

    two = build_timm_classifier(
        backbone="efficientnet_lite0", in_channels=2, num_classes=1000, pretrained="offline"
    )
    assert torch.allclose(two.net.conv_stem.weight, adapt_input_conv(2, w3.detach()))
    with torch.no_grad():
        assert two.eval()(torch.rand(1, 2, 32, 32)).shape == (1, 1000)


def _backbone_bns(model: TimmClassifier) -> list[_BatchNorm]:
    return [
        m for mod in model.backbone_modules() for m in mod.modules() if isinstance(m, _BatchNorm)
    ]


def test_linear_probe_freezes_weights_and_batchnorm_statistics() -> None:
    model = build_timm_classifier(backbone="resnet18", in_channels=1, num_classes=2)
    freeze_backbone(model)
    model.train()
    bns = _backbone_bns(model)
    assert bns and all(not bn.training for bn in bns)
    assert model.head.training
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(4, 1, 32, 32) * 3 + 1)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.head_parameters()}
    groups = model.param_groups(1e-3, 0.1)
    assert [g["name"] for g in groups] == ["head"]
    assert set_backbone_bn_eval(model) == len(bns)

    unfreeze_backbone(model)
    assert all(bn.training for bn in bns)
    assert all(p.requires_grad for p in model.parameters())


def test_finetune_param_groups_lrs() -> None:
    model = build_timm_classifier(backbone="resnet18", in_channels=3, num_classes=2)
    groups = finetune_param_groups(model, 1e-3, backbone_lr_mult=0.1)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == pytest.approx(1e-3)
    assert by_name["backbone"]["lr"] == pytest.approx(1e-4)
    assert len(by_name["head"]["params"]) == 2
    n_params = len(list(model.parameters()))
    assert len(by_name["backbone"]["params"]) + 2 == n_params
    opt = torch.optim.AdamW(groups)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-3])


def test_validate_mode() -> None:
    assert validate_mode("Linear-Probe") == "linear_probe"
    assert validate_mode("gradual") == "gradual"
    with pytest.raises(ConfigError, match="linear_probe, finetune, gradual"):
        validate_mode("full")
    assert finetuning_callbacks("finetune") == []
    assert isinstance(finetuning_callbacks("gradual")[0], GradualUnfreeze)


class _TinyTask(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = build_timm_classifier(backbone="resnet18", in_channels=1, num_classes=2)
        self.lr = 0.05

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(finetune_param_groups(self.model, self.lr, 0.1), lr=self.lr)


class _Snapshots(pl.Callback):
    def __init__(self) -> None:
        self.backbone: list[dict[str, torch.Tensor]] = []
        self.head: list[torch.Tensor] = []
        self.lrs: list[list[float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = pl_module.model
        self.backbone.append(
            {k: v.detach().clone() for k, v in model.net.state_dict().items() if k[:3] != "fc."}
        )
        self.head.append(model.head.weight.detach().clone())
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_gradual_unfreezes_backbone_at_the_given_epoch() -> None:
    torch.manual_seed(0)
    task = _TinyTask()
    initial = {k: v.clone() for k, v in task.model.net.state_dict().items() if k[:3] != "fc."}
    data = TensorDataset(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 0, 1]))
    snaps = _Snapshots()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[GradualUnfreeze(unfreeze_at_epoch=1, backbone_lr_mult=0.1), snaps],
    )
    trainer.fit(task, DataLoader(data, batch_size=4))

    # epoch 0: backbone weights and BN statistics untouched, head trained
    assert all(torch.equal(initial[k], v) for k, v in snaps.backbone[0].items())
    assert snaps.lrs[0] == pytest.approx([0.05])
    # epoch 1: backbone added at lr * mult and trained (weights and BN statistics)
    assert snaps.lrs[1] == pytest.approx([0.05, 0.005])
    changed = [k for k, v in snaps.backbone[1].items() if not torch.equal(snaps.backbone[0][k], v)]
    assert "conv1.weight" in changed and "bn1.running_mean" in changed
    assert not torch.equal(snaps.head[0], snaps.head[1])
    assert all(p.requires_grad for p in task.model.parameters())


def test_gradual_extends_lr_schedulers_to_the_backbone_group() -> None:
    task = _TinyTask()
    callback = GradualUnfreeze(unfreeze_at_epoch=2, backbone_lr_mult=0.1)
    callback.freeze_before_training(task)
    opt = torch.optim.SGD(finetune_param_groups(task.model, 0.1), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch)
    task._trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=sched)])
    callback.finetune_function(task, 1, opt)
    assert len(opt.param_groups) == 1
    callback.finetune_function(task, 2, opt)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.01])
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.005])
    callback.finetune_function(task, 3, opt)  # idempotent
    assert len(opt.param_groups) == 2
