"""``medpipe train``: trainer configs, bad input, precision / accumulation / clipping / compile,
NaN handling, reproducibility and checkpoint provenance (all on a tiny real-data split)."""

from __future__ import annotations

import csv
import functools
import os
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from medpipe.checkpointing import read_metadata, resume_checkpoint
from medpipe.cli import main
from medpipe.config import compose
from medpipe.data.registry import build_datamodule
from medpipe.data.sources import md5sum
from medpipe.reproducibility import seed_augmentations
from medpipe.stages import train
from tests.conftest import REPO
from tests.stages.test_train_support import make_tiny_breastmnist, tiny_overrides


@pytest.fixture()
def workdir(tmp_path, monkeypatch, shared_data) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDPIPE_CONFIG_DIR", str(REPO / "conf"))
    return make_tiny_breastmnist(shared_data, tmp_path / "data" / "raw" / "breastmnist")


# --- trainer configs ------------------------------------------------------------------------


def test_trainer_configs(monkeypatch):
    monkeypatch.setenv("MEDPIPE_CONFIG_DIR", str(REPO / "conf"))
    cpu = compose(["trainer=cpu"])
    kwargs, extras = train.split_trainer_config(cpu)
    assert set(extras) == {"compile", "checkpoint_every_n_steps", "evaluate_best"}
    assert not set(extras) & set(kwargs)  # medpipe options never reach L.Trainer
    assert kwargs["precision"] == "32-true" and kwargs["accumulate_grad_batches"] == 1

    ddp_cpu = compose(["trainer=ddp_cpu"])
    t = train.build_trainer(ddp_cpu, [], False)
    assert type(t.strategy).__name__ == "DDPStrategy" and t.num_devices == 2
    assert t.strategy._get_process_group_backend() == "gloo"

    gpu = compose(["trainer=gpu"]).trainer
    assert (gpu.accelerator, gpu.precision) == ("gpu", "bf16-mixed")
    ddp = compose(["trainer=ddp"]).trainer
    assert (ddp.strategy, ddp.devices, ddp.accelerator) == ("ddp", -1, "gpu")
    multi = compose(["trainer=multinode", "trainer.num_nodes=3"]).trainer
    assert (multi.num_nodes, multi.devices, multi.strategy) == (3, 4, "ddp")
    for name in ("gpu", "ddp", "multinode"):
        assert compose([f"trainer={name}"]).trainer.max_epochs == cpu.trainer.max_epochs


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer=gpu"], "trainer.accelerator=gpu but no CUDA GPU is visible"),
        (["trainer=multinode"], "no CUDA GPU is visible on this machine; use trainer=cpu"),
        (["trainer=ddp_cpu", "trainer.devices=4096"], "asks for 4096 CPU processes"),
        (["trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps=0"),
        (["logger=nosuch"], "available options for 'logger'"),
        (["resume=nowhere/last.ckpt"], "resume=nowhere/last.ckpt: no such checkpoint"),
        (["logger=wandb", "+logger.wandb.api_key=abc"], "credentials do not belong"),
    ],
)
def test_bad_input_is_one_clear_line(overrides, expected, workdir, capsys):
    if "gpu" in expected.lower() and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", *tiny_overrides(workdir), *overrides]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_device_requests_are_checked_against_the_machine(monkeypatch):
    from medpipe import distributed
    from medpipe.errors import ConfigError

    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 2)  # a 2-GPU machine
    for devices in (1, 2, -1, "auto", [0, 1], "0,1"):
        distributed.check_devices({"accelerator": "gpu", "devices": devices})
    with pytest.raises(ConfigError, match=r"trainer.devices=8 but this machine has 2 GPU\(s\)"):
        distributed.check_devices({"accelerator": "gpu", "devices": 8})
    with pytest.raises(ConfigError, match=r"trainer.devices=\[0, 3\] names GPUs"):
        distributed.check_devices({"accelerator": "gpu", "devices": [0, 3]})
    with pytest.raises(ConfigError, match="must be at least 1"):
        distributed.check_devices({"accelerator": "cpu", "devices": 0})
    cores = os.cpu_count() or 1
    distributed.check_devices({"accelerator": "cpu", "devices": cores})
    with pytest.raises(ConfigError, match=f"this machine has {cores} CPU cores"):
        distributed.check_devices({"accelerator": "cpu", "devices": cores + 1})


# --- precision, accumulation, clipping, compile ------------------------------------------------


class GradNorms(L.Callback):
    """Total gradient norm before clipping (Lightning hook) and as the optimizer applies it."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.applied: list[float] = []

    @staticmethod
    def _norm(module: torch.nn.Module) -> float:
        grads = [p.grad.float() for p in module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    def on_train_start(self, trainer, pl_module) -> None:
        hook = lambda *args: self.applied.append(self._norm(pl_module))  # noqa: E731
        trainer.optimizers[0].register_step_post_hook(hook)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append(self._norm(pl_module))


def test_precision_accumulation_clipping_and_compile(workdir):
    cfg = compose(
        tiny_overrides(
            workdir,
            **{
                "trainer.precision": "bf16-mixed",
                "trainer.accumulate_grad_batches": 2,
                "trainer.gradient_clip_val": 0.05,
                "trainer.compile": "{backend: eager}",
            },
        )
    )
    norms = GradNorms()
    best = train.run(cfg, callbacks=[norms])
    summary = yaml.safe_load((best.parent / "summary.json").read_text())
    assert summary["precision"] == "bf16-mixed"
    assert summary["global_step"] == 2 * 4 // 2  # 2 epochs x 4 batches, one step per 2 batches
    assert len(norms.applied) == 4
    assert max(norms.before) > 0.05  # clipping had work to do ...
    assert max(norms.applied) <= 0.05 + 1e-5  # ... and the optimizer saw clipped gradients
    state = torch.load(best, weights_only=False)["state_dict"]
    assert not any("_orig_mod" in k for k in state)  # compiled, but checkpoints load plainly


# --- NaN --------------------------------------------------------------------------------------


class PoisonWeightsAt(L.Callback):
    """Sets the weights to NaN before the forward of ``step`` (the loss becomes NaN)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class PoisonGradientsAt(L.Callback):
    """NaN gradients at ``step``: that step's loss is finite, the updated weights are not."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            next(pl_module.parameters()).grad.fill_(float("nan"))


def _finite(path: Path) -> bool:
    state = torch.load(path, weights_only=False)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(
    workdir, monkeypatch, capsys
):
    overrides = tiny_overrides(workdir, **{"trainer.checkpoint_every_n_steps": 2})
    monkeypatch.setattr(train, "run", functools.partial(train.run, callbacks=[PoisonWeightsAt(5)]))
    assert main(["train", *overrides]) == 3
    err = capsys.readouterr().err.strip()
    assert "training loss is nan at global step 5" in err and len(err.splitlines()) == 1, err
    last = Path("models/tiny/last.ckpt")
    meta = read_metadata(last)
    assert (meta["global_step"], meta["completed"]) == (4, False) and _finite(last)
    # fixed and rerun: resume=auto continues from that good state
    assert resume_checkpoint(compose(overrides), last.parent) == last


def test_non_finite_weights_are_never_checkpointed(workdir):
    cfg = compose(tiny_overrides(workdir, **{"trainer.checkpoint_every_n_steps": 2}))
    with pytest.raises(FloatingPointError, match=r"became non-finite at global step 6"):
        train.run(cfg, callbacks=[PoisonGradientsAt(5)])  # the 6th step's update is NaN
    last = Path("models/tiny/last.ckpt")
    assert read_metadata(last)["global_step"] == 4 and _finite(last)


# --- reproducibility and provenance ----------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    return subprocess.run(
        ["git", *ident, *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, shared_data):
    """Runs A and B (same config, augmentation on, a DataLoader worker) and C (another seed),
    in a git repository whose data folder is tracked by `dvc add`."""
    root = tmp_path_factory.mktemp("repro")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MEDPIPE_CONFIG_DIR", str(REPO / "conf"))
        data = make_tiny_breastmnist(shared_data, root / "data" / "raw" / "breastmnist")
        _git(root, "init", "-q")
        from dvc.cli import main as dvc

        assert dvc(["init", "-q"]) == 0 and dvc(["add", "-q", "data/raw/breastmnist"]) == 0
        _git(root, "add", "-A")
        _git(root, "commit", "-qm", "data")
        common = {"data.num_workers": 1, "trainer.deterministic": "true", "logger": "csv"}
        cfgs = {
            "a": compose(tiny_overrides(data, name="run_a", **common)),
            "b": compose(tiny_overrides(data, name="run_b", **common)),
            "c": compose(tiny_overrides(data, name="run_c", seed=43, **common)),
        }
        best = {k: root / train.run(cfg) for k, cfg in cfgs.items()}
    return root, cfgs, best


def _metrics_rows(root: Path, name: str) -> list[dict[str, str]]:
    text = (root / "logs" / name / "version_0" / "metrics.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


def test_same_config_twice_gives_identical_metrics(three_runs):
    root, _, best = three_runs
    a, b, c = (_metrics_rows(root, f"run_{k}") for k in "abc")
    assert any(r.get("val/roc_auc") for r in a) and any(r.get("train/loss_epoch") for r in a)
    assert a == b  # every logged value, bit for bit
    assert a != c  # and the comparison can fail: another seed changes them
    sa, sb, sc = (torch.load(best[k], weights_only=False)["state_dict"] for k in "abc")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_augmentations_follow_the_seed(workdir):
    dm = build_datamodule(compose(tiny_overrides(workdir)).data)
    dm.setup("fit")
    ds = dm.datasets["train"]

    def augmented(seed: int) -> torch.Tensor:
        seed_augmentations(dm, seed)
        return torch.stack([ds[i][0] for i in range(16)])

    assert torch.equal(augmented(1), augmented(1))
    assert not torch.equal(augmented(1), augmented(2))


def test_checkpoints_store_config_git_data_hashes_and_versions(three_runs):
    root, cfgs, best = three_runs
    dvc_file = yaml.safe_load((root / "data" / "raw" / "breastmnist.dvc").read_text())
    head = _git(root, "rev-parse", "HEAD")
    for path in (best["a"], best["a"].parent / "last.ckpt"):
        meta = read_metadata(path)
        assert meta["config"] == OmegaConf.to_container(cfgs["a"], resolve=True)
        assert meta["git"] == {"revision": head, "dirty": False}
        assert meta["data"]["dvc"] == {"breastmnist": dvc_file["outs"][0]["md5"]}
        assert meta["data"]["dvc"]["breastmnist"].endswith(".dir")
        versions = meta["versions"]
        assert versions["torch"] == torch.__version__ and versions["lightning"] == L.__version__
        assert versions["medpipe"] and versions["python"]
    assert read_metadata(best["a"].parent / "last.ckpt")["completed"] is True
    # plain types only: Lightning resumes with torch.load(weights_only=True)
    assert torch.load(best["a"].parent / "last.ckpt", weights_only=True)["medpipe"]["git"]


def test_data_hash_without_dvc_is_the_file_md5(tmp_path, shared_data, monkeypatch):
    from medpipe.reproducibility import data_fingerprint

    monkeypatch.chdir(tmp_path)
    data = make_tiny_breastmnist(shared_data, tmp_path / "d")
    info = data_fingerprint(data)
    assert info["dvc"] == {} and info["md5"] == {
        "breastmnist.npz": md5sum(data / "breastmnist.npz")
    }
    assert os.path.basename(info["path"]) == "d"
