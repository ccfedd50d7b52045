"""BUSI breast ultrasound (Kaggle ``aryashah2k/breast-ultrasound-images-dataset``).

Layout: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (N).png`` with
``<class> (N)_mask.png`` and, for images with several lesions, extra ``<class> (N)_mask_1.png``
(``_mask_2``...) files that are merged with the first by OR. Masks come in mixed PNG modes (1-bit,
RGB, RGBA) and are binarised with ``convert("L") > 0``. Normal images have empty masks.

Mask size rule (``data.mask_size_mismatch``, default ``skip`` here): a mask whose size differs
from its image is reported with both sizes in a warning and left out of the OR (the upstream
``benign (4)_mask_1.png`` is 555x465 while its image is 416x416); ``error`` stops instead,
``resize`` rescales it (nearest neighbour). If no mask of an image is left, that is an error.

Splits are stratified by class. With ``mask_mode: multiclass`` the lesion pixels take the class
index of their folder (background 0, benign 1, malignant 2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medpipe.data.segmentation import Sample, SegmentationDataModule, download_kaggle_dataset
from medpipe.errors import ConfigError, DataError

KAGGLE_DATASET = "aryashah2k/breast-ultrasound-images-dataset"
FOLDER = "Dataset_BUSI_with_GT"
CLASSES = ("benign", "malignant", "normal")
_NAME = re.compile(r"(?P<stem>(?P<cls>[a-z]+) \((?P<n>\d+)\))(?P<mask>_mask(?:_(?P<k>\d+))?)?\.png")


def discover_busi(base: Path) -> list[Sample]:
    """Images and their mask files, class by class; DataError for missing or orphan masks."""
    if not base.is_dir():
        raise DataError(
            f"{base} does not exist: BUSI must be laid out as {FOLDER}/<class>/<class> (N).png; "
            "run `medpipe fetch data=busi`."
        )
    samples: list[Sample] = []
    for cls in CLASSES:
        folder = base / cls
        if not folder.is_dir():
            raise DataError(f"{folder} is missing; BUSI needs the folders {list(CLASSES)}.")
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for path in folder.iterdir():
            if path.suffix.lower() != ".png":
                continue
            match = _NAME.fullmatch(path.name)
            if match is None or match.group("cls") != cls:
                raise DataError(
                    f"{path}: unexpected file name in {folder}; expected '{cls} (N).png' or "
                    f"'{cls} (N)_mask.png' / '_mask_1.png'. Rename or remove it."
                )
            stem = match.group("stem")
            if match.group("mask"):
                k = int(match.group("k") or 0)
                masks.setdefault(stem, []).append((k, path))
            else:
                images[stem] = path
        orphans = sorted(masks.keys() - images.keys())
        if orphans:
            raise DataError(
                f"mask {masks[orphans[0]][0][1]} has no image {folder / (orphans[0] + '.png')}; "
                "fetch the data again or remove the mask."
            )
        for stem in sorted(images, key=lambda s: int(re.search(r"\d+", s).group())):  # type: ignore[union-attr]
            files = sorted(masks.get(stem, []))
            if not files or files[0][0] != 0:
                raise DataError(
                    f"{images[stem]} has no mask: expected {folder / (stem + '_mask.png')}. "
                    "Fetch the data again or remove the image."
                )
            samples.append(
                Sample(
                    id=stem,
                    image=images[stem],
                    masks=tuple(p for _, p in files),
                    label=cls,
                    fg_class=None if cls == "normal" else CLASSES.index(cls) + 1,
                )
            )
    return samples


class BUSIDataModule(SegmentationDataModule):
    """BUSI lesion segmentation (binary) or benign/malignant lesion classes (multi-class)."""

    dataset_name = "busi"
    default_class_names = ("background", "lesion")

    def __init__(self, *, kaggle_dataset: str = KAGGLE_DATASET, **kwargs: Any) -> None:
        kwargs.setdefault("mask_size_mismatch", "skip")
        kwargs.setdefault("channels", 1)
        if kwargs.get("mask_mode") == "multiclass" and not kwargs.get("class_names"):
            kwargs["class_names"] = ["background", "benign", "malignant"]
        super().__init__(**kwargs)
        if self.mask_mode == "multiclass" and self.num_classes != 3:
            raise ConfigError(
                f"data.class_names={self.class_names}: BUSI multi-class masks have 3 classes "
                "(background, benign, malignant)."
            )
        self.kaggle_dataset = kaggle_dataset

    def discover(self) -> list[Sample]:
        samples = discover_busi(self.root / FOLDER)
        if self.mask_mode == "binary":  # the class index only matters for multi-class masks
            samples = [
                Sample(s.id, s.image, s.masks, s.group, s.label, s.labelled, s.split, None)
                for s in samples
            ]
        return samples

    def mirror_paths(self, mirror_dir: Path) -> list[str]:
        files = mirror_dir.glob(f"{FOLDER}/*/*.png")
        return sorted(p.relative_to(mirror_dir).as_posix() for p in files if p.is_file())

    def download(self, force: bool = False) -> list[Path]:
        target = self.root / FOLDER
        if target.is_dir() and any(target.iterdir()) and not force:
            return [target]
        return download_kaggle_dataset(self.kaggle_dataset, self.root, keep=[FOLDER])
