"""Resume: SIGTERM mid-epoch saves and resumes, atomic checkpoint writes, resume=auto decisions.

The SIGKILL case (a process killed with nothing saved on the way out, rerun by ``dvc repro``) is
in tests/test_ddp.py, where it runs under DDP from the project's dvc.yaml.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from medpipe.checkpointing import (
    AtomicCheckpointIO,
    LastCheckpoint,
    read_metadata,
    resume_checkpoint,
)
from medpipe.config import compose
from medpipe.errors import ConfigError
from medpipe.stages import train
from tests.conftest import REPO
from tests.stages.test_train_support import make_tiny_breastmnist, tiny_overrides

STEPS_PER_EPOCH = 4  # 64 images, batch 16


@pytest.fixture()
def workdir(tmp_path, monkeypatch, shared_data) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDPIPE_CONFIG_DIR", str(REPO / "conf"))
    return make_tiny_breastmnist(shared_data, tmp_path / "data" / "breastmnist")


class SigtermAt(L.Callback):
    """Sends this process SIGTERM once ``global_step`` reaches ``step`` (like `kill <pid>`)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class CountSteps(L.Callback):
    def __init__(self) -> None:
        self.first: tuple[int, int] | None = None
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first is None:
            self.first = (trainer.current_epoch, trainer.global_step)
        self.batches += 1


def test_sigterm_mid_epoch_saves_then_rerun_resumes(workdir):
    cfg = compose(tiny_overrides(workdir, **{"trainer.max_epochs": 3}))
    killed_at = STEPS_PER_EPOCH + 2  # epoch 1, after its 2nd batch
    with pytest.raises(SystemExit) as exit_info:
        train.run(cfg, callbacks=[SigtermAt(killed_at)])
    assert exit_info.value.code == 128 + signal.SIGTERM  # a failed stage for DVC / schedulers
    last = Path("models/tiny/last.ckpt")
    meta = read_metadata(last)
    assert (meta["epoch"], meta["global_step"], meta["completed"]) == (1, killed_at, False)

    counter = CountSteps()
    train.run(cfg, callbacks=[counter])  # resume=auto is the default
    total = 3 * STEPS_PER_EPOCH
    assert counter.first == (1, killed_at)  # restarted where it stopped, not at epoch 0
    assert counter.batches == total - killed_at
    summary = json.loads((last.parent / "summary.json").read_text())
    assert summary["global_step"] == total
    assert summary["resumed_from"] == {
        "path": str(last),
        "epoch": 1,
        "global_step": killed_at,
    }
    assert read_metadata(last)["completed"] is True
    assert resume_checkpoint(cfg, last.parent) is None  # a finished run is not resumed again


class CtrlCAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_saves_last_checkpoint(workdir):
    cfg = compose(tiny_overrides(workdir, **{"trainer.checkpoint_every_n_steps": 100}))
    with pytest.raises(SystemExit) as exit_info:  # Lightning turns Ctrl-C into exit status 1
        train.run(cfg, callbacks=[CtrlCAt(3)])
    assert exit_info.value.code == 1
    meta = read_metadata("models/tiny/last.ckpt")
    assert (meta["epoch"], meta["global_step"], meta["completed"]) == (0, 3, False)


def test_atomic_save_never_exposes_a_partial_last_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, target)
    before = target.read_bytes()

    import medpipe.checkpointing as ckpt_module

    def killed_mid_write(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")  # what a kill mid-save leaves
        fh.flush()
        assert target.read_bytes() == before  # the target is untouched while writing
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(ckpt_module.torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert torch.load(target, weights_only=False)["global_step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))

    # SIGKILL skips the clean-up: the next run removes the leftover before training
    leftover = tmp_path / ".last.ckpt.x1y2.tmp"
    leftover.write_bytes(b"partial")

    class FakeTrainer:
        is_global_zero = True

    LastCheckpoint(tmp_path).setup(FakeTrainer(), None, "fit")
    assert not leftover.exists() and target.exists()


def _ckpt(path: Path, config: dict, *, completed: bool = False, step: int = 5) -> Path:
    torch.save(
        {"epoch": 1, "global_step": step, "medpipe": {"config": config, "completed": completed}},
        path,
    )
    return path


def test_resume_auto_decisions(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPIPE_CONFIG_DIR", str(REPO / "conf"))
    cfg = compose(["model=cnn"])
    plain = compose(["model=cnn"])  # the same config
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(plain, resolve=True)
    folder = tmp_path / "models"
    folder.mkdir()
    assert resume_checkpoint(cfg, folder) is None  # nothing to resume

    last = _ckpt(folder / "last.ckpt", config)
    assert resume_checkpoint(cfg, folder) == last
    # data.num_workers or the logger do not change the trajectory: still resumable
    assert resume_checkpoint(compose(["model=cnn", "data.num_workers=2", "logger=none"]), folder)
    # a different learning rate does: start over
    assert resume_checkpoint(compose(["model=cnn", "task.optimizer.lr=0.1"]), folder) is None
    assert resume_checkpoint(compose(["model=cnn", "resume=never"]), folder) is None

    _ckpt(last, config, completed=True)
    assert resume_checkpoint(cfg, folder) is None  # finished runs are not resumed

    last.write_bytes(b"truncated")  # not written by medpipe, e.g. copied half-way
    assert resume_checkpoint(cfg, folder) is None

    explicit = _ckpt(tmp_path / "other.ckpt", config, completed=True)
    assert resume_checkpoint(compose(["model=cnn", f"resume={explicit}"]), folder) == explicit
    with pytest.raises(ConfigError, match="resume=.*nope.ckpt: no such checkpoint"):
        resume_checkpoint(compose(["model=cnn", f"resume={tmp_path}/nope.ckpt"]), folder)
