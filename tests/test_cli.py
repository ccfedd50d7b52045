"""The ``medpipe`` command line: config composition and one-line errors for bad input."""

from __future__ import annotations

import pytest
import yaml

from medpipe.cli import main
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_config_composes_groups_and_overrides(capsys):
    assert main(["config", "model=cnn", "trainer.max_epochs=3", "data=breastmnist"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["name"] == "cnn"
    assert cfg["trainer"]["max_epochs"] == 3
    assert cfg["data"]["flag"] == "breastmnist" and cfg["data"]["root"] == "data/raw/breastmnist"
    assert cfg["name"] == "breastmnist_cnn"


def test_experiment_sets_name_and_groups(capsys):
    assert main(["config", "experiment=breast_resnet18"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["name"] == "breast_resnet18" and cfg["data"]["name"] == "breastmnist"


def test_params_yaml_is_the_composed_default(capsys):
    """params.yaml (DVC's input) must not drift from conf/: regenerate with `medpipe config`."""
    assert main(["config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(
        (REPO / "params.yaml").read_text()
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "model=nosuch"], "model"),
        (["train", "model.name=vgg99", "trainer.max_epochs=1"], "model.name='vgg99'"),
        (["train", "task.optimizer.lr=-0.1"], "optimizer.lr=-0.1"),
        (["fetch", "data.flag=nosuchmnist"], "data.flag='nosuchmnist'"),
        (["fetch", "data.size=30"], "data.size=30"),
        (["train", "--config", "missing.yaml"], "missing.yaml"),
        (["evaluate", "--checkpoint", "nope/best.ckpt"], "nope/best.ckpt"),
    ],
)
def test_bad_input_is_one_clear_line(argv, expected, capsys, tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("MEDPIPE_DATA_MIRROR", str(shared_data))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
