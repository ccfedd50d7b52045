"""LGG brain MRI (Kaggle ``mateuszbuda/lgg-mri-segmentation``): FLAIR tumour masks per slice.

Layout (``kaggle_3m``): ``<CASE>/<CASE>_<n>.tif`` (256x256, 3 channels: pre-contrast, FLAIR,
post-contrast) and ``<CASE>/<CASE>_<n>_mask.tif`` (0/255). ``<CASE>`` is
``TCGA_<institution>_<patient>_<date>``; slices of one patient look alike, so splits are by patient
(``split.method: grouped``, k-fold with ``split.n_folds``/``split.fold``), never by slice. Most
slices show no tumour; ``empty_slices: {policy: sample, ratio: R}`` keeps R tumour-free training
slices per tumour slice (val/test always keep every slice). The patient-level split keeps the
mix of tumour slices and of institutions (``stratify_institution``) as close to the whole as the
patients allow.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.data.segmentation import Sample, SegmentationDataModule, download_kaggle_dataset
from medpipe.errors import DataError

KAGGLE_DATASET = "mateuszbuda/lgg-mri-segmentation"
FOLDER = "kaggle_3m"
_PATIENT = re.compile(r"(TCGA_[A-Za-z0-9]{2}_[A-Za-z0-9]{4})_\d{8}")


def institution(patient: str | None) -> str:
    """``TCGA_CS_5396`` -> ``CS`` (the TCIA contributing site)."""
    parts = str(patient).split("_")
    return parts[1] if len(parts) > 2 and parts[0] == "TCGA" else "?"


def lgg_patient_id(case: str) -> str:
    """``TCGA_CS_5396_20010302`` -> ``TCGA_CS_5396`` (the patient; the suffix is the scan date)."""
    match = _PATIENT.fullmatch(case)
    return match.group(1) if match else case


def discover_lgg(base: Path) -> list[Sample]:
    """Image/mask pairs of every patient folder under ``base`` (the ``kaggle_3m`` folder).

    Raises :class:`DataError` naming the folder or file for: a patient folder with no slices, a
    slice without its mask (or a mask without its slice), and unexpected ``.tif`` names.
    """
    if not base.is_dir():
        raise DataError(
            f"{base} does not exist: the LGG data must be laid out as {FOLDER}/<CASE>/<CASE>_<n>.tif; "
            "run `medpipe fetch data=lgg`."
        )
    samples: list[Sample] = []
    for case in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        pattern = re.compile(rf"{re.escape(case.name)}_(\d+)(_mask)?\.tiff?")
        images: dict[int, Path] = {}
        masks: dict[int, Path] = {}
        for path in sorted(case.iterdir()):
            if path.suffix.lower() not in (".tif", ".tiff"):
                continue
            match = pattern.fullmatch(path.name)
            if match is None:
                raise DataError(
                    f"{path}: unexpected file in patient folder {case.name}; slices must be named "
                    f"{case.name}_<n>.tif with masks {case.name}_<n>_mask.tif. Rename or remove it."
                )
            (masks if match.group(2) else images)[int(match.group(1))] = path
        if not images:
            raise DataError(
                f"patient folder {case} has no slices ({case.name}_<n>.tif); remove the folder "
                "or fetch the data again (`medpipe fetch --force data=lgg`)."
            )
        orphans = sorted(masks.keys() - images.keys())
        if orphans:
            n = orphans[0]
            raise DataError(
                f"mask {masks[n]} has no image: expected {case / f'{case.name}_{n}.tif'}. "
                "Fetch the data again or remove the mask."
            )
        for n in sorted(images):
            if n not in masks:
                raise DataError(
                    f"{images[n]} has no mask: expected {case / f'{case.name}_{n}_mask.tif'}. "
                    "Fetch the data again (`medpipe fetch --force data=lgg`) or remove the slice."
                )
            samples.append(
                Sample(
                    id=f"{case.name}_{n}",
                    image=images[n],
                    masks=(masks[n],),
                    group=lgg_patient_id(case.name),
                )
            )
    return samples


class LGGDataModule(SegmentationDataModule):
    """LGG FLAIR abnormality segmentation, 3-channel slices, patient-level splits."""

    dataset_name = "lgg"
    default_class_names = ("background", "tumour")

    def __init__(
        self,
        *,
        kaggle_dataset: str = KAGGLE_DATASET,
        stratify_institution: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("split", {"method": "grouped"})
        super().__init__(**kwargs)
        self.kaggle_dataset = kaggle_dataset
        self.stratify_institution = bool(stratify_institution)

    def stratify_labels(self, rows: np.ndarray) -> list[str]:
        """Tumour present / absent, and with ``stratify_institution`` the institution too.

        Scanners differ between the TCIA institutions (CS, DU, HT...): a split whose training
        set lacks an institution that the test set has measures the domain shift rather than the
        model, so the patient-level split keeps the institution mix as far as patients allow.
        """
        labels = super().stratify_labels(rows)
        if not self.stratify_institution:
            return labels
        return [
            f"{institution(self.samples[r].group)}:{lab}"
            for r, lab in zip(rows, labels, strict=True)
        ]

    def discover(self) -> list[Sample]:
        return discover_lgg(self.root / FOLDER)

    def mirror_paths(self, mirror_dir: Path) -> list[str]:
        files = [*mirror_dir.glob(f"{FOLDER}/*/*.tif"), *mirror_dir.glob(f"{FOLDER}/data.csv")]
        return sorted(p.relative_to(mirror_dir).as_posix() for p in files if p.is_file())

    def download(self, force: bool = False) -> list[Path]:
        target = self.root / FOLDER
        if target.is_dir() and any(target.iterdir()) and not force:
            return [target]
        return download_kaggle_dataset(self.kaggle_dataset, self.root, keep=[FOLDER])
