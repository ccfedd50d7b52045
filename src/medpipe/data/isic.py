"""ISIC skin lesions: classification (2017 Part 3, 2018 Task 3) and segmentation (Task 1).

``mode: classification`` reads a ground-truth CSV per split:

* 2017 Part 3: ``image_id,melanoma,seborrheic_keratosis`` (0.0/1.0; both 0 = nevus), classes
  melanoma / seborrheic_keratosis / nevus;
* 2018 Task 3: one-hot ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (7 classes, exactly one 1 per row).

The format is recognised from the header, and the classes must equal ``data.class_names``.
The DataModule then offers the classification interface (``task_type`` multi-class,
``datasets[split].labels``) that :class:`~medpipe.tasks.classification.ClassificationTask` uses.

``mode: segmentation`` pairs ``ISIC_XXXXXXX.jpg`` with ``ISIC_XXXXXXX_segmentation.png`` (lesion
255) from an images folder and a masks folder per split.

``data.splits`` maps ``train``/``val``/``test`` to ``{images: <folder>, labels: <csv>}`` or
``{images: <folder>, masks: <folder>}`` (paths relative to ``root``); splits not listed are carved
from ``train`` by ``data.split``. Online, each top-level folder ``F`` is downloaded as ``F.zip``
and each CSV as itself from ``base_url`` (the ISIC challenge bucket).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.data.segmentation import (
    ImageLabelDataset,
    Sample,
    SegmentationDataModule,
    fetch_archives,
)
from medpipe.data.sources import RemoteFile
from medpipe.data.splits import SPLIT_NAMES
from medpipe.errors import ConfigError, DataError

MODES = ("classification", "segmentation")
CLASSES_2017 = ("melanoma", "seborrheic_keratosis", "nevus")
CLASSES_2018 = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
HEADER_2017 = ("image_id", "melanoma", "seborrheic_keratosis")
_IMAGE = re.compile(r"(ISIC_\d+)\.(jpg|jpeg|png)", re.IGNORECASE)
_MASK = re.compile(r"(ISIC_\d+)_segmentation\.png", re.IGNORECASE)


def read_isic_labels(path: Path) -> tuple[list[str], list[str], list[str]]:
    """``(image_ids, class_name_per_image, class_names)`` from a 2017 or 2018 ground-truth CSV."""
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist; run `medpipe fetch data=isic`.")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(fh)) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"labels file {path} cannot be read as a UTF-8 CSV: {exc}") from exc
    if not rows:
        raise DataError(f"labels file {path} is empty; expected a header and one row per image.")
    header = [c.strip() for c in rows[0][1]]
    two_col_2017 = tuple(header) == HEADER_2017
    if len(header) < 3:
        raise DataError(
            f"labels file {path} has header {header}; expected {','.join(HEADER_2017)} (2017) "
            "or image,<class>,<class>,... one-hot columns (2018)."
        )
    classes = list(CLASSES_2017) if two_col_2017 else header[1:]
    ids: list[str] = []
    labels: list[str] = []
    for line, row in rows[1:]:
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            values = []
        if len(row) != len(header) or any(v not in (0.0, 1.0) for v in values) or not values:
            raise DataError(
                f"labels file {path}, line {line}: {row} is not {len(header) - 1} values of 0/1."
            )
        if two_col_2017:
            if values[0] and values[1]:
                raise DataError(
                    f"labels file {path}, line {line}: image {row[0]} is marked both melanoma "
                    "and seborrheic keratosis; fix the row."
                )
            k = 0 if values[0] else 1 if values[1] else 2
        else:
            if sum(values) != 1:
                raise DataError(
                    f"labels file {path}, line {line}: image {row[0]} has {int(sum(values))} "
                    "classes set; one-hot rows need exactly one 1."
                )
            k = values.index(1.0)
        ids.append(row[0].strip())
        labels.append(classes[k])
    if len(set(ids)) != len(ids):
        raise DataError(f"labels file {path} lists an image more than once.")
    return ids, labels, classes


class ISICDataModule(SegmentationDataModule):
    """ISIC lesions for classification (``mode: classification``) or segmentation."""

    dataset_name = "isic"
    default_class_names = ("background", "lesion")

    def __init__(
        self,
        *,
        mode: str = "classification",
        edition: int = 2017,
        splits: Mapping[str, Mapping[str, str]] | None = None,
        base_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"data.mode={mode!r}: use one of {list(MODES)}")
        self.mode = mode
        if mode == "classification" and not kwargs.get("class_names"):
            kwargs["class_names"] = list(CLASSES_2018 if int(edition) >= 2018 else CLASSES_2017)
        super().__init__(**kwargs)
        self.edition = int(edition)
        self.base_url = base_url or f"https://isic-challenge-data.s3.amazonaws.com/{self.edition}"
        self.splits_cfg = {k: dict(v) for k, v in (splits or {}).items()}
        if "train" not in self.splits_cfg or set(self.splits_cfg) - set(SPLIT_NAMES):
            raise ConfigError(
                f"data.splits={sorted(self.splits_cfg)}: give at least train (and optionally val, "
                "test), each {images: <folder>, labels: <csv>} or {images: ..., masks: ...}"
            )
        key = "labels" if mode == "classification" else "masks"
        for name, spec in self.splits_cfg.items():
            if "images" not in spec or (name == "train" and key not in spec):
                raise ConfigError(
                    f"data.splits.{name}={spec} needs 'images' and '{key}' for mode={mode}"
                )
        if mode == "classification":
            self.task_type = "multi-class"

    @property
    def needs_masks(self) -> bool:
        return self.mode == "segmentation"

    # -- discovery -------------------------------------------------------------------------------
    def discover(self) -> list[Sample]:
        samples: list[Sample] = []
        for split, spec in self.splits_cfg.items():
            if self.mode == "classification":
                samples += self._classification_samples(split, spec)
            else:
                samples += self._segmentation_samples(split, spec)
        return samples

    def _images(self, folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise DataError(
                f"image folder {folder} does not exist; run `medpipe fetch data={self.name}` "
                "(check data.splits in the data config)."
            )
        out: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            match = _IMAGE.fullmatch(path.name)
            if match:
                out[match.group(1)] = path
        return out

    def _classification_samples(self, split: str, spec: Mapping[str, str]) -> list[Sample]:
        images = self._images(self.root / spec["images"])
        csv_path = self.root / spec["labels"]
        ids, labels, classes = read_isic_labels(csv_path)
        if classes != self.class_names:
            raise DataError(
                f"labels file {csv_path} has classes {classes} but data.class_names is "
                f"{self.class_names}; set data.class_names (or data.edition) to match."
            )
        missing = [i for i in ids if i not in images]
        if missing:
            raise DataError(
                f"labels file {csv_path} lists {len(missing)} image(s) missing from "
                f"{self.root / spec['images']}, e.g. {missing[0]}.jpg; fetch the data again."
            )
        return [
            Sample(id=i, image=images[i], label=lab, split=split)
            for i, lab in zip(ids, labels, strict=True)
        ]

    def _segmentation_samples(self, split: str, spec: Mapping[str, str]) -> list[Sample]:
        images = self._images(self.root / spec["images"])
        if "masks" not in spec:  # images without ground truth: prediction only
            return [Sample(id=i, image=p, labelled=False, split=split) for i, p in images.items()]
        folder = self.root / spec["masks"]
        if not folder.is_dir():
            raise DataError(
                f"mask folder {folder} does not exist; run `medpipe fetch data={self.name}` "
                "(no ISIC masks are in the offline mirror: point data.mirror at a copy with "
                "the Task 1 ground truth)."
            )
        masks: dict[str, Path] = {}
        for path in folder.iterdir():
            match = _MASK.fullmatch(path.name)
            if match:
                masks[match.group(1)] = path
        orphans = sorted(masks.keys() - images.keys())
        if orphans:
            raise DataError(f"mask {masks[orphans[0]]} has no image {orphans[0]}.jpg in {split}.")
        missing = sorted(images.keys() - masks.keys())
        if missing:
            raise DataError(
                f"{images[missing[0]]} has no mask: expected "
                f"{folder / (missing[0] + '_segmentation.png')}. Fetch the data again."
            )
        return [
            Sample(id=i, image=images[i], masks=(masks[i],), label="lesion", split=split)
            for i in sorted(images)
        ]

    # -- datasets ------------------------------------------------------------------------------
    def _build_datasets(self, images: np.ndarray, masks: np.ndarray | None) -> None:
        if self.mode == "segmentation":
            super()._build_datasets(images, masks)
            return
        for split, rows in self.split_rows.items():
            tf = self.train_transform if split == "train" else self.eval_transform
            labels = [self.class_names.index(self.samples[r].label) for r in rows]
            self.datasets[split] = ImageLabelDataset(images, rows, np.asarray(labels), tf)

    # -- fetch ---------------------------------------------------------------------------------
    def _paths(self) -> list[str]:
        keys = ("images", "labels", "masks")
        return [spec[k] for spec in self.splits_cfg.values() for k in keys if k in spec]

    def mirror_paths(self, mirror_dir: Path) -> list[str]:
        files: list[Path] = []
        for rel in self._paths():
            src = mirror_dir / rel
            if src.is_file():
                files.append(src)
            elif src.is_dir():
                files += [
                    p for p in src.iterdir() if _IMAGE.fullmatch(p.name) or _MASK.fullmatch(p.name)
                ]
            else:
                raise DataError(
                    f"the data mirror lacks {src} (named by data.splits); copy it there in the "
                    "upstream layout, or unset the mirror to download it."
                )
        return sorted({p.relative_to(mirror_dir).as_posix() for p in files})

    def download(self, force: bool = False) -> list[Path]:
        remotes: dict[str, RemoteFile] = {}
        for rel in self._paths():
            top = Path(rel).parts[0]
            name = top if top.lower().endswith(".csv") else f"{top}.zip"
            remotes[name] = RemoteFile(name, f"{self.base_url}/{name}")
        return fetch_archives(remotes.values(), self.root, force=force)
