"""The notebooks: committed without outputs, and executed (nbclient) against real data and a
tiny real run."""

from __future__ import annotations

import json
import re

import nbformat
import pytest
from nbclient import NotebookClient

from medpipe.config import compose
from medpipe.stages import evaluate
from tests.conftest import REPO
from tests.evaluation.test_classification_report import _overrides, tiny_run

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_the_two_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_explore_data.ipynb", "02_results.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata


def _execute(name: str, cwd, monkeypatch, **env: str) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    # the kernel is a child process: it inherits the environment set above
    NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def _outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", out
            if out.output_type == "stream":
                text.append(out.text)
            else:
                data = out.get("data", {})
                text.append(data.get("text/plain", "") + data.get("text/html", ""))
                images += "image/png" in data
    return "\n".join(text), images


def test_explore_data_runs_on_the_real_data(shared_data, tmp_path, monkeypatch):
    nb = _execute(
        "01_explore_data.ipynb",
        tmp_path,
        monkeypatch,
        MEDPIPE_REPO=str(tmp_path),  # no data/raw there: everything comes from the mirror
        MEDPIPE_DATA_MIRROR=str(shared_data),
        MEDPIPE_NB_MAX_IMAGES="20",
    )
    text, images = _outputs(nb)
    for expected in ("pneumoniamnist.npz", "breastmnist.npz", "Parasitized", "malignant"):
        assert expected in text, expected
    assert "4708" in text and "3494" in text  # PneumoniaMNIST train size and pneumonia count
    assert images >= 6  # balance plots and sample grids


def test_results_compares_experiments_of_a_tiny_run(tmp_path_factory, shared_data, monkeypatch):
    run = tiny_run(tmp_path_factory, shared_data)
    root = run["root"]
    if not (root / "metrics" / "tiny_nb_tta.json").is_file():  # a second experiment to compare
        monkeypatch.chdir(REPO)
        cfg = compose(
            [
                *_overrides(root, name="tiny_nb_tta"),
                "task.evaluation.tta.flips=[horizontal,vertical]",
                "task.evaluation.bootstrap.resamples=50",
                "task.evaluation.gradcam.per_class=1",
            ]
        )
        evaluate.run(cfg, checkpoint=run["ckpt"])
    nb = _execute("02_results.ipynb", root, monkeypatch, MEDPIPE_REPO=str(root))
    text, images = _outputs(nb)
    assert re.search(r"^tiny\s", text, re.M) and re.search(r"^tiny_nb_tta\s", text, re.M)
    metrics = json.loads((root / "metrics" / "tiny.json").read_text())
    assert f"{metrics['roc_auc']:.3f} [{metrics['ci']['roc_auc']['low']:.3f}" in text
    assert "youden" in text
    assert images >= 3  # bar chart, ROC overlay, figure grid
