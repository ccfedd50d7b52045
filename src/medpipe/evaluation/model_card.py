"""``reports/<experiment>/model_card.md``: what was trained on what, how well, and its limits.

Generated from the run (config, checkpoint, data files, the metrics just computed), after
Mitchell et al., "Model Cards for Model Reporting" (2019). No wall-clock time is written, so the
card of an unchanged run is byte-identical (DVC sees no change).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from medpipe.data.sources import md5sum
from medpipe.io import write_text

INTENDED_USE = (
    "Research and education, **not for clinical use**. This model has not been validated "
    "prospectively, on other sites or scanners, or against clinicians; it is not a medical "
    "device and must not inform the diagnosis or treatment of any person. Scores describe this "
    "test split only and will not transfer to a different population without re-validation."
)

GENERIC_CAVEATS = (
    "Test metrics hold for the test split's population and acquisition only; the bootstrap CIs "
    "cover sampling noise of that split, not distribution shift.",
    "Check whether the split is at image level or at patient/lesion level: an image-level split "
    "lets images of one patient sit in both training and test and inflates the scores.",
)

#: Known caveats per dataset (``data.name`` or ``data.flag``).
DATASET_CAVEATS: dict[str, tuple[str, ...]] = {
    "pneumoniamnist": (
        "Paediatric chest X-rays (children aged 1-5) from a single centre in Guangzhou "
        "(Kermany et al., 2018); not representative of adults or of other hospitals.",
        "MedMNIST keeps the source test set and splits the source training images 9:1 into "
        "train/val at image level, so images of one child can be in both train and val "
        "(validation scores and the tuned threshold can be optimistic).",
        "Images are downsampled to 28x28 (or 64-224): fine radiological findings are lost.",
        "Imbalanced: about 74% pneumonia in train, 63% in test; accuracy alone is misleading.",
    ),
    "breastmnist": (
        "BUSI breast ultrasound (Al-Dhabyani et al., 2020): 780 images of 600 women from one "
        "hospital; tiny test split (156 images), so the confidence intervals are wide.",
        "MedMNIST merges 'normal' and 'benign' into one class (label 1) against 'malignant' "
        "(label 0): the positive class of the binary metrics is normal+benign, not cancer.",
        "The 7:1:2 split is at image level; BUSI contains several images per patient and known "
        "near-duplicates and annotation artefacts, which can leak across splits.",
    ),
    "dermamnist": (
        "HAM10000 holds several images of the same lesion (about 7,500 lesions for 10,015 "
        "images); MedMNIST's 7:1:2 split is at image level, so duplicates of one lesion fall "
        "in train and test and inflate test scores.",
        "Strongly imbalanced (about 67% melanocytic nevi) and mostly light skin types.",
    ),
    "chestmnist": (
        "NIH ChestX-ray14 labels were text-mined from radiology reports and are noisy; "
        "several images per patient exist.",
    ),
    "malaria": (
        "NIH/NLM thin-smear cell images (Rajaraman et al., 2018) from about 200 patients in "
        "Chittagong: a random image-level split puts cells of one patient in train and test; "
        "use the patient-level split (patient code from the file name) for honest numbers.",
        "The shared offline mirror holds a derived copy (50x50 greyscale), not the original "
        "RGB cells.",
    ),
    "isic": (
        "ISIC 2017 dermoscopy: several images per lesion or patient are possible, labels of "
        "benign lesions are partly not histology-confirmed, and light skin types dominate.",
    ),
    "busi": (
        "BUSI breast ultrasound from one hospital; known near-duplicates and annotation "
        "artefacts (text, calipers) that a model can learn as shortcuts.",
    ),
}


def dataset_caveats(data_cfg: Mapping[str, Any]) -> list[str]:
    """Dataset-specific caveats (matched on data.name / data.flag prefixes) + generic ones."""
    keys = {str(data_cfg.get("name", "")).lower(), str(data_cfg.get("flag", "")).lower()}
    found: list[str] = []
    for name, caveats in DATASET_CAVEATS.items():
        if any(k == name or k.startswith(f"{name}_") for k in keys if k):
            found.extend(c for c in caveats if c not in found)
    return [*found, *GENERIC_CAVEATS]


MAX_HASHED_FILES = 20


def data_files(root: Path) -> tuple[list[dict[str, Any]], str | None]:
    """``([{file, md5, bytes}], note)`` for the data folder; folders of more than
    :data:`MAX_HASHED_FILES` files are summarised (DVC's ``dvc.lock`` holds their hash)."""
    if root.is_file():
        return [{"file": root.name, "md5": md5sum(root), "bytes": root.stat().st_size}], None
    if not root.is_dir():
        return [], f"data folder {root} not found"
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if len(files) > MAX_HASHED_FILES:
        total = sum(p.stat().st_size for p in files)
        return [], (
            f"{len(files)} files, {total / 1e6:.1f} MB under `{root}`; the folder's hash is in "
            "`dvc.lock` (fetch stage)"
        )
    return [
        {"file": str(p.relative_to(root)), "md5": md5sum(p), "bytes": p.stat().st_size}
        for p in files
    ], None


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _yaml(node: Any) -> str:
    data = OmegaConf.to_container(OmegaConf.create(node), resolve=True)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None).strip()


LABELS: dict[str, str] = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "precision": "precision (PPV)",
    "recall": "recall (sensitivity)",
    "specificity": "specificity",
    "f1": "F1",
    "f1_macro": "F1 (macro)",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC (average precision)",
    "mcc": "MCC",
    "kappa": "Cohen's kappa",
}


@dataclass
class CardInputs:
    """Everything the card shows; filled by the classification report."""

    cfg: DictConfig
    checkpoint: Path
    checkpoint_info: dict[str, Any]
    task_type: str
    class_names: list[str]
    metrics: dict[str, Any]
    split_counts: dict[str, dict[str, int]]
    settings: dict[str, Any]
    plots: dict[str, str] = field(default_factory=dict)  # title -> file name in the report dir
    hparams: dict[str, Any] = field(default_factory=dict)  # the checkpoint's hyper-parameters


def render(inp: CardInputs) -> str:
    """The model card as Markdown."""
    cfg, m = inp.cfg, inp.metrics
    name = str(cfg.name)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    out: list[str] = [f"# Model card: {name}", ""]
    ck = inp.checkpoint_info
    out += [
        f"Generated by `medpipe evaluate` from checkpoint `{inp.checkpoint}` (MD5 "
        f"`{ck.get('md5', 'n/a')}`, epoch {ck.get('epoch', 'n/a')}, global step "
        f"{ck.get('global_step', 'n/a')}). Metrics: `{Path(cfg.paths.metrics) / (name + '.json')}`.",
        "",
        "## Intended use and limits",
        "",
        INTENDED_USE,
        "",
        f"Task: {inp.task_type}, classes: {', '.join(f'{i} = {c}' for i, c in enumerate(inp.class_names))}.",
        "",
        "## Data",
        "",
        f"- Dataset: `{data.get('name')}` (DataModule `{data.get('_target_')}`"
        + (f", MedMNIST flag `{data['flag']}` at {data.get('size')} px" if "flag" in data else "")
        + ")",
        f"- Files under `{data.get('root')}`"
        + (f" (copied from the mirror `{data['mirror']}`)" if data.get("mirror") else ""),
    ]
    files, note = data_files(Path(str(data.get("root", ""))))
    if files:
        out += [
            "",
            _table(["file", "MD5", "bytes"], [[f["file"], f["md5"], f["bytes"]] for f in files]),
        ]
    if note:
        out += [f"- {note}"]
    out += [
        "",
        "Data config (source, split method, preprocessing and augmentation):",
        "",
        "```yaml",
        _yaml({k: v for k, v in data.items() if k != "_target_"}),
        "```",
    ]
    if inp.split_counts:
        header = ["split", "n", *inp.class_names]
        rows = []
        for split, counts in inp.split_counts.items():
            rows.append([split, sum(counts.values()), *[counts.get(c, 0) for c in inp.class_names]])
        out += ["", "Samples per split and class:", "", _table(header, rows)]
    out += [
        "",
        "## Model and training",
        "",
        "From the checkpoint's hyper-parameters (what the weights were trained with):",
        "",
        "```yaml",
        _yaml(inp.hparams) if inp.hparams else "n/a",
        "```",
        "",
        "Trainer and seed of the config this report was made with (the DVC pipeline trains and "
        "evaluates from the same `params.yaml`):",
        "",
        "```yaml",
        _yaml({"trainer": cfg.trainer, "seed": cfg.get("seed")}),
        "```",
        "",
        "Evaluation settings (`task.evaluation`):",
        "",
        "```yaml",
        _yaml(inp.settings),
        "```",
    ]
    ci = m.get("ci", {})
    conf = inp.settings.get("bootstrap", {}).get("confidence", 0.95)
    thr = m.get("threshold", {})
    header = ["metric", f"test (threshold {_fmt(thr.get('default', 0.5), 3)})", f"{conf:.0%} CI"]
    tuned = m.get("tuned")
    if tuned:
        header += [f"at tuned threshold {_fmt(thr.get('value'), 3)}", f"{conf:.0%} CI (tuned)"]
    rows = []
    for key, label in LABELS.items():
        if key not in m:
            continue
        row = [label, m[key], _ci(ci.get(key))]
        if tuned:
            row += [tuned.get(key), _ci(m.get("ci_tuned", {}).get(key))]
        rows.append(row)
    rows.append(["loss (NLL)", m.get("loss"), ""] + (["", ""] if tuned else []))
    out += ["", f"## Metrics (test split, n = {m.get('n_test', 'n/a')})", "", _table(header, rows)]
    if ci:
        n_res = inp.settings.get("bootstrap", {}).get("resamples")
        out += [
            "",
            f"CIs: percentile bootstrap, {n_res} resamples of the test split (seed "
            f"{inp.settings.get('bootstrap', {}).get('seed')}).",
        ]
    if thr.get("method") and thr.get("value") is not None:
        out += [
            "",
            f"Decision threshold tuned on the validation split ({thr['method']}"
            + (
                f", target sensitivity {thr.get('target_sensitivity')}"
                if thr["method"] == "sensitivity"
                else ""
            )
            + f"): {_fmt(thr['value'])} (validation sensitivity {_fmt(thr.get('val_sensitivity'), 3)}, "
            f"specificity {_fmt(thr.get('val_specificity'), 3)}).",
        ]
    elif thr.get("note"):
        out += ["", f"Decision threshold: {thr['note']}"]
    per_class = m.get("per_class") or {}
    if per_class:
        rows = [
            [c, v["support"], v["precision"], v["recall"], v["f1"], v["roc_auc"], v["pr_auc"]]
            for c, v in per_class.items()
        ]
        out += [
            "",
            "Per class (one-vs-rest):",
            "",
            _table(["class", "support", "precision", "recall", "F1", "ROC-AUC", "PR-AUC"], rows),
        ]
    cal = m.get("calibration") or {}
    out += ["", "## Calibration", ""]
    out += [
        f"- Expected calibration error ({cal.get('bins', '?')} bins): {_fmt(cal.get('ece'))}; "
        f"NLL {_fmt(cal.get('nll'))}.",
    ]
    if cal.get("temperature") is not None:
        out += [
            f"- After temperature scaling (T = {_fmt(cal['temperature'], 3)}, fitted on the "
            f"validation split): ECE {_fmt(cal.get('ece_scaled'))}, NLL {_fmt(cal.get('nll_scaled'))}. "
            "Temperature scaling changes probabilities only, not the ranking or the arg-max.",
        ]
    elif cal.get("note"):
        out += [f"- {cal['note']}"]
    if m.get("tta"):
        out += ["", f"Test-time augmentation: logits averaged over identity + flips {m['tta']}."]
    out += ["", "## Known caveats of the dataset", ""]
    out += [f"- {c}" for c in dataset_caveats(data)]
    split = data.get("split")
    if isinstance(split, dict) and split.get("method"):
        level = "patient/group-level" if split["method"] == "grouped" else "image-level (random)"
        out += [f"- This run's split: `split.method={split['method']}`, {level}."]
    if inp.plots:
        out += ["", "## Figures", ""]
        out += [f"- [{title}]({fname})" for title, fname in inp.plots.items()]
    return "\n".join(out) + "\n"


def _ci(value: Any) -> str:
    if not value or value.get("low") is None:
        return ""
    return f"[{_fmt(value['low'])}, {_fmt(value['high'])}]"


def write(path: Path, inp: CardInputs) -> Path:
    """Render and write the card atomically."""
    write_text(path, render(inp))
    return path
