"""``medpipe predict`` for segmentation: masks as PNG at each image's original size, plus RLE.

Outputs under ``predictions/<name>/<split>/`` (or ``--output``), each file written atomically:

* ``masks/<id>.png``: 8-bit, 0/255 for binary masks, class indices for multi-class masks, at the
  size of the original image (probabilities are resized bilinearly, then thresholded at
  ``task.threshold`` or arg-maxed);
* ``rle.csv``: Kaggle run-length encoding (1-indexed, column-major, sorted ``start length``
  pairs, empty mask = empty string) with the header ``task.rle_header`` (default ``id,rle``);
  multi-class masks get one row ``<id>_<class>`` per foreground class.

``--split`` is train, val, test, or ``unlabelled`` for images without ground truth (ISBI 2012's
challenge test slices).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
from omegaconf import DictConfig
from PIL import Image

from medpipe.errors import ConfigError
from medpipe.evaluation.inference import eval_accelerator, predict
from medpipe.evaluation.segmentation_report import check_compatible, probs_to_mask
from medpipe.io import atomic_path
from medpipe.kaggle.rle import write_rle_csv
from medpipe.tasks.segmentation import SegmentationTask

log = logging.getLogger(__name__)


def write_mask_png(path: Path, mask: np.ndarray, *, binary: bool) -> Path:
    """Save a uint8 mask as PNG (binary masks as 0/255 so they are visible), atomically."""
    data = (mask > 0).astype(np.uint8) * 255 if binary else mask.astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(data, mode="L").save(tmp, format="PNG")
    return path


def rle_header(cfg: DictConfig) -> tuple[str, str]:
    """``task.rle_header`` as a 2-tuple (ConfigError otherwise)."""
    header = cfg.task.get("rle_header", ["id", "rle"])
    header = (
        tuple(str(h) for h in header) if not isinstance(header, str) else tuple(header.split(","))
    )
    if len(header) != 2 or not all(header):
        raise ConfigError(
            f"task.rle_header={list(header)} must be two column names, e.g. [id, rle]"
        )
    return header  # type: ignore[return-value]


def run(
    cfg: DictConfig,
    task: SegmentationTask,
    dm: L.LightningDataModule,
    ckpt: Path,
    *,
    split: str = "test",
    output: str | None = None,
) -> Path:
    """Predict ``split``; returns the output folder."""
    header = rle_header(cfg)
    dm.setup()
    check_compatible(task, dm, ckpt)
    base = Path(cfg.paths.get("predictions", "predictions")) / str(cfg.name) / split
    out_dir = Path(output) if output else base
    loader = dm.loader(split)
    samples = dm.split_samples(split)
    probs = predict(task, loader, eval_accelerator(cfg))["probs"]
    binary = not task.multiclass
    names = list(getattr(task.hparams, "class_names", None) or [])
    rows: list[tuple[str, np.ndarray]] = []
    for i, sample in enumerate(samples):
        shape = dm.original_shape(split, i)
        mask = probs_to_mask(probs[i], shape, threshold=task.threshold, multiclass=not binary)
        write_mask_png(out_dir / "masks" / f"{sample.id}.png", mask, binary=binary)
        if binary:
            rows.append((sample.id, mask))
        else:
            for c in range(1, task.num_classes):
                label = names[c] if c < len(names) else str(c)
                rows.append((f"{sample.id}_{label}", mask == c))
    write_rle_csv(out_dir / "rle.csv", rows, header=header)
    log.info("%d masks for %s/%s -> %s", len(samples), cfg.name, split, out_dir)
    return out_dir
