"""``medpipe predict`` for classification: per-sample probabilities and, in competition mode,
the Kaggle submission.

Outputs (atomic):

* ``predictions/<name>/<split>.csv``: ``id``, the probability of each class (``prob`` = P(class 1)
  for binary tasks), the predicted label, and ``target`` when the split is labelled;
* competition DataModules (those with ``submission_dataloader``) also get the unlabelled test zip
  scored: ``submissions/<name>.csv`` (header ``id,label``, ids in ``sample_submission.csv`` order,
  else sorted; labels 0/1 at ``task.threshold``), validated against the sample right after
  writing, and, when the folder has a ``solution.csv`` (a rehearsal built from cells), the
  submission's accuracy in ``predictions/<name>/leaderboard.json``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from medpipe.errors import ConfigError, DataError
from medpipe.evaluation import tta
from medpipe.evaluation.inference import eval_accelerator
from medpipe.evaluation.metrics import BINARY, MULTILABEL
from medpipe.io import atomic_open, write_json

log = logging.getLogger(__name__)

SUBMISSION_SPLIT = "submission"


def _loader(dm: L.LightningDataModule, split: str) -> Any:
    if split == SUBMISSION_SPLIT and hasattr(dm, "submission_dataloader"):
        return dm.submission_dataloader()
    if hasattr(dm, "dataloader"):
        return dm.dataloader(split)
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split!r}: use train, val or test")
    return getattr(dm, f"{split}_dataloader")()


def _ids(dm: L.LightningDataModule, split: str, n: int) -> list[str]:
    if hasattr(dm, "sample_ids"):
        ids = list(dm.sample_ids(split))
        if len(ids) != n:
            raise DataError(f"{type(dm).__name__}: {len(ids)} ids for {n} predictions in {split}")
        return ids
    return [str(i) for i in range(n)]


def labels_from_probs(probs: torch.Tensor, task_type: str, threshold: float) -> np.ndarray:
    """Predicted labels: ``P(1) >= threshold`` (binary), per label (multi-label), else argmax."""
    p = probs.numpy()
    if task_type in (BINARY, MULTILABEL):
        return (p >= threshold).astype(np.int64)
    return p.argmax(axis=1).astype(np.int64)


def write_predictions(
    path: Path,
    ids: list[str],
    probs: torch.Tensor,
    pred: np.ndarray,
    target: torch.Tensor | None,
    task_type: str,
    class_names: list[str],
) -> Path:
    """One row per sample: id, class probabilities, prediction and (if known) the target."""
    p = probs.numpy()
    if task_type == BINARY:
        prob_cols, p = ["prob"], p.reshape(-1, 1)
    else:
        prob_cols = [f"prob_{name}" for name in class_names]
    if task_type == MULTILABEL:
        pred_cols = [f"pred_{name}" for name in class_names]
        target_cols = [f"target_{name}" for name in class_names]
    else:
        pred_cols, target_cols = ["pred"], ["target"]
    pred = pred.reshape(len(ids), -1)
    t = None if target is None else target.numpy().reshape(len(ids), -1)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", *prob_cols, *pred_cols, *(target_cols if t is not None else [])])
        for i, row_id in enumerate(ids):
            row = [row_id, *(f"{v:.6f}" for v in p[i]), *pred[i].tolist()]
            writer.writerow(row + (t[i].tolist() if t is not None else []))
    return path


def run(
    cfg: DictConfig,
    task: Any,
    dm: L.LightningDataModule,
    ckpt: Path,
    *,
    split: str = "test",
    output: str | None = None,
) -> dict[str, Path]:
    """Predict ``split`` (and, for a competition, its test zip); returns the files written."""
    dm.setup("predict")
    if getattr(dm, "num_classes", task.num_classes) != task.num_classes:
        raise DataError(
            f"checkpoint {ckpt} was trained for {task.num_classes} classes but data="
            f"{cfg.data.name} has {dm.num_classes}; predict with the dataset it was trained on."
        )
    name = str(cfg.name)
    out_dir = Path(output) if output else Path(cfg.paths.get("predictions", "predictions")) / name
    threshold = float(task.hparams.threshold)
    accelerator = eval_accelerator(cfg)
    class_names = list(getattr(dm, "class_names", [str(i) for i in range(task.num_classes)]))
    written: dict[str, Path] = {}

    splits = [split]
    competition = hasattr(dm, "submission_dataloader")
    if competition and split != SUBMISSION_SPLIT:
        splits.append(SUBMISSION_SPLIT)
    flips = tta.flips_from_config(cfg)  # test-time augmentation, as in `evaluate`
    for current in splits:
        out = tta.predict(task, _loader(dm, current), accelerator, flips)
        ids = _ids(dm, current, len(out["probs"]))
        pred = labels_from_probs(out["probs"], task.task_type, threshold)
        labelled = current != SUBMISSION_SPLIT
        written[current] = write_predictions(
            out_dir / f"{current}.csv",
            ids,
            out["probs"],
            pred,
            out["target"] if labelled else None,
            task.task_type,
            class_names,
        )
        log.info("predictions for %s (%d samples) -> %s", current, len(ids), written[current])
        if current == SUBMISSION_SPLIT:
            written.update(_submission(cfg, dm, ids, pred, out_dir))
    return written


def _submission(
    cfg: DictConfig, dm: Any, ids: list[str], pred: np.ndarray, out_dir: Path
) -> dict[str, Path]:
    """Write and validate ``submissions/<name>.csv``; score it when a solution is known."""
    from medpipe.kaggle.submission import read_labels_csv, validate_submission, write_submission

    if pred.ndim != 1:
        raise DataError("a Kaggle id,label submission needs one binary label per id")
    sample = dm.sample_submission_path
    path = Path(cfg.paths.get("submissions", "submissions")) / f"{cfg.name}.csv"
    write_submission(path, ids, pred.tolist(), sample_submission=sample)
    report = validate_submission(path, sample)
    counts = ", ".join(f"{k}: {v}" for k, v in report.label_counts.items())
    log.info("submission %s: %d rows (labels %s), valid", path, report.rows, counts)
    files = {"submission_csv": path}
    solution = dm.solution_path
    if solution is not None:
        truth = read_labels_csv(solution)
        got = dict(zip(ids, pred.tolist(), strict=True))
        missing = [i for i in truth if i not in got]
        if missing:
            raise DataError(f"{solution} has ids the test zip lacks, e.g. {missing[:5]}")
        correct = sum(int(got[i] == label) for i, label in truth.items())
        board = {"accuracy": correct / len(truth), "n": len(truth), "submission": str(path)}
        write_json(out_dir / "leaderboard.json", board)
        log.info(
            "rehearsal leaderboard: accuracy %.4f on %d held-out cells",
            board["accuracy"],
            len(truth),
        )
        files["leaderboard"] = out_dir / "leaderboard.json"
    return files
