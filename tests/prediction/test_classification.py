"""``medpipe predict`` for classification: prediction CSVs and the competition submission."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.config import compose
from medpipe.data.competition import build_competition_from_cells
from medpipe.kaggle.submission import validate_submission
from medpipe.prediction.classification import labels_from_probs, write_predictions
from medpipe.stages import fetch, predict, train
from tests.conftest import REPO

TINY = [
    "model=cnn",
    "model.channels=[8,16]",
    "model.hidden=[16]",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "logger=none",
    "data.size=32",
    "data.batch_size=16",
]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _paths(tmp: Path) -> list[str]:
    return [
        f"paths.{k}={tmp / k}" for k in ("raw", "processed", "models", "metrics", "reports", "logs")
    ] + [f"+paths.predictions={tmp / 'predictions'}", f"+paths.submissions={tmp / 'submissions'}"]


@pytest.fixture
def conf_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPIPE_CONFIG_DIR", str(REPO / "conf"))


def test_competition_train_predict_writes_a_valid_submission(
    tmp_path: Path, shared_data: Path, conf_dir, no_network
) -> None:
    comp = tmp_path / "raw" / "malaria_competition"
    build_competition_from_cells(
        shared_data / "malaria" / "cell_images", comp, test_fraction=0.3, seed=0, limit=40
    )
    cfg = compose(["experiment=malaria_competition", "data.source=local", *TINY, *_paths(tmp_path)])
    train.run(cfg)
    written = predict.run(cfg)

    sub = tmp_path / "submissions" / "malaria_competition.csv"
    assert written["submission_csv"] == sub
    sample = comp / "sample_submission.csv"
    report = validate_submission(sub, sample)
    rows = _rows(sub)
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == [r[0] for r in _rows(sample)[1:]]  # the sample's order
    assert report.rows == len(rows) - 1 and set(report.label_counts) <= {0, 1}

    probs = _rows(tmp_path / "predictions" / "malaria_competition" / "submission.csv")
    assert probs[0] == ["id", "prob", "pred"] and len(probs) == len(rows)
    labelled = _rows(tmp_path / "predictions" / "malaria_competition" / "test.csv")
    assert labelled[0] == ["id", "prob", "pred", "target"]
    assert all(
        0.0 <= float(r[1]) <= 1.0 and r[2] == str(int(float(r[1]) >= 0.5)) for r in labelled[1:]
    )

    board = json.loads(
        (tmp_path / "predictions" / "malaria_competition" / "leaderboard.json").read_text()
    )
    truth = {r[0]: r[1] for r in _rows(comp / "solution.csv")[1:]}
    got = {r[0]: r[1] for r in rows[1:]}
    assert board["n"] == len(truth)
    assert board["accuracy"] == pytest.approx(np.mean([got[i] == truth[i] for i in truth]))


def test_malaria_predict_names_cells_by_file(tmp_path: Path, shared_data: Path, conf_dir) -> None:
    cfg = compose(
        ["experiment=malaria_cnn", f"data.mirror={shared_data}", *TINY, *_paths(tmp_path)]
    )
    fetch.run(cfg)
    train.run(cfg)
    out = tmp_path / "custom"
    written = predict.run(cfg, split="val", output=str(out))
    assert list(written) == ["val"] and written["val"] == out / "val.csv"
    rows = _rows(out / "val.csv")
    assert rows[0] == ["id", "prob", "pred", "target"]
    assert rows[1][0].split("/")[0] in ("Uninfected", "Parasitized")
    assert {r[3] for r in rows[1:]} == {"0", "1"}
    assert not (tmp_path / "submissions").exists()


def test_multiclass_and_multilabel_columns(tmp_path: Path) -> None:
    probs = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.2, 0.3]])
    pred = labels_from_probs(probs, "multi-class", 0.5)
    assert pred.tolist() == [1, 0]
    write_predictions(tmp_path / "a.csv", ["x", "y"], probs, pred, torch.tensor([1, 2]),
                      "multi-class", ["a", "b", "c"])  # fmt: skip
    rows = _rows(tmp_path / "a.csv")
    assert rows[0] == ["id", "prob_a", "prob_b", "prob_c", "pred", "target"]
    assert rows[2] == ["y", "0.500000", "0.200000", "0.300000", "0", "2"]
    ml = labels_from_probs(probs, "multi-label", 0.5)
    write_predictions(tmp_path / "m.csv", ["x", "y"], probs, ml, None, "multi-label",
                      ["a", "b", "c"])  # fmt: skip
    assert _rows(tmp_path / "m.csv")[1][-3:] == ["0", "1", "0"]
