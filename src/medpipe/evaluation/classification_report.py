"""Test-split report for classification tasks: metrics with CIs, calibration, plots, Grad-CAM,
model card.

Outputs (all written atomically), for experiment ``<name>``:

- ``metrics/<name>.json`` (DVC metrics): headline metrics at the configured threshold
  (accuracy, balanced_accuracy, precision, recall, specificity, f1, f1_macro, roc_auc, pr_auc,
  mcc, kappa), ``loss``, ``ece``, ``n_train/n_val/n_test``; nested: ``ci`` (bootstrap CIs),
  ``threshold`` / ``tuned`` / ``ci_tuned`` (binary: threshold tuned on validation),
  ``calibration`` (ECE and NLL before/after temperature scaling), ``per_class``, ``tta``;
- ``reports/<name>/``: ``roc.csv``, ``pr.csv``, ``predictions.csv``, ``calibration.csv``,
  ``calibration_scaled.csv``, ``training_curves.csv`` (DVC plots) and ``roc.png``, ``pr.png``,
  ``confusion_matrix.png``, ``confusion_matrix_normalized.png``, ``reliability.png``,
  ``training_curves.png``, ``gradcam.png`` + ``gradcam/*.png``, and ``model_card.md``.

Everything is computed once from the test (and validation) outputs of the checkpoint; the
settings are ``task.evaluation`` (see :mod:`medpipe.evaluation.settings`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from medpipe.data.sources import md5sum
from medpipe.errors import DataError
from medpipe.evaluation import calibration, curves, gradcam, model_card, plots, tta
from medpipe.evaluation.bootstrap import bootstrap_ci
from medpipe.evaluation.inference import eval_accelerator
from medpipe.evaluation.metrics import BINARY, MULTILABEL
from medpipe.evaluation.report_metrics import (
    HEADLINE,
    clean,
    confusion_matrix,
    headline_metrics,
    per_class_metrics,
    predicted_labels,
)
from medpipe.evaluation.settings import EvaluationSettings, settings_from_config
from medpipe.evaluation.thresholds import tune_threshold
from medpipe.io import write_json
from medpipe.tasks.classification import ClassificationTask

log = logging.getLogger(__name__)


def check_compatible(
    cfg: DictConfig, task: ClassificationTask, dm: L.LightningDataModule, ckpt: Path
) -> None:
    """The checkpoint must fit the dataset: same number of classes, channels and task type."""
    if dm.num_classes != task.num_classes:
        raise DataError(
            f"checkpoint {ckpt} was trained for {task.num_classes} classes but data={cfg.data.name} "
            f"has {dm.num_classes}; evaluate it on the dataset it was trained on."
        )
    in_channels = task.hparams.get("in_channels")
    if in_channels is not None and int(in_channels) != int(dm.channels):
        raise DataError(
            f"checkpoint {ckpt} expects {in_channels}-channel images but data={cfg.data.name} "
            f"gives {dm.channels}; set data.channels={in_channels} or use the matching checkpoint."
        )
    if task.task_type != dm.task_type:
        raise DataError(
            f"checkpoint {ckpt} is a {task.task_type} model but data={cfg.data.name} is "
            f"{dm.task_type}; evaluate it on the dataset it was trained on."
        )


def split_loader(dm: L.LightningDataModule, split: str) -> Any | None:
    """The DataModule's loader for ``split``, or None when the split does not exist / is empty."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        sizes = dm.split_sizes() if hasattr(dm, "split_sizes") else {}
    except (KeyError, AttributeError):
        sizes = {}
    if sizes and int(sizes.get(split, 0) or 0) == 0:
        return None
    getter = getattr(dm, f"{split}_dataloader", None)
    if getter is None:
        return None
    try:
        loader = getter()
    except (MisconfigurationException, NotImplementedError, KeyError):
        return None
    if loader is None or (hasattr(loader, "__len__") and len(loader) == 0):
        return None
    return loader


def _nll(logits: torch.Tensor, target: torch.Tensor, task_type: str) -> float:
    return float(calibration.scaled_loss(logits, target, task_type))


def _calibration(
    test: dict[str, torch.Tensor],
    val: dict[str, torch.Tensor] | None,
    task_type: str,
    num_classes: int,
    s: EvaluationSettings,
) -> tuple[dict[str, Any], list[dict], list[dict] | None]:
    """ECE/NLL before and (if on and a validation split exists) after temperature scaling."""
    probs, logits, target = test["probs"], test["logits"], test["target"]
    bins = [b.as_dict() for b in calibration.reliability_bins(probs, target, task_type, s.bins)]
    out: dict[str, Any] = {
        "bins": s.bins,
        "ece": calibration.expected_calibration_error(
            probs, target, task_type, num_classes, s.bins
        ),
        "nll": _nll(logits, target, task_type),
        "temperature": None,
    }
    scaled_bins = None
    if s.temperature_scaling and val is not None:
        t = calibration.fit_temperature(val["logits"], val["target"], task_type)
        scaled = calibration.apply_temperature(logits, t, task_type)
        out.update(
            temperature=t,
            ece_scaled=calibration.expected_calibration_error(
                scaled, target, task_type, num_classes, s.bins
            ),
            nll_scaled=_nll(logits / t, target, task_type),
        )
        scaled_bins = [
            b.as_dict() for b in calibration.reliability_bins(scaled, target, task_type, s.bins)
        ]
    elif s.temperature_scaling:
        out["note"] = "temperature scaling skipped: the dataset has no validation split"
    return out, bins, scaled_bins


def split_class_counts(
    dm: L.LightningDataModule,
    class_names: list[str],
    known: dict[str, torch.Tensor],
) -> dict[str, dict[str, int]]:
    """``{split: {class: count}}`` from the datasets' labels, else from the scored targets."""
    out: dict[str, dict[str, int]] = {}
    datasets = getattr(dm, "datasets", None) or {}
    for split in ("train", "val", "test"):
        labels = getattr(datasets.get(split), "labels", None) if split in datasets else None
        if labels is None and split in known:
            labels = known[split]
        if labels is None:
            continue
        t = torch.as_tensor(labels)
        if t.ndim == 2 and t.shape[1] == len(class_names):  # multi-label: positives per label
            counts = t.long().sum(dim=0)
        else:
            counts = torch.bincount(t.long().reshape(-1), minlength=len(class_names))
        out[split] = {c: int(counts[i]) for i, c in enumerate(class_names)}
    return out


def checkpoint_info(ckpt: Path) -> dict[str, Any]:
    """MD5, epoch and global step of the checkpoint file (for the model card)."""
    info: dict[str, Any] = {"md5": md5sum(ckpt)}
    try:
        data = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
        info.update(epoch=data.get("epoch"), global_step=data.get("global_step"))
    except Exception as exc:  # the card can live without these two numbers
        log.debug("could not read epoch/step from %s: %s", ckpt, exc)
    return info


def run(
    cfg: DictConfig, task: ClassificationTask, dm: L.LightningDataModule, ckpt: Path
) -> dict[str, Any]:
    """Evaluate ``task`` on ``dm``'s test split; returns the dict written to ``metrics/<name>.json``."""
    s = settings_from_config(cfg)  # bad settings fail before any data is read
    name = str(cfg.name)
    report_dir = Path(cfg.paths.reports) / name
    if s.gradcam_layer and s.gradcam_per_class > 0:
        gradcam.named_layer(task, s.gradcam_layer)  # a bad layer name fails before any work
    dm.setup("test")
    check_compatible(cfg, task, dm, ckpt)
    test_loader = split_loader(dm, "test")
    if test_loader is None:
        raise DataError(
            f"data={cfg.data.name} has no labelled test split to evaluate on; configure one "
            "(e.g. a split fraction in conf/data) or use `medpipe predict` for unlabelled data."
        )
    accelerator = eval_accelerator(cfg)
    test = tta.predict(task, test_loader, accelerator, s.flips)
    val_loader = split_loader(dm, "val")
    val = tta.predict(task, val_loader, accelerator, s.flips) if val_loader is not None else None

    task_type, n_classes = task.task_type, task.num_classes
    names = [str(c) for c in dm.class_names]
    probs, target = test["probs"].float(), test["target"]
    base = float(task.hparams.get("threshold", 0.5))

    def scores(p: torch.Tensor, t: torch.Tensor, thr: float = base) -> dict[str, float]:
        return headline_metrics(p, t, task_type, n_classes, threshold=thr)

    metrics: dict[str, Any] = scores(probs, target)
    with torch.no_grad():
        metrics["loss"] = float(task.loss(test["logits"], target))
    metrics.update({f"n_{k}": int(v) for k, v in dm.split_sizes().items()})
    keys = [k for k in HEADLINE if k in metrics]
    boot = {
        "resamples": s.resamples,
        "confidence": s.confidence,
        "seed": s.seed,
        "stratified": s.stratified,
    }
    metrics["ci"] = bootstrap_ci(scores, probs, target, keys=keys, **boot)

    # Binary: threshold tuned on validation, metrics at both thresholds.
    if task_type == BINARY:
        thr_info: dict[str, Any] = {"default": base, "method": s.threshold_method}
        if s.threshold_method != "none" and val is None:
            thr_info["note"] = "not tuned: the dataset has no validation split"
        elif s.threshold_method != "none":
            choice = tune_threshold(
                val["probs"].numpy(),
                val["target"].numpy(),
                s.threshold_method,
                s.target_sensitivity,
            )
            assert choice is not None
            thr_info.update(choice.as_dict())
            if s.threshold_method == "sensitivity":
                thr_info["target_sensitivity"] = s.target_sensitivity
            tuned_value = choice.threshold
            metrics["tuned"] = scores(probs, target, tuned_value)
            metrics["ci_tuned"] = bootstrap_ci(
                lambda p, t: scores(p, t, tuned_value), probs, target, keys=keys, **boot
            )
        metrics["threshold"] = thr_info

    cal, bins, scaled_bins = _calibration(test, val, task_type, n_classes, s)
    metrics["ece"] = cal["ece"]
    metrics["calibration"] = cal
    metrics["per_class"] = per_class_metrics(probs, target, task_type, names, threshold=base)
    metrics["tta"] = list(s.flips)
    metrics = clean(metrics)
    assert isinstance(metrics, dict)

    figures = _write_plots(report_dir, test, task, names, name, base, cal, bins, scaled_bins, cfg)
    explanations = gradcam.explain(
        task,
        test_loader.dataset,
        probs,
        target,
        task_type=task_type,
        class_names=names,
        out_dir=report_dir / "gradcam",
        per_class=s.gradcam_per_class,
        threshold=base,
        target_layer=s.gradcam_layer,
    )
    plots.save_gradcam_grid(
        report_dir / "gradcam.png", explanations, names, s.gradcam_per_class, f"Grad-CAM: {name}"
    )
    figures["Grad-CAM overlays"] = "gradcam.png"

    known = {"test": target}
    if val is not None:
        known["val"] = val["target"]
    card = model_card.CardInputs(
        cfg=cfg,
        checkpoint=ckpt,
        checkpoint_info=checkpoint_info(ckpt),
        task_type=task_type,
        class_names=names,
        metrics=metrics,
        split_counts=split_class_counts(dm, names, known),
        settings=s.as_dict(),
        plots=figures,
        hparams=_plain(dict(task.hparams)),
    )
    model_card.write(report_dir / "model_card.md", card)
    # Last: DVC's metrics file only appears once the whole report has been written.
    write_json(Path(cfg.paths.metrics) / f"{name}.json", metrics)

    images = {Path(f).stem: report_dir / f for f in figures.values()}
    images.update({f"gradcam/{e.path.stem}": e.path for e in explanations})
    plots.log_to_wandb(cfg, images, metrics)
    log.info(
        "test metrics for %s: %s",
        name,
        {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
    )
    return metrics


def _write_plots(
    report_dir: Path,
    out: dict[str, torch.Tensor],
    task: ClassificationTask,
    names: list[str],
    title: str,
    threshold: float,
    cal: dict[str, Any],
    bins: list[dict],
    scaled_bins: list[dict] | None,
    cfg: DictConfig,
) -> dict[str, str]:
    """CSV (DVC plots) and PNG figures; returns ``{figure title: PNG file name}``."""
    probs, target = out["probs"].float(), out["target"]
    p_np, t_np = probs.numpy(), target.numpy()
    task_type = task.task_type
    figures: dict[str, str] = {}

    rows = plots.roc_points(p_np, t_np, task_type, names)
    plots.write_csv(report_dir / "roc.csv", rows, ["class", "fpr", "tpr", "threshold"])
    plots.save_roc_png(report_dir / "roc.png", rows, f"ROC: {title}")
    figures["ROC curve"] = "roc.png"

    pr = curves.pr_points(p_np, t_np, task_type, names)
    plots.write_csv(report_dir / "pr.csv", pr, ["class", "recall", "precision", "threshold"])
    plots.save_pr_png(report_dir / "pr.png", pr, f"Precision-recall: {title}")
    figures["Precision-recall curve"] = "pr.png"

    if task_type != MULTILABEL:  # a confusion matrix is not defined for multi-label outputs
        pred = predicted_labels(probs, task_type, threshold).numpy()
        pairs = [
            {"actual": names[int(a)], "predicted": names[int(p)]}
            for a, p in zip(t_np.reshape(-1), pred, strict=True)
        ]
        plots.write_csv(report_dir / "predictions.csv", pairs, ["actual", "predicted"])
        matrix = confusion_matrix(probs, target, task_type, len(names), threshold).numpy()
        plots.save_confusion_png(
            report_dir / "confusion_matrix.png", matrix, names, f"Confusion: {title}"
        )
        plots.save_confusion_png(
            report_dir / "confusion_matrix_normalized.png",
            matrix,
            names,
            f"Confusion (row-normalised): {title}",
            normalized=True,
        )
        figures["Confusion matrix (counts)"] = "confusion_matrix.png"
        figures["Confusion matrix (normalised by true class)"] = "confusion_matrix_normalized.png"

    fields = ["bin_lower", "bin_upper", "count", "confidence", "observed"]
    plots.write_csv(report_dir / "calibration.csv", bins, fields)
    # Always written (header only without temperature scaling) so DVC finds every plot file.
    plots.write_csv(report_dir / "calibration_scaled.csv", scaled_bins or [], fields)
    binary_like = task_type in (BINARY, MULTILABEL)
    plots.save_reliability_png(
        report_dir / "reliability.png",
        bins,
        f"Reliability: {title}",
        ece=_finite(cal["ece"]),
        scaled_bins=scaled_bins,
        scaled_ece=_finite(cal.get("ece_scaled")) if scaled_bins is not None else None,
        temperature=cal.get("temperature"),
        xlabel="Predicted probability" if binary_like else "Confidence (max probability)",
        ylabel="Observed frequency" if binary_like else "Accuracy",
    )
    figures["Reliability diagram"] = "reliability.png"

    history = curves.training_curves(curves.find_training_log(cfg))
    plots.write_csv(
        report_dir / "training_curves.csv", history, ["epoch", *curves.TRAINING_COLUMNS.values()]
    )
    plots.save_training_png(report_dir / "training_curves.png", history, f"Training: {title}")
    figures["Training curves"] = "training_curves.png"
    return figures


def _plain(value: Any) -> Any:
    """Hyper-parameters as plain YAML-able data (tuples, DictConfigs -> lists, dicts)."""
    from omegaconf import OmegaConf

    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.nan
