"""Experiment tracking: W&B offline runs read back, DVCLive through DVC, several loggers, secrets.

The W&B run is read back from its transaction log with wandb's own protobuf ``Record`` messages.
wandb 0.31 moved the Python reader of that log (``wandb.sdk.internal.datastore``) into its Go
core, so :func:`wandb_records` walks the framing itself: the LevelDB log format wandb documents
for ``.wandb`` files (a 7-byte ``:W&B`` header, 32 KiB blocks, chunks with a CRC-32, length and
type), checking every chunk's CRC.
"""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from medpipe.config import compose
from medpipe.errors import ConfigError
from medpipe.loggers import build_loggers, wandb_offline
from medpipe.stages import train
from tests.conftest import REPO
from tests.stages.test_train_support import make_tiny_breastmnist, tiny_overrides

SECRET = "medpipetestkey0000000000000000000000000000"  # 42 chars, wandb-key-like


def wandb_records(path: Path) -> Iterator:
    """Every ``wandb_internal_pb2.Record`` in an offline run's ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a wandb transaction log"
    block, header, pos, pending = 32768, 7, 7, b""
    while pos + header <= len(data):
        if block - pos % block < header:  # block trailer: padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if kind == 0 and length == 0:
            break
        payload = data[pos + header : pos + header + length]
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) == crc, f"bad CRC at byte {pos}"
        pos += header + length
        if kind == 1:  # full record
            yield pb.Record.FromString(payload)
        elif kind == 2:  # first chunk
            pending = payload
        elif kind == 3:  # middle
            pending += payload
        elif kind == 4:  # last
            yield pb.Record.FromString(pending + payload)
            pending = b""


@pytest.fixture()
def workdir(tmp_path, monkeypatch, shared_data) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDPIPE_CONFIG_DIR", str(REPO / "conf"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return make_tiny_breastmnist(shared_data, tmp_path / "data" / "breastmnist")


def test_wandb_offline_run_with_csv_read_back(workdir, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", SECRET)  # present, and must never be written anywhere
    cfg = compose(
        tiny_overrides(
            workdir,
            **{
                "logger": "[csv,wandb]",
                "logger.wandb.project": "medpipe-test",
                "logger.wandb.group": "grp",
                "logger.wandb.tags": "[t1,t2]",
                "logger.wandb.job_type": "train-test",
            },
        )
    )
    train.run(cfg)
    runs = list((tmp_path / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    records = list(wandb_records(runs[0]))
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "exit" in kinds  # finished cleanly: `wandb sync` can upload it

    run = next(r.run for r in records if r.HasField("run"))
    assert (run.project, run.run_group, run.job_type) == ("medpipe-test", "grp", "train-test")
    assert list(run.tags) == ["t1", "t2"] and run.display_name == "tiny"

    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.HasField("config")
        for item in r.config.update
    }
    assert config["seed"] == 42 and config["resume"] == "auto"  # the resolved Hydra config
    assert config["data"]["flag"] == "breastmnist" and config["trainer"]["max_epochs"] == 2

    history = [
        {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.HasField("history")
    ]
    wb_auc = [h["val/roc_auc"] for h in history if "val/roc_auc" in h]
    assert len(wb_auc) == 2  # one per epoch
    assert any("train/loss_epoch" in h for h in history)
    assert any(k.startswith("val/confusion_matrix") for h in history for k in h)
    media = [f.path for r in records if r.HasField("files") for f in r.files.files]
    assert sum("media/images/val/predictions" in p for p in media) == 16  # sample predictions

    # the CSV logger ran beside it and recorded the same numbers
    metrics_csv = tmp_path / "logs" / "tiny" / "version_0" / "metrics.csv"
    rows = list(csv.DictReader(metrics_csv.read_text().splitlines()))
    csv_auc = [float(r["val/roc_auc"]) for r in rows if r.get("val/roc_auc")]
    assert csv_auc == pytest.approx(wb_auc, abs=1e-7)

    # the key is nowhere: not in any file written, not in the console
    out = capfd.readouterr()
    assert SECRET not in out.out + out.err
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks


def test_wandb_without_key_goes_offline_and_online_uploads_best(monkeypatch, tmp_path, caplog):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("MEDPIPE_CONFIG_DIR", str(REPO / "conf"))
    monkeypatch.chdir(tmp_path)
    offline, why = wandb_offline({})
    assert offline and "no W&B API key" in why and "WANDB_API_KEY" in why
    with caplog.at_level("WARNING"):
        (logger,) = build_loggers(compose(["logger=wandb"]))
    assert logger._offline and not logger._log_model  # WandbLogger refuses log_model offline
    assert "wandb sync" in caplog.text

    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    (logger,) = build_loggers(compose(["logger=wandb"]))
    assert not logger._offline and logger._log_model is True  # best checkpoint -> artifact
    assert SECRET not in caplog.text


def test_logger_bad_input(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDPIPE_CONFIG_DIR", str(REPO / "conf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="available options for 'logger': .*wandb"):
        compose(["logger=nosuch"])
    with pytest.raises(ConfigError, match="logger 'nosuch' is not available"):
        build_loggers(compose(["+logger.nosuch={}"]))
    with pytest.raises(ConfigError, match="credentials do not belong") as err:
        build_loggers(compose(["logger=wandb", "+logger.wandb.api_key=abc123secret"]))
    assert "abc123secret" not in str(err.value)

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="logger=wandb needs the wandb package"):
        build_loggers(compose(["logger=wandb"]))


def _dvc_json(cwd: Path, *args: str) -> object:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args, "--json"], cwd=cwd, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_dvclive_params_metrics_and_curves_in_dvc(workdir, tmp_path):
    from dvc.cli import main as dvc

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text((REPO / ".gitignore").read_text())  # the real ignores
    assert dvc(["init", "-q"]) == 0
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    git_id = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", *git_id, "commit", "-qm", "init"], cwd=tmp_path, check=True)

    train.run(compose(tiny_overrides(workdir, logger="dvclive")))

    rows = _dvc_json(tmp_path, "exp", "show")
    (workspace,) = [row for row in rows if row["rev"] == "workspace"]
    params = workspace["data"]["params"]["metrics/dvclive/tiny/run/params.yaml"]["data"]
    assert params["data"]["flag"] == "breastmnist" and params["seed"] == 42
    metrics = workspace["data"]["metrics"]["metrics/dvclive/tiny/run/metrics.json"]["data"]
    assert 0.0 <= metrics["val"]["roc_auc"] <= 1.0 and metrics["epoch"] == 1

    plots = _dvc_json(tmp_path, "plots", "show")["data"]
    prefix = "metrics/dvclive/tiny/run/plots/"
    for curve in ("val/roc_auc", "val/loss", "train/loss_epoch"):
        points = plots[f"{prefix}metrics/{curve}.tsv"][0]["content"]["data"]["values"]
        assert len(points) == 2, curve  # one point per epoch
    assert f"{prefix}sklearn/val_confusion_matrix.json" in plots
