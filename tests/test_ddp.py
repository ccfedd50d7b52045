"""DDP on CPU (gloo, 2 processes) launched by the project's own DVC stage, killed, resumed.

One end-to-end flow, because every process start costs ~10 s here:

1. a scratch copy of the pipeline (the real dvc.yaml, src/, a params.yaml composed with
   ``trainer=ddp_cpu trainer.devices=2``) and a tiny real-data split with ODD val/test sizes;
2. ``dvc repro -s train`` is SIGKILLed (whole process group) right after a mid-epoch checkpoint;
3. ``dvc repro -s train`` again resumes it (``persist: true`` + ``resume: auto``): the resumed
   epoch / global step are those of the killed run's last.ckpt and training ends at the full
   step count;
4. the DDP val/test metrics of best.ckpt (``trainer.evaluate_best``) equal a single-process
   evaluation of the same checkpoint to 1e-6 (no sample counted twice by sampler padding);
5. an audit hook installed in every rank > 0 records any file it creates or writes in the
   repository: there must be none, and the outputs are one set (no per-rank folders).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from medpipe.checkpointing import read_metadata
from medpipe.config import compose
from medpipe.data.registry import build_datamodule
from medpipe.evaluation.inference import load_task, predict
from medpipe.evaluation.metrics import classification_metrics
from tests.conftest import REPO
from tests.stages.test_train_support import cli_env, make_tiny_breastmnist, tiny_overrides

pytestmark = pytest.mark.slow

# Installed (through PYTHONPATH) in every process; only ranks > 0 get the hook.
AUDIT = r"""
import os, sys
if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("RANK", "0") != "0":
    _root, _log = os.environ["AUDIT_ROOT"], os.environ["AUDIT_LOG"]
    _events = {"os.rename": 1, "os.remove": 0, "os.mkdir": 0, "os.rmdir": 0, "shutil.rmtree": 0}

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            )
        elif event in _events:
            path, writing = args[_events[event]], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            full = os.path.abspath(os.fsdecode(path))
            if full.startswith(_root):
                with open(_log, "a") as fh:
                    fh.write(f"{os.environ.get('LOCAL_RANK')} {event} {full}\n")

    sys.addaudithook(_hook)
"""

STEPS_PER_EPOCH = 2  # 64 training images / 2 ranks / batch 16
EPOCHS = 4


def _scratch_pipeline(root: Path, shared_data: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo)
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    make_tiny_breastmnist(shared_data, repo / "data" / "raw" / "breastmnist")
    overrides = tiny_overrides(
        Path("data/raw/breastmnist"),
        **{
            "trainer": "ddp_cpu",
            "trainer.devices": 2,
            "trainer.max_epochs": EPOCHS,
            "trainer.checkpoint_every_n_steps": 1,
            "trainer.enable_progress_bar": "false",
            "logger": "csv",
        },
    )
    cfg = compose(overrides)
    assert cfg.trainer.evaluate_best is True and cfg.trainer.strategy == "ddp"
    (repo / "params.yaml").write_text(yaml.safe_dump(_plain(cfg), sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True)
    return repo


def _plain(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def _dvc_repro(repo: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "-s", "train"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: dvc, rank 0 and rank 1
    )


def _kill_after_mid_epoch_checkpoint(proc: subprocess.Popen, last: Path) -> None:
    """SIGKILL the whole run once last.ckpt holds a mid-epoch state.

    The group is frozen (SIGSTOP) while last.ckpt is read, so the state seen is the state left.
    """
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if last.is_file():
            os.killpg(proc.pid, signal.SIGSTOP)
            if read_metadata(last)["global_step"] % STEPS_PER_EPOCH:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                return
            os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.02)
    out = proc.communicate(timeout=30)[0] if proc.poll() is not None else ""
    pytest.fail(f"no mid-epoch checkpoint before the run ended:\n{out[-3000:]}")


def test_ddp_dvc_stage_kill_resume_exact_metrics(tmp_path, shared_data, monkeypatch):
    repo = _scratch_pipeline(tmp_path, shared_data)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(AUDIT)
    audit_log = tmp_path / "rank_writes.txt"
    env = cli_env(
        PYTHONPATH=str(tmp_path / "site"),
        AUDIT_ROOT=str(repo),
        AUDIT_LOG=str(audit_log),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("MEDPIPE_CONFIG_DIR")  # the stage reads params.yaml, not conf/
    last = repo / "models" / "tiny" / "last.ckpt"

    # 1-2. killed mid-epoch (SIGKILL: nothing can be saved on the way out)
    _kill_after_mid_epoch_checkpoint(_dvc_repro(repo, env), last)
    killed = read_metadata(last)
    assert not killed["completed"] and killed["global_step"] % STEPS_PER_EPOCH
    assert killed["world_size"] == 2

    # 3. rerun by DVC: resumes from that checkpoint instead of starting over
    proc = _dvc_repro(repo, env)
    out = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads((last.parent / "summary.json").read_text())
    assert summary["resumed_from"] == {
        "path": "models/tiny/last.ckpt",
        "epoch": killed["epoch"],
        "global_step": killed["global_step"],
    }
    assert summary["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert summary["world_size"] == 2
    assert read_metadata(last)["completed"] is True
    assert not list(last.parent.glob(".*.tmp")), "stale temp checkpoint left behind"

    # 4. DDP metrics of best.ckpt == one process scoring every sample once
    monkeypatch.chdir(repo)
    cfg = compose([], params_file="params.yaml")
    task = load_task(cfg, "models/tiny/best.ckpt")
    dm = build_datamodule(cfg.data)
    dm.setup()
    assert dm.split_sizes() == {"train": 64, "val": 23, "test": 37}  # odd: DDP would pad
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        out = predict(task, loader)
        single = classification_metrics(out["probs"], out["target"], task.task_type, 2)
        single["loss"] = float(task.loss(out["logits"], out["target"]))
        ddp = summary[split]
        for key in ("accuracy", "f1", "roc_auc", "loss"):
            assert ddp[f"{split}/{key}"] == pytest.approx(single[key], abs=1e-6), (split, key)
    # the metric that chose best.ckpt during DDP training is the same number
    assert summary["best_score"] == pytest.approx(summary["val"]["val/roc_auc"], abs=1e-6)

    # 5. rank 1 wrote nothing; one set of outputs
    assert not audit_log.exists(), audit_log.read_text()
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    outputs = [f for f in files if not f.startswith(("src/", ".dvc", "data/", "dvc.", "params."))]
    models = [f for f in outputs if f.startswith("models/")]
    assert models == ["models/tiny/best.ckpt", "models/tiny/last.ckpt", "models/tiny/summary.json"]
    logs = {f for f in outputs if f.startswith("logs/")}
    # one CSV folder per run (killed, resumed), none per rank; the killed one may lack metrics.csv
    assert {"logs/tiny/version_1/hparams.yaml", "logs/tiny/version_1/metrics.csv"} <= logs
    assert logs <= {
        f"logs/tiny/version_{v}/{n}" for v in (0, 1) for n in ("hparams.yaml", "metrics.csv")
    }
    assert set(outputs) == set(models) | logs, outputs
    assert (
        torch.load(repo / "models/tiny/best.ckpt", weights_only=False)["medpipe"]["world_size"] == 2
    )


def test_torchrun_two_nodes_one_set_of_outputs(tmp_path, shared_data):
    """``trainer.num_nodes=2`` under torchrun (one agent per "node", here both on localhost):
    ranks come from torchrun's environment, rank 1 writes nothing, rank 0 writes one set."""
    data = make_tiny_breastmnist(shared_data, tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(AUDIT)
    audit_log = tmp_path / "rank_writes.txt"
    env = cli_env(PYTHONPATH=str(tmp_path / "site"), AUDIT_ROOT=str(work), AUDIT_LOG=str(audit_log))
    args = tiny_overrides(
        data,
        **{
            "trainer": "ddp_cpu",
            "trainer.num_nodes": 2,
            "trainer.devices": 1,
            "trainer.enable_progress_bar": "false",
            "logger": "csv",
        },
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nodes = [
        subprocess.Popen(
            [
                str(torchrun),
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "-m",
                "medpipe.cli",
                "train",
                *args,
            ],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=400)[0] for p in nodes]
    for p, out in zip(nodes, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    summary = json.loads((work / "models" / "tiny" / "summary.json").read_text())
    assert (summary["num_nodes"], summary["world_size"]) == (2, 2)
    assert summary["global_step"] == 2 * STEPS_PER_EPOCH  # 2 epochs, data split over 2 ranks
    assert set(summary["test"]) >= {"test/roc_auc", "test/loss"}
    assert not audit_log.exists(), audit_log.read_text()
    files = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    assert files == [
        "logs/tiny/version_0/hparams.yaml",
        "logs/tiny/version_0/metrics.csv",
        "models/tiny/best.ckpt",
        "models/tiny/last.ckpt",
        "models/tiny/summary.json",
    ], files
