"""Transfer learning in ClassificationTask: modes, ImageNet re-normalisation, weight sources."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from skimage import data as skdata
from torch.utils.data import DataLoader, TensorDataset

from medpipe.models.weights import IMAGENET_MEAN, IMAGENET_STD
from medpipe.tasks.classification import (
    ClassificationTask,
    ScheduledGradualUnfreeze,
    build,
    renormalization,
)

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
TINY = "test_resnet"  # timm's 0.4M-parameter ResNet for tests: same structure, fast on CPU


def _dm(channels: int = 3, num_classes: int = 2, mean=None, std=None) -> SimpleNamespace:
    task_type = "binary-class" if num_classes == 2 else "multi-class"
    return SimpleNamespace(
        task_type=task_type,
        num_classes=num_classes,
        channels=channels,
        mean=mean or (0.5,) * channels,
        std=std or (0.5,) * channels,
        class_names=[str(i) for i in range(num_classes)],
    )


def _cfg(model: dict[str, Any], lr: float = 0.01, scheduler: str = "none") -> Any:
    return OmegaConf.create(
        {
            "model": {"name": "timm", **model},
            "task": {
                "kind": "classification",
                "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.0},
                "scheduler": {"name": scheduler},
                "class_weights": None,
                "threshold": 0.5,
            },
        }
    )


def _trainer(max_epochs: int, callbacks: list | None = None) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
    )


def _loader(channels: int = 1, n: int = 8, size: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, size, size, generator=g)
    return DataLoader(TensorDataset(x, torch.arange(n) % 2), batch_size=4)


def _chelsea_dm_normalised(channels: int = 3) -> torch.Tensor:
    """The cat photo as a DataModule would hand it over: 224 px, (p/255 - 0.5) / 0.5."""
    img = torch.from_numpy(np.ascontiguousarray(skdata.chelsea())).permute(2, 0, 1).float() / 255
    img = F.interpolate(img[None], size=(224, 224), mode="bilinear", antialias=True)
    if channels == 1:
        img = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (img - 0.5) / 0.5


# ------------------------------------------------------------------------ modes


def test_linear_probe_optimises_the_head_only_with_bn_frozen() -> None:
    task = build(_cfg({"backbone": TINY, "finetune": "linear_probe"}), _dm(1))
    assert task.finetune_mode == "linear_probe" and task.configure_callbacks() == []
    task.trainer = SimpleNamespace(max_epochs=1, estimated_stepping_batches=1)  # type: ignore[assignment]
    opt = task.configure_optimizers()
    assert [g["name"] for g in opt.param_groups] == ["head"]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {
        id(p) for p in task.model.head_parameters()
    }
    task.train()
    bns = task.model.backbone_batchnorms()
    assert bns and not any(bn.training for bn in bns)
    backbone = {
        k: v.clone() for k, v in task.model.net.state_dict().items() if not k.startswith("fc.")
    }
    _trainer(1).fit(task, _loader(), _loader())
    after = task.model.net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in backbone.items())  # running stats included


def test_finetune_gives_the_backbone_a_lower_lr() -> None:
    cfg = _cfg({"backbone": TINY, "finetune": "finetune", "backbone_lr_mult": 0.2}, lr=0.05)
    task = build(cfg, _dm(1))
    task.trainer = SimpleNamespace(max_epochs=1, estimated_stepping_batches=1)  # type: ignore[assignment]
    opt = task.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"backbone": 0.01, "head": 0.05})
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len(list(task.parameters()))


def test_no_finetune_mode_keeps_one_group() -> None:
    task = build(_cfg({"backbone": TINY}), _dm(3))
    task.trainer = SimpleNamespace(max_epochs=1, estimated_stepping_batches=1)  # type: ignore[assignment]
    assert len(task.configure_optimizers().param_groups) == 1
    assert task.finetune_mode is None and not task.renorm


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_gradual_unfreezes_at_the_configured_epoch(scheduler: str) -> None:
    cfg = _cfg(
        {"backbone": TINY, "finetune": "gradual", "unfreeze_at_epoch": 1,
         "backbone_lr_mult": 0.1},
        lr=0.01,
        scheduler=scheduler,
    )  # fmt: skip
    task = build(cfg, _dm(1))
    (callback,) = task.configure_callbacks()
    assert isinstance(callback, ScheduledGradualUnfreeze) and callback.unfreeze_at_epoch == 1
    initial = {
        k: v.clone() for k, v in task.model.net.state_dict().items() if not k.startswith("fc.")
    }
    seen: list[dict[str, Any]] = []

    class Snap(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            sd = pl_module.model.net.state_dict()
            seen.append(
                {
                    "same": all(torch.equal(initial[k], sd[k]) for k in initial),
                    "groups": [g.get("name") for g in trainer.optimizers[0].param_groups],
                }
            )

    _trainer(2, [Snap()]).fit(task, _loader(n=4), _loader(n=4))  # steps past the unfreeze
    assert seen[0] == {"same": True, "groups": ["head"]}
    assert seen[1]["same"] is False and seen[1]["groups"] == ["head", "backbone"]
    assert all(p.requires_grad for p in task.parameters())


# ------------------------------------------------------------------------ normalisation


def test_renormalization_maths() -> None:
    r = renormalization((0.5,) * 3, (0.5,) * 3, IMAGENET_MEAN, IMAGENET_STD, 3)
    p = torch.rand(3)
    x = (p - 0.5) / 0.5
    want = (p - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    got = x * torch.tensor(r["scale"]) + torch.tensor(r["shift"])
    torch.testing.assert_close(got, want)
    grey = renormalization((0.5,), (0.5,), IMAGENET_MEAN, IMAGENET_STD, 1)
    assert grey["scale"] == pytest.approx([0.5 / np.mean(IMAGENET_STD)])


def test_imagenet_weights_are_fed_imagenet_normalised_inputs() -> None:
    """The cat photo, normalised the DataModule's way, is still a cat: build() re-normalises."""
    cfg = _cfg({"backbone": "efficientnet_lite0", "pretrained": "offline"})
    task = build(cfg, _dm(3, num_classes=1000)).eval()
    assert task.renorm
    x = _chelsea_dm_normalised()
    with torch.no_grad():
        probs = task(x).softmax(-1)[0]
    assert int(probs.argmax()) in CAT_CLASSES and float(probs.max()) > 0.3
    imagenet = (x * 0.5 + 0.5 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(task(x), task.model(imagenet), atol=1e-4, rtol=1e-4)


def test_grey_input_with_imagenet_weights_is_still_a_cat() -> None:
    cfg = _cfg({"backbone": "efficientnet_lite0", "pretrained": "offline"})
    task = build(cfg, _dm(1, num_classes=1000)).eval()
    with torch.no_grad():
        top = int(task(_chelsea_dm_normalised(1)).argmax())
    assert top in CAT_CLASSES


def test_renormalisation_survives_a_checkpoint(tmp_path) -> None:
    cfg = _cfg({"backbone": "efficientnet_lite0", "pretrained": "offline", "finetune": "finetune"})
    task = build(cfg, _dm(1))
    path = tmp_path / "t.ckpt"
    # what ModelCheckpoint writes, minus the trainer state
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    loaded = ClassificationTask.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    assert loaded.renorm and loaded.finetune_mode == "finetune"
    assert "input_scale" not in loaded.state_dict()  # derived from hparams, not stored twice
    x = torch.randn(2, 1, 32, 32)
    task.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), task(x))


# ------------------------------------------------------------------------ weight sources


def test_pretrain_on_medmnist_then_finetune_on_malaria(tmp_path, shared_data) -> None:
    """A checkpoint this pipeline wrote is a weight source (BreastMNIST -> malaria, 1 channel)."""
    from medpipe.data.malaria import MalariaDataModule
    from medpipe.data.medmnist import MedMNISTDataModule

    raw = tmp_path / "breastmnist"
    raw.mkdir()
    (raw / "breastmnist.npz").write_bytes(
        (shared_data / "medmnist" / "breastmnist.npz").read_bytes()
    )
    medmnist = MedMNISTDataModule(flag="breastmnist", root=raw, batch_size=32)
    L.seed_everything(0)
    source_task = build(_cfg({"backbone": TINY}, lr=0.003), medmnist)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(source_task, datamodule=medmnist)
    ckpt = tmp_path / "breast.ckpt"
    trainer.save_checkpoint(ckpt)

    cells = MalariaDataModule(
        root=tmp_path / "raw",
        processed=tmp_path / "processed",
        mirror=str(shared_data),
        size=28,
        channels=1,
    )
    cells.fetch()
    target = build(_cfg({"backbone": TINY, "pretrained": str(ckpt), "finetune": "finetune"}), cells)
    report = target.model.load_report
    assert report is not None and report.backbone_loaded == report.backbone_total
    assert report.head_loaded == 2  # both binary: the 1-logit head fits and is kept
    src = source_task.model.net.state_dict()
    for key, value in target.model.net.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, src[key]), key
    assert not target.renorm  # a pipeline checkpoint keeps the data's own normalisation
    x, _ = next(iter(cells.train_dataloader()))
    assert target(x).shape == (len(x), 1)
