"""The model card: data checksums and counts, config, metrics with CIs, use and caveats."""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

from medpipe.evaluation import model_card


def _cfg(tmp_path, name="dermamnist", flag="dermamnist"):
    root = tmp_path / "raw" / name
    root.mkdir(parents=True)
    (root / f"{flag}.npz").write_bytes(b"not really an npz, but bytes to hash")
    return OmegaConf.create(
        {
            "name": f"{name}_cnn",
            "seed": 42,
            "data": {"_target_": "x.Y", "name": name, "flag": flag, "size": 28, "root": str(root)},
            "model": {"name": "cnn"},
            "task": {"kind": "classification", "optimizer": {"name": "adamw", "lr": 0.002}},
            "trainer": {"max_epochs": 4},
            "paths": {"metrics": "metrics"},
        }
    )


def _inputs(cfg, tmp_path, **metric_overrides):
    metrics = {
        "accuracy": 0.8125,
        "roc_auc": 0.9,
        "recall": 0.7,
        "mcc": float("nan"),
        "loss": 0.41,
        "n_test": 160,
        "ci": {"accuracy": {"low": 0.75, "high": 0.87, "n": 1000}},
        "threshold": {
            "default": 0.5,
            "method": "youden",
            "value": 0.37,
            "val_sensitivity": 0.9,
            "val_specificity": 0.8,
        },
        "tuned": {"accuracy": 0.83, "roc_auc": 0.9, "recall": 0.88},
        "ci_tuned": {"accuracy": {"low": 0.77, "high": 0.89, "n": 1000}},
        "calibration": {
            "bins": 15,
            "ece": 0.08,
            "nll": 0.41,
            "temperature": 1.7,
            "ece_scaled": 0.03,
            "nll_scaled": 0.38,
        },
        "per_class": {
            "nevus": {
                "precision": 0.8,
                "recall": 0.7,
                "f1": 0.75,
                "roc_auc": 0.9,
                "pr_auc": 0.85,
                "support": 100,
            }
        },
        **metric_overrides,
    }
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights")
    return model_card.CardInputs(
        cfg=cfg,
        checkpoint=ckpt,
        checkpoint_info={
            "md5": hashlib.md5(b"weights").hexdigest(),
            "epoch": 3,
            "global_step": 120,
        },
        task_type="binary-class",
        class_names=["nevus", "melanoma"],
        metrics=metrics,
        split_counts={
            "train": {"nevus": 70, "melanoma": 30},
            "test": {"nevus": 100, "melanoma": 60},
        },
        settings={"bootstrap": {"resamples": 1000, "confidence": 0.95, "seed": 0}},
        plots={"ROC curve": "roc.png"},
        hparams={"model": {"name": "cnn"}, "optimizer": {"lr": 0.002}},
    )


def test_card_has_every_required_part(tmp_path):
    cfg = _cfg(tmp_path)
    path = model_card.write(tmp_path / "reports" / "model_card.md", _inputs(cfg, tmp_path))
    text = path.read_text()
    # data: source, checksum of the real file, split counts per class
    digest = hashlib.md5(b"not really an npz, but bytes to hash").hexdigest()
    assert f"| dermamnist.npz | {digest} |" in text
    assert "| train | 100 | 70 | 30 |" in text and "| test | 160 | 100 | 60 |" in text
    assert "flag: dermamnist" in text  # the data config (split method, preprocessing)
    # model and training config
    assert "name: cnn" in text and "lr: 0.002" in text and "max_epochs: 4" in text
    assert "epoch 3, global step 120" in text
    # metrics with CIs, at both thresholds, and calibration
    assert "| accuracy | 0.8125 | [0.7500, 0.8700] | 0.8300 | [0.7700, 0.8900] |" in text
    assert "| MCC | n/a |" in text  # NaN is shown as n/a, never as a number
    assert "youden" in text and "0.3700" in text
    assert "ECE 0.0300" in text and "T = 1.700" in text
    assert "| nevus | 100 | 0.8000 |" in text
    # intended use and dataset caveats
    assert "not for clinical use" in text
    assert "duplicates" in text and "same lesion" in text
    assert "[ROC curve](roc.png)" in text


def test_caveats_per_dataset(tmp_path):
    pneu = model_card.dataset_caveats({"name": "pneumoniamnist", "flag": "pneumoniamnist"})
    assert any("image level" in c for c in pneu)
    malaria = model_card.dataset_caveats({"name": "malaria_patient"})
    assert any("patient-level split" in c for c in malaria)
    other = model_card.dataset_caveats({"name": "somethingelse"})
    assert other == list(model_card.GENERIC_CAVEATS)


def test_large_folders_are_summarised(tmp_path):
    for i in range(model_card.MAX_HASHED_FILES + 1):
        (tmp_path / f"{i}.png").write_bytes(b"x" * 10)
    files, note = model_card.data_files(tmp_path)
    assert files == [] and note.startswith(f"{model_card.MAX_HASHED_FILES + 1} files")
    assert model_card.data_files(tmp_path / "missing")[1].startswith("data folder")
