"""`medpipe export`: ONNX (onnxruntime) and TorchScript match PyTorch on real MedMNIST images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from medpipe.cli import main
from medpipe.data.medmnist import MedMNISTDataModule
from medpipe.evaluation.inference import load_task
from medpipe.stages.export import load_any_task
from medpipe.tasks.classification import ClassificationTask

TOL = 1e-4


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("breastmnist")
    shutil.copyfile(shared_data / "medmnist" / "breastmnist.npz", root / "breastmnist.npz")
    return MedMNISTDataModule(flag="breastmnist", root=root, batch_size=32)


def _checkpoint(tmp_path, dm, model: dict, **hparams) -> str:
    """A real (one-step) training run of ``model`` on BreastMNIST, saved by Lightning."""
    L.seed_everything(0)
    task = ClassificationTask(
        model=model,
        task_type=dm.task_type,
        num_classes=dm.num_classes,
        in_channels=dm.channels,
        class_names=dm.class_names,
        **hparams,
    )
    trainer = L.Trainer(
        max_steps=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, train_dataloaders=dm.train_dataloader())
    path = tmp_path / "best.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def cnn_ckpt(datamodule, tmp_path_factory) -> str:
    return _checkpoint(
        tmp_path_factory.mktemp("cnn"),
        datamodule,
        {"name": "cnn", "channels": [8, 16], "hidden": [16]},
    )


def _real_images(dm, n: int = 24) -> torch.Tensor:
    dm.setup()
    return torch.stack([dm.datasets["test"][i][0] for i in range(n)])


def _reference(ckpt: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    task = load_any_task(Path(ckpt))
    with torch.no_grad():
        logits = task(x)
    return logits, torch.sigmoid(logits.reshape(-1))


def test_onnx_matches_pytorch_on_real_images(cnn_ckpt, datamodule, tmp_path):
    import onnx
    import onnxruntime as ort

    ckpt = cnn_ckpt
    out = tmp_path / "model.onnx"
    assert (
        main(["export", ckpt, "--format", "onnx", "--input-size", "28", "--output", str(out)]) == 0
    )
    x = _real_images(datamodule)  # a batch of 24 though exported with 2: the batch is dynamic
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits, probs = session.run(None, {"image": x.numpy()})
    ref_logits, ref_probs = _reference(ckpt, x)
    assert np.abs(logits - ref_logits.numpy()).max() < TOL
    assert np.abs(probs - ref_probs.numpy()).max() < TOL
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["class_names"]) == ["malignant", "normal, benign"]
    assert meta["task_type"] == "binary-class"
    assert json.loads(meta["input_shape"]) == ["batch", 1, 28, 28]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"], "no temporary file left"


def test_torchscript_matches_pytorch_and_defaults_beside_the_checkpoint(datamodule, tmp_path):
    ckpt = _checkpoint(tmp_path, datamodule, {"name": "lenet5"})
    assert main(["export", ckpt, "--format", "torchscript", "--input-size", "28"]) == 0
    scripted = torch.jit.load(str(tmp_path / "best.torchscript.pt"))
    x = _real_images(datamodule, 10)
    logits, probs = scripted(x)
    ref_logits, ref_probs = _reference(ckpt, x)
    assert (logits - ref_logits).abs().max() < TOL
    assert (probs - ref_probs).abs().max() < TOL


def test_input_size_recorded_at_training_needs_no_flag(datamodule, tmp_path):
    """Checkpoints from `medpipe train` record data.size (tasks' input_size hparam)."""
    import onnx

    ckpt = _checkpoint(tmp_path, datamodule, {"name": "lenet5"}, input_size=28)
    out = tmp_path / "model.onnx"
    assert main(["export", ckpt, "--format", "onnx", "--output", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["input_shape"]) == ["batch", 1, 28, 28]


def test_loaded_like_evaluate_loads_it(cnn_ckpt, datamodule):
    """The export loader needs no config, yet gives the same module as `evaluate`'s loader."""
    from omegaconf import OmegaConf

    ckpt = cnn_ckpt
    a = load_any_task(Path(ckpt))
    b = load_task(OmegaConf.create({"task": {"kind": "classification"}}), ckpt)
    x = _real_images(datamodule, 4)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["export", "missing/best.ckpt", "--input-size", "28"], "missing/best.ckpt does not exist"),
        (["export", "CKPT"], "--input-size"),
        (["export", "CKPT", "--input-size", "0"], "--input-size=0"),
        (["export", "NOTACKPT", "--input-size", "28"], "could not be loaded as any medpipe task"),
    ],
)
def test_bad_input_is_one_clear_line(argv, expected, cnn_ckpt, tmp_path, capsys):
    ckpt = cnn_ckpt
    junk = tmp_path / "junk.ckpt"
    torch.save({"state_dict": {}}, junk)
    argv = [{"CKPT": ckpt, "NOTACKPT": str(junk)}.get(a, a) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err


def test_output_activation_follows_the_task():
    from medpipe.stages.export import ExportWrapper, activation_for

    def fake(**attrs):
        module = torch.nn.Identity()
        for k, v in attrs.items():
            setattr(module, k, v)
        return module

    z = torch.randn(3, 2, 4, 4)
    cases = {
        "binary": (fake(task_type="binary-class"), torch.sigmoid(z.flatten(1)[:, 0])),
        "sigmoid": (fake(task_type="multi-label"), torch.sigmoid(z)),
        "softmax": (fake(task_type="multi-class"), torch.softmax(z, -1)),
        "softmax_channels": (fake(task_type="segmentation", multiclass=True), torch.softmax(z, 1)),
    }
    for expected, (task, probs) in cases.items():
        assert activation_for(task) == expected
        logits, out = ExportWrapper(task, expected)(z)
        assert torch.equal(logits, z) and torch.allclose(out, probs)
    assert activation_for(fake(task_type="segmentation", multiclass=False)) == "sigmoid"
