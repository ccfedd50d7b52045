"""The `evaluate` report end to end on a tiny real run (BreastMNIST), every metric checked
against scikit-learn, plus the report metrics for the other task types and the bad inputs."""

from __future__ import annotations

import csv
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from sklearn import metrics as skm

from medpipe.cli import main
from medpipe.config import compose
from medpipe.data.medmnist import MedMNISTDataModule
from medpipe.evaluation import plots
from medpipe.evaluation.inference import load_task, predict
from medpipe.evaluation.report_metrics import headline_metrics, per_class_metrics
from medpipe.stages import evaluate, fetch, train
from tests.conftest import REPO

RNG = np.random.default_rng(11)
OLD_KEYS = ("accuracy", "f1", "f1_macro", "roc_auc", "precision", "recall", "specificity", "loss")
NEW_KEYS = ("balanced_accuracy", "pr_auc", "mcc", "kappa", "ece")


class NoTestSplitDataModule(MedMNISTDataModule):
    """BreastMNIST as if it shipped without a test split."""

    def split_sizes(self) -> dict[str, int]:
        return {k: v for k, v in super().split_sizes().items() if k != "test"}

    def test_dataloader(self):
        raise MisconfigurationException("`test_dataloader` must be implemented")


def _overrides(root: Path, name: str = "tiny") -> list[str]:
    return [
        "data=breastmnist",
        "model=cnn",
        "model.channels=[8,16]",
        "model.hidden=[16]",
        f"name={name}",
        f"paths.raw={root}/raw",
        f"paths.models={root}/models",
        f"paths.metrics={root}/metrics",
        f"paths.reports={root}/reports",
        f"paths.logs={root}/logs",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.log_every_n_steps=1",
        "task.evaluation.bootstrap.resamples=200",
    ]


_RUNS: dict[Path, dict] = {}


def tiny_run(tmp_path_factory, shared_data) -> dict:
    """fetch -> train -> evaluate of a tiny CNN, in-process, once per test session (the
    notebook test reuses it): ``{root, cfg, ckpt, metrics}``."""
    root = tmp_path_factory.getbasetemp() / "tiny_report_run"
    if root not in _RUNS:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(REPO)
            mp.setenv("MEDPIPE_DATA_MIRROR", str(shared_data))
            cfg = compose(_overrides(root))
            fetch.run(cfg)
            ckpt = train.run(cfg)
            metrics = evaluate.run(cfg)
        _RUNS[root] = {"root": root, "cfg": cfg, "ckpt": ckpt, "metrics": metrics}
    return _RUNS[root]


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    return tiny_run(tmp_path_factory, shared_data)


@pytest.fixture(scope="module")
def outputs(run):
    """The checkpoint's raw test/val outputs, recomputed independently of the report."""
    cfg = run["cfg"]
    task = load_task(cfg, run["ckpt"])
    dm = MedMNISTDataModule(flag="breastmnist", root=cfg.data.root, batch_size=64)
    test = predict(task, dm.test_dataloader())
    val = predict(task, dm.val_dataloader())
    return {k: v.numpy() for k, v in test.items()}, {k: v.numpy() for k, v in val.items()}


def test_metrics_json_is_what_was_returned(run):
    written = json.loads((run["root"] / "metrics" / "tiny.json").read_text())
    assert written == json.loads(json.dumps(run["metrics"]))
    for key in (*OLD_KEYS, *NEW_KEYS):
        assert isinstance(written[key], float), key
    assert (written["n_train"], written["n_val"], written["n_test"]) == (546, 78, 156)


def test_headline_metrics_match_sklearn(run, outputs):
    m = run["metrics"]
    test, _ = outputs
    p, y = test["probs"], test["target"]
    pred = (p > 0.5).astype(int)
    tn, fp, _, _ = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "recall": skm.recall_score(y, pred),
        "specificity": tn / (tn + fp),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "f1_macro": skm.f1_score(y, pred, average="macro", zero_division=0),
        "roc_auc": skm.roc_auc_score(y, p),
        "pr_auc": skm.average_precision_score(y, p),
        "mcc": skm.matthews_corrcoef(y, pred),
        "kappa": skm.cohen_kappa_score(y, pred),
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-5), key
    # the training objective: BCE with pos_weight = w1 / w0 (task.class_weights, default
    # balanced: n / (2 n_c) over the training labels -> n0 / n1)
    train_y = np.load(Path(run["cfg"].data.root) / "breastmnist.npz")["train_labels"].reshape(-1)
    pos_weight = (train_y == 0).sum() / (train_y == 1).sum()
    assert run["cfg"].task.class_weights == "balanced"
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(test["logits"]).reshape(-1),
        torch.tensor(y).float(),
        pos_weight=torch.tensor([pos_weight], dtype=torch.float32),
    )
    assert m["loss"] == pytest.approx(float(loss), abs=1e-5)
    f1_per_class = skm.f1_score(y, pred, average=None, zero_division=0)
    for c, name in enumerate(["malignant", "normal, benign"]):
        per = m["per_class"][name]
        assert per["f1"] == pytest.approx(f1_per_class[c], abs=1e-5)
        assert per["support"] == int((y == c).sum())
        score = p if c == 1 else 1 - p
        assert per["roc_auc"] == pytest.approx(skm.roc_auc_score(y == c, score), abs=1e-5)
        assert per["pr_auc"] == pytest.approx(skm.average_precision_score(y == c, score), abs=1e-5)


def test_confidence_intervals(run):
    m = run["metrics"]
    for key in ("accuracy", "roc_auc", "balanced_accuracy", "f1_macro"):
        ci = m["ci"][key]
        assert ci["low"] <= m[key] <= ci["high"], key
        assert ci["high"] - ci["low"] > 0.01, key  # 156 test images: never a point interval
        assert ci["n"] == 200


def test_threshold_tuned_on_validation(run, outputs):
    m = run["metrics"]
    test, val = outputs
    thr = m["threshold"]
    assert thr["default"] == 0.5 and thr["method"] == "youden"
    t = thr["value"]
    pv, yv = val["probs"], val["target"]
    fpr, tpr, _ = skm.roc_curve(yv, pv)
    sens = ((pv > t) & (yv == 1)).sum() / (yv == 1).sum()
    spec = ((pv <= t) & (yv == 0)).sum() / (yv == 0).sum()
    assert sens + spec - 1 == pytest.approx((tpr - fpr).max(), abs=1e-9)  # Youden's optimum
    assert (thr["val_sensitivity"], thr["val_specificity"]) == pytest.approx((sens, spec))
    pred = (test["probs"] > t).astype(int)
    assert m["tuned"]["accuracy"] == pytest.approx(
        skm.accuracy_score(test["target"], pred), abs=1e-6
    )
    assert m["tuned"]["recall"] == pytest.approx(skm.recall_score(test["target"], pred), abs=1e-6)
    assert set(m["ci_tuned"]) == set(m["ci"])


def test_calibration_hand_computed(run, outputs):
    cal = run["metrics"]["calibration"]
    test, _ = outputs
    p, y = test["probs"].astype(np.float64), test["target"]
    idx = np.minimum((p * 15).astype(int), 15)
    ece = sum(
        (idx == b).mean() * abs(y[idx == b].mean() - p[idx == b].mean())
        for b in range(16)
        if (idx == b).any()
    )
    assert cal["ece"] == pytest.approx(ece, abs=1e-5)
    assert run["metrics"]["ece"] == cal["ece"]
    assert cal["temperature"] > 0
    assert cal["nll_scaled"] <= cal["nll"] + 0.05  # fitted on val, not on test: no guarantee


def test_report_files(run):
    report = run["root"] / "reports" / "tiny"
    for png in (
        "roc.png",
        "pr.png",
        "confusion_matrix.png",
        "confusion_matrix_normalized.png",
        "reliability.png",
        "training_curves.png",
        "gradcam.png",
    ):
        assert (report / png).stat().st_size > 2000, png
    headers = {
        "roc.csv": "class,fpr,tpr,threshold",
        "pr.csv": "class,recall,precision,threshold",
        "predictions.csv": "actual,predicted",
        "calibration.csv": "bin_lower,bin_upper,count,confidence,observed",
        "calibration_scaled.csv": "bin_lower,bin_upper,count,confidence,observed",
        "training_curves.csv": "epoch,train_loss,val_loss,val_accuracy,val_f1,val_roc_auc",
    }
    for name, header in headers.items():
        assert (report / name).read_text().splitlines()[0] == header, name
    with open(report / "training_curves.csv") as fh:
        history = list(csv.DictReader(fh))
    assert [r["epoch"] for r in history] == ["0", "1"]
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["val_roc_auc"]) <= 1 for r in history)
    with open(report / "calibration.csv") as fh:
        assert sum(int(r["count"]) for r in csv.DictReader(fh)) == 156
    cams = sorted(p.name for p in (report / "gradcam").glob("*.png"))
    assert cams and all(("_correct_" in n) or ("_wrong_" in n) for n in cams)
    assert len(cams) <= 2 * 2 * 2  # per_class=2, correct + wrong, two classes
    assert not list(report.rglob("*.tmp")), "no temporary files may be left behind"


def test_model_card(run, shared_data):
    import hashlib

    text = (run["root"] / "reports" / "tiny" / "model_card.md").read_text()
    md5 = hashlib.md5((shared_data / "medmnist" / "breastmnist.npz").read_bytes()).hexdigest()
    assert md5 in text
    assert "| test | 156 | 42 | 114 |" in text
    assert "not for clinical use" in text
    assert f"{run['metrics']['accuracy']:.4f}" in text
    assert "normal+benign" in text  # BreastMNIST's label caveat


def test_tta_sensitivity_threshold_and_switches(run):
    cfg = compose(
        [
            *_overrides(run["root"], name="tiny_tta"),
            "task.evaluation.tta.flips=[horizontal]",
            "task.evaluation.threshold.method=sensitivity",
            "task.evaluation.threshold.target_sensitivity=0.95",
            "task.evaluation.bootstrap.resamples=0",
            "task.evaluation.gradcam.per_class=0",
            "task.evaluation.calibration.temperature_scaling=false",
        ],
        params_file=None,
    )
    m = evaluate.run(cfg, checkpoint=run["ckpt"])
    assert m["tta"] == ["horizontal"]
    assert m["ci"] == {}
    assert m["threshold"]["method"] == "sensitivity"
    assert m["threshold"]["val_sensitivity"] >= 0.95
    assert m["calibration"]["temperature"] is None
    assert m["roc_auc"] != run["metrics"]["roc_auc"] or m["loss"] != run["metrics"]["loss"]
    report = run["root"] / "reports" / "tiny_tta"
    assert not list((report / "gradcam").glob("*.png"))
    assert (report / "gradcam.png").is_file()
    assert (report / "calibration_scaled.csv").read_text().count("\n") == 1  # header only


def _cli(run, *extra: str) -> tuple[int, str]:
    return main(["evaluate", *_overrides(run["root"]), *extra])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--checkpoint", "no/such/best.ckpt"], "no/such/best.ckpt does not exist"),
        (["task.evaluation.bootstrap.resample=5"], "task.evaluation.bootstrap.resample"),
        (["task.evaluation.threshold.method=f1"], "threshold.method='f1'"),
        (["task.evaluation.gradcam.target_layer=model.nope"], "target_layer='model.nope'"),
        (["task.evaluation.tta.flips=[sideways]"], "tta.flips: 'sideways'"),
        (
            ["data._target_=tests.evaluation.test_classification_report.NoTestSplitDataModule"],
            "no labelled test split",
        ),
    ],
)
def test_bad_input_is_one_clear_line(run, extra, expected, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = _cli(run, *extra)
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err
    assert len(err.strip().splitlines()) == 1, err


def test_checkpoint_for_another_number_of_classes(run, tmp_path, capsys, monkeypatch):
    """An 8-class dataset (BloodMNIST layout, synthetic pixels) against the 2-class checkpoint."""
    monkeypatch.chdir(REPO)
    root = tmp_path / "bloodmnist"
    root.mkdir()
    arrays = {}
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = RNG.integers(0, 255, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = RNG.integers(0, 8, (n, 1), dtype=np.uint8)
    np.savez(root / "bloodmnist.npz", **arrays)
    code = main(
        [
            "evaluate",
            "data=medmnist",
            "data.flag=bloodmnist",
            f"data.root={root}",
            f"paths.metrics={tmp_path}/metrics",
            f"paths.reports={tmp_path}/reports",
            "--checkpoint",
            str(run["ckpt"]),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "trained for 2 classes" in err and "has 8" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "metrics").exists(), "nothing may be written for a rejected run"


# --- the report metrics for the other task types, against scikit-learn ---------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("task_type", ["multi-class", "ordinal-regression"])
def test_multiclass_and_ordinal_match_sklearn(task_type):
    y = RNG.integers(0, 5, 400)
    p = _softmax(RNG.normal(size=(400, 5)) + np.eye(5)[y] * 1.2)
    m = headline_metrics(torch.tensor(p), torch.tensor(y), task_type, 5)
    pred = p.argmax(1)
    onehot = np.eye(5)[y]
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-6)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-6
    )
    assert m["pr_auc"] == pytest.approx(
        skm.average_precision_score(onehot, p, average="macro"), abs=1e-6
    )
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred), abs=1e-6)
    weights = "quadratic" if task_type == "ordinal-regression" else None
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights=weights), abs=1e-6)
    per = per_class_metrics(torch.tensor(p), torch.tensor(y), task_type, list("abcde"))
    f1 = skm.f1_score(y, pred, average=None)
    auc = skm.roc_auc_score(onehot, p, average=None)
    for c, name in enumerate("abcde"):
        assert per[name]["f1"] == pytest.approx(f1[c], abs=1e-6)
        assert per[name]["roc_auc"] == pytest.approx(auc[c], abs=1e-6)
        assert per[name]["support"] == int((y == c).sum())


def test_multilabel_matches_sklearn():
    y = RNG.integers(0, 2, (300, 4))
    p = np.clip(y * 0.35 + RNG.random((300, 4)) * 0.65, 0, 1)
    m = headline_metrics(torch.tensor(p), torch.tensor(y), "multi-label", 4)
    pred = (p > 0.5).astype(int)
    bal = np.mean([skm.balanced_accuracy_score(y[:, j], pred[:, j]) for j in range(4)])
    kappa = np.mean([skm.cohen_kappa_score(y[:, j], pred[:, j]) for j in range(4)])
    assert m["balanced_accuracy"] == pytest.approx(bal, abs=1e-6)
    assert m["pr_auc"] == pytest.approx(
        skm.average_precision_score(y, p, average="macro"), abs=1e-6
    )
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y.ravel(), pred.ravel()), abs=1e-6)
    assert m["kappa"] == pytest.approx(kappa, abs=1e-6)
    per = per_class_metrics(torch.tensor(p), torch.tensor(y), "multi-label", list("wxyz"))
    assert per["x"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[:, 1], p[:, 1]), abs=1e-6)
    assert per["z"]["support"] == int(y[:, 3].sum())


def test_single_class_split_gives_undefined_not_wrong_numbers():
    m = headline_metrics(torch.tensor([0.2, 0.7, 0.9]), torch.tensor([1, 1, 1]), "binary-class", 2)
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])


# --- W&B --------------------------------------------------------------------------------------


class _FakeRun:
    def __init__(self) -> None:
        self.logged: list[dict] = []
        self.finished = False

    def log(self, payload: dict) -> None:
        self.logged.append(payload)

    def finish(self) -> None:
        self.finished = True


def _fake_wandb(monkeypatch, init=None) -> types.SimpleNamespace:
    fake = types.SimpleNamespace(run=None, calls=[], Image=lambda path: ("image", path))

    def _init(**kwargs):
        fake.calls.append(kwargs)
        fake.started = _FakeRun()
        return fake.started

    fake.init = init or _init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def test_plots_logged_to_wandb_only_when_configured(run, monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    fake = _fake_wandb(monkeypatch)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no credentials
    images = {"roc": run["root"] / "reports" / "tiny" / "roc.png"}
    assert not plots.log_to_wandb(run["cfg"], images, {"accuracy": 0.5})
    assert fake.calls == []
    cfg = OmegaConf.merge(
        OmegaConf.to_container(run["cfg"]), {"logger": {"wandb": {"project": "p"}}}
    )
    assert plots.log_to_wandb(cfg, images, {"accuracy": 0.5, "ci": {}})
    assert fake.calls[0]["mode"] == "offline" and fake.calls[0]["project"] == "p"
    payload = fake.started.logged[0]
    assert payload["evaluate/roc"] == ("image", str(images["roc"]))
    assert payload["test/accuracy"] == 0.5 and "test/ci" not in payload
    assert fake.started.finished

    def broken(**kwargs):
        raise RuntimeError("no network")

    _fake_wandb(monkeypatch, init=broken)
    assert not plots.log_to_wandb(cfg, images, {})  # logged as a warning, never raised
