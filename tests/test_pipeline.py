"""End to end: `dvc repro` in a temporary copy of the repository, on the mirror, tiny budget."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

TINY = [
    "model=cnn",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "logger=none",
]
# top-level entries not copied (outputs, caches, environments)
SKIP_TOP = {
    ".git",
    ".venv",
    "data",
    "models",
    "logs",
    "metrics",
    "reports",
    "outputs",
    "dvc.lock",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "bench",
    "notebooks",
    "wandb",
    "dvclive",
}
SKIP_ANY = {"__pycache__", "cache", "tmp"}


def _ignore(folder: str, names: list[str]) -> list[str]:
    top = Path(folder) == REPO
    return [n for n in names if n in SKIP_ANY or (top and n in SKIP_TOP)]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory, shared_data) -> tuple[Path, dict[str, str]]:
    dest = tmp_path_factory.mktemp("medpipe") / "repo"
    shutil.copytree(REPO, dest, ignore=_ignore)
    env = {**os.environ, "MEDPIPE_DATA_MIRROR": str(shared_data)}
    env.pop("MEDPIPE_CONFIG_DIR", None)
    _run(["git", "init", "-q"], dest, env)
    params = _run(["medpipe", "config", *TINY], dest, env).stdout
    (dest / "params.yaml").write_text(params)
    return dest, env


def test_dvc_repro_end_to_end(repo_copy):
    """The default chain fetch -> train -> evaluate (the other experiments' stages have their own
    end-to-end tests; running all of them at full budget here would take most of an hour)."""
    repo, env = repo_copy
    _run(["dvc", "repro", "evaluate"], repo, env)
    metrics_file = repo / "metrics" / "pneumoniamnist_cnn.json"
    metrics = json.loads(metrics_file.read_text())
    for key in ("accuracy", "f1", "roc_auc", "precision", "recall", "specificity"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert metrics["loss"] > 0
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (4708, 524, 624)
    report = repo / "reports" / "pneumoniamnist_cnn"
    assert (report / "roc.png").stat().st_size > 1000
    assert (report / "predictions.csv").read_text().splitlines()[0] == "actual,predicted"
    assert len((report / "predictions.csv").read_text().splitlines()) == 625
    assert (repo / "models" / "pneumoniamnist_cnn" / "best.ckpt").is_file()
    assert (repo / "data" / "raw" / "pneumoniamnist" / "pneumoniamnist.npz").is_file()

    # nothing changed -> nothing runs, outputs untouched
    mtime = metrics_file.stat().st_mtime_ns
    again = _run(["dvc", "repro", "evaluate"], repo, env)
    assert "Running stage" not in again.stdout, again.stdout
    assert metrics_file.stat().st_mtime_ns == mtime

    shown = _run(["dvc", "metrics", "show"], repo, env).stdout
    assert "roc_auc" in shown and "pneumoniamnist_cnn.json" in shown


def test_dvc_exp_run_with_hydra_override(repo_copy):
    repo, env = repo_copy
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], repo, env)
    sets = [f"-S{o}" for o in TINY if not o.startswith("model=")] + ["-Smodel=lenet5"]
    _run(["dvc", "exp", "run", "evaluate", *sets], repo, env)
    metrics = json.loads((repo / "metrics" / "pneumoniamnist_lenet5.json").read_text())
    assert 0.0 <= metrics["roc_auc"] <= 1.0
    assert "name: lenet5" in (repo / "params.yaml").read_text()


def test_python_bytecode_is_not_a_pipeline_change(tmp_path):
    """`src/medpipe` is a stage dependency: its __pycache__ must not enter the hash, or the
    committed dvc.lock would look stale on every other machine and Python version."""
    result = subprocess.run(
        ["dvc", "check-ignore", "src/medpipe/__pycache__/cli.cpython-311.pyc", "src/medpipe/x.pyc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "src/medpipe/__pycache__/cli.cpython-311.pyc",
        "src/medpipe/x.pyc",
    ]
    kept = subprocess.run(
        ["dvc", "check-ignore", "src/medpipe/cli.py"], cwd=REPO, capture_output=True, check=False
    )
    assert kept.returncode == 1  # not ignored
