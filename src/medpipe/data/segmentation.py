"""Image + mask DataModules: one base for LGG, BUSI, ISIC and ISBI 2012.

A dataset module only says where its files are (:meth:`SegmentationDataModule.discover` returns
:class:`Sample` records) and how to fetch them online; this base does the rest the same way for
all of them:

* ``fetch``: from a mirror (``data.mirror`` / ``MEDPIPE_DATA_MIRROR``) the dataset's files are
  copied by :func:`medpipe.data.sources.fetch_files`; online, each dataset names its upstream
  (direct files, zip archives, or a Kaggle dataset).
* ``prepare``: every image and mask is decoded and validated once (unreadable file, missing mask,
  mask of another size, mask values other than 0/1/255 all raise one :class:`DataError` naming the
  file), resized to ``data.size`` and stored as uint8 arrays under
  ``data/processed/<dataset>/<H>x<W>/``. The cache is built in a temporary folder and renamed
  into place only when complete, so a failed run leaves nothing half-written.
* ``setup``: splits (stratified, patient-grouped, or k-fold by :mod:`medpipe.data.splits`), the
  tumour-free slice policy, and albumentations pipelines applied jointly to image and mask.

Masks are binarised to {0, 1} (``mask_mode: binary``) or kept as class indices
(``mask_mode: multiclass``). Original image sizes are kept in the cache index, and
:meth:`SegmentationDataModule.original_mask` re-reads a mask at its original size, so metrics and
predicted masks are computed at each image's own size, not at the training size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from medpipe.data.base import LoaderOptions, check_mean_std
from medpipe.data.sources import RemoteFile, fetch_file, fetch_files, resolve_mirror
from medpipe.data.splits import SPLIT_NAMES, SplitSpec
from medpipe.data.transforms import build_pipeline
from medpipe.errors import ConfigError, DataError, MedpipeError
from medpipe.io import write_json

log = logging.getLogger(__name__)

MASK_MODES = ("binary", "multiclass")
SIZE_MISMATCH_POLICIES = ("error", "skip", "resize")
EMPTY_POLICIES = ("keep", "sample")
UNLABELLED = "unlabelled"
CACHE_VERSION = 1
_TIFF_SUFFIXES = (".tif", ".tiff")
_BINARY_VALUES = frozenset({0, 1, 255})
# ITU-R 601 luma, the weights PIL's convert("L") uses: grey from RGB without a PIL round trip.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Samples and decoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One image and the mask file(s) that belong to it.

    ``masks`` are OR-ed together (BUSI's extra ``_mask_1.png`` files); an empty tuple with
    ``labelled=False`` is an image without ground truth (ISBI's challenge test set), usable for
    prediction only. ``group`` is the patient id for grouped splits, ``label`` the stratification
    label (empty: derived from the mask, "positive" or "empty"), ``split`` an official split the
    distribution defines, and ``fg_class`` the class index of this image's foreground in
    multi-class mode (BUSI: benign 1, malignant 2; None: the mask values are the classes).
    """

    id: str
    image: Path
    masks: tuple[Path, ...] = ()
    group: str | None = None
    label: str = ""
    labelled: bool = True
    split: str | None = None
    fg_class: int | None = None


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    quiet = logging.getLogger("tifffile")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warnings about a broken file would repeat our error
    try:
        arr = np.asarray(tifffile.imread(path))
    finally:
        quiet.setLevel(level)
    if arr.size == 0:  # tifffile only warns for a truncated file and returns no pixels
        raise ValueError("no pixel data (truncated file?)")
    return arr


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to uint8 ``(H, W)`` or ``(H, W, 3)``; DataError naming the file."""
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            arr = _read_tiff(path)
        else:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGB" if im.mode in ("RGBA", "P", "CMYK", "LA") else "L")
                arr = np.asarray(im)
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist; run `medpipe fetch` for this dataset.") from exc
    except Exception as exc:  # any decoder failure means the same thing: a corrupt file
        raise DataError(
            f"{path} cannot be read as an image ({type(exc).__name__}: {exc}); the file is "
            "corrupt or truncated. Delete it and run `medpipe fetch --force` for this dataset."
        ) from exc
    if arr.dtype != np.uint8:
        raise DataError(
            f"{path} holds {arr.dtype} pixels; only 8-bit images are supported. Convert it to "
            "8-bit (e.g. rescale to 0..255) and run `medpipe prepare` again."
        )
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]  # RGBA -> RGB
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise DataError(
            f"{path} has shape {arr.shape}; expected a grey (H, W) or RGB (H, W, 3) image."
        )
    return arr


def read_mask_file(path: Path) -> np.ndarray:
    """Decode a mask file to uint8 ``(H, W)`` (colour masks via PIL's ``convert("L")``)."""
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            arr = _read_tiff(path)
            if arr.ndim == 3 and arr.shape[-1] in (3, 4):
                arr = to_channels(arr[..., :3], 1)
        else:
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im if im.mode == "L" else im.convert("L"))
    except FileNotFoundError as exc:
        raise DataError(f"mask {path} does not exist; run `medpipe fetch` again.") from exc
    except Exception as exc:
        raise DataError(
            f"mask {path} cannot be read ({type(exc).__name__}: {exc}); the file is corrupt or "
            "truncated. Delete it and run `medpipe fetch --force` for this dataset."
        ) from exc
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise DataError(f"mask {path} has shape {arr.shape} / {arr.dtype}; expected 8-bit (H, W).")
    return arr


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """``(H, W[, 3])`` uint8 -> ``(H, W, channels)``: grey repeated to RGB, RGB to luma."""
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == channels:
        return img
    if channels == 3:
        return np.repeat(img, 3, axis=-1)
    grey = np.clip(np.rint(img.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)
    return grey[..., None] if channels == 1 else grey


def check_binary_values(mask: np.ndarray, path: Path) -> None:
    """Binary masks must hold only 0/1/255 (0/1 or 0/255 files); anything else is an error."""
    values = np.unique(mask)
    bad = [int(v) for v in values if int(v) not in _BINARY_VALUES]
    if bad:
        raise DataError(
            f"mask {path} holds values {bad[:8]} besides 0/1/255; a binary mask must be 0/255 "
            "(or 0/1). Fix the file, or set data.mask_mode=multiclass for class-index masks."
        )


def resize_pair(
    image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize image (area/linear) and mask (nearest) to ``(H, W)`` with albumentations."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image, mask
    # INTER_AREA when shrinking avoids aliasing; masks always nearest, so classes stay classes.
    interp = cv2.INTER_AREA if image.shape[0] > h or image.shape[1] > w else cv2.INTER_LINEAR
    resize = A.Resize(h, w, interpolation=interp, mask_interpolation=cv2.INTER_NEAREST)
    if mask is None:
        return resize(image=image)["image"], None
    out = resize(image=image, mask=mask)
    return out["image"], out["mask"]


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class SegmentationDataset(Dataset):
    """Cached uint8 images/masks of one split, transformed jointly by albumentations.

    Items are dicts ``{"image": float (C, H, W), "mask": (H, W), "index": int}``; the mask is
    float 0/1 in binary mode and int64 class indices in multi-class mode.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray | None,
        rows: np.ndarray,
        samples: Sequence[Sample],
        transform: A.Compose,
        *,
        multiclass: bool,
    ) -> None:
        self.images, self.masks, self.rows = images, masks, np.asarray(rows, dtype=np.int64)
        self.samples = list(samples)
        self.transform = transform
        self.multiclass = multiclass

    def __len__(self) -> int:
        return len(self.rows)

    def display(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The cached (resized, un-augmented) uint8 image and mask of item ``i``, for overlays."""
        row = self.rows[i]
        img = np.array(self.images[row])  # a writable copy of the read-only memory map
        if self.masks is None:
            return img, np.zeros(img.shape[:2], np.uint8)
        return img, np.array(self.masks[row])

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, mask = self.display(i)
        out = self.transform(image=img, mask=mask)
        m = torch.as_tensor(out["mask"])
        m = m.long() if self.multiclass else m.float()
        return {"image": out["image"].float(), "mask": m, "index": int(i)}


class ImageLabelDataset(Dataset):
    """Cached uint8 images with class labels (ISIC classification): ``(image, label)`` items."""

    def __init__(
        self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, transform: A.Compose
    ) -> None:
        self.images, self.rows = images, np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = np.array(self.images[self.rows[i]])  # writable copy of the memory map
        x = self.transform(image=img)["image"].float()
        return x, torch.as_tensor(self.labels[i])


# --------------------------------------------------------------------------------------------
# Online sources besides plain files: zip archives and Kaggle datasets
# --------------------------------------------------------------------------------------------


def fetch_archives(
    archives: Iterable[RemoteFile],
    dest: Path,
    *,
    keep: Sequence[str] = (),
    force: bool = False,
) -> list[Path]:
    """Download zip archives (MD5-verified when given) and extract them into ``dest``.

    Each archive is downloaded to ``dest/.downloads/`` and extracted into a temporary folder
    beside ``dest``; its top-level entries are then renamed into ``dest``, so an interrupted
    download or extraction leaves no partial folder. ``keep`` limits what is moved to these
    top-level names (found at any depth of the archive; Kaggle zips nest them).
    """
    dest.mkdir(parents=True, exist_ok=True)
    placed: list[Path] = []
    for remote in archives:
        if not remote.relpath.endswith(".zip"):
            placed.append(fetch_file(remote, dest, force=force))
            continue
        marker = dest / ".downloads" / f"{remote.relpath}.done"
        if marker.is_file() and not force:
            log.info("%s already extracted", remote.relpath)
            placed.extend(dest / n for n in json.loads(marker.read_text()))
            continue
        archive = fetch_file(remote, dest / ".downloads", force=force)
        names = extract_zip(archive, dest, keep=keep)
        archive.unlink()
        write_json(marker, names)
        placed.extend(dest / n for n in names)
    return placed


def extract_zip(archive: Path, dest: Path, *, keep: Sequence[str] = ()) -> list[str]:
    """Extract ``archive`` via a temporary folder; returns the top-level names moved to ``dest``."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(
                f"{archive} is not a readable zip archive ({exc}); run `medpipe fetch --force`."
            ) from exc
        if keep:
            tops = []
            for name in keep:
                found = sorted(tmp.rglob(name), key=lambda p: len(p.parts))
                if not found:
                    raise DataError(
                        f"{archive} holds no {name!r}; it is not the expected distribution."
                    )
                tops.append(found[0])
        else:
            tops = sorted(tmp.iterdir())
        names = []
        for src in tops:
            target = dest / src.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(src, target)
            names.append(src.name)
        return names
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_kaggle_dataset(slug: str, dest: Path, *, keep: Sequence[str]) -> list[Path]:
    """Download a Kaggle dataset (``owner/name``) with the official client and extract ``keep``.

    Credentials are found by :func:`medpipe.kaggle.client.find_credentials` (only their location
    is ever reported). On an offline machine use a mirror instead.
    """
    from medpipe.kaggle.client import find_credentials, redact

    source = find_credentials()
    log.info("downloading Kaggle dataset %s (credentials from %s)", slug, source)
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except (ImportError, SystemExit) as exc:
        raise MedpipeError(
            f"the kaggle package cannot be used ({type(exc).__name__}: {exc}); run `uv sync`, "
            "or fetch from a mirror (MEDPIPE_DATA_MIRROR)."
        ) from None
    dest.mkdir(parents=True, exist_ok=True)
    downloads = Path(tempfile.mkdtemp(prefix=".kaggle-", dir=dest))
    try:
        try:
            api = KaggleApi()
            api.authenticate()
            api.dataset_download_files(slug, path=str(downloads), unzip=False, quiet=False)
        except (Exception, SystemExit) as exc:
            raise MedpipeError(
                f"Kaggle download of dataset {slug!r} failed: {type(exc).__name__}: "
                f"{redact(str(exc))}. Check the credentials ({source}) and the network, or use "
                "a mirror (MEDPIPE_DATA_MIRROR)."
            ) from None
        zips = sorted(downloads.glob("*.zip"))
        if not zips:
            raise DataError(f"Kaggle dataset {slug!r} downloaded no zip archive into {downloads}")
        return [dest / n for n in extract_zip(zips[0], dest, keep=keep)]
    finally:
        shutil.rmtree(downloads, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The DataModule base
# --------------------------------------------------------------------------------------------


@dataclass
class CacheIndex:
    """What ``index.json`` of a prepared cache records (one entry per sample, in cache order)."""

    version: int
    settings: dict[str, Any]
    fingerprint: str
    ids: list[str] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    positive: list[bool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _parse_size(size: Any) -> tuple[int, int]:
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        h, w = (int(s) for s in size)
    else:
        raise ConfigError(f"data.size={size!r} must be an integer or [height, width]")
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise ConfigError(
            f"data.size={size!r}: height and width must be multiples of 32 (>= 32): U-Net and "
            "Tiramisu halve the resolution 5 times. Use e.g. 128 or 256."
        )
    return h, w


class SegmentationDataModule(LoaderOptions, L.LightningDataModule):
    """Base for image + mask datasets; subclasses implement :meth:`discover` and the upstream.

    Subclass hooks: ``discover()`` (samples from ``root``, raising DataError for layout problems),
    ``mirror_paths(mirror_dir)`` (files to copy from a mirror), ``download(force)`` (online fetch),
    optionally ``official_split`` handling through ``Sample.split``.
    """

    task_type = "segmentation"
    dataset_name = "dataset"
    default_class_names: tuple[str, ...] = ("background", "foreground")

    def __init__(
        self,
        *,
        root: str | Path,
        processed: str | Path,
        name: str | None = None,
        mirror: str | Path | None = None,
        mirror_subdir: str | None = None,
        size: int | Sequence[int] = 256,
        channels: int = 3,
        mask_mode: str = "binary",
        class_names: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        train_augment: Sequence[Mapping[str, Any]] | None = None,
        split: Mapping[str, Any] | None = None,
        empty_slices: Mapping[str, Any] | None = None,
        mask_size_mismatch: str = "error",
        invert_mask: bool = False,
        **_: Any,
    ) -> None:
        super().__init__()
        self.name = str(name or self.dataset_name)
        self.root, self.processed = Path(root), Path(processed)
        self.mirror = mirror
        self.mirror_subdir = self.dataset_name if mirror_subdir is None else str(mirror_subdir)
        self.size = _parse_size(size)
        if int(channels) not in (1, 3):
            raise ConfigError(f"data.channels={channels!r}: use 1 (grey) or 3 (RGB)")
        self.channels = int(channels)
        if mask_mode not in MASK_MODES:
            raise ConfigError(f"data.mask_mode={mask_mode!r}: use one of {list(MASK_MODES)}")
        self.mask_mode = mask_mode
        self.class_names = list(class_names or self.default_class_names)
        binary_names = mask_mode == "binary" and self.needs_masks
        if len(self.class_names) < 2 or (binary_names and len(self.class_names) != 2):
            raise ConfigError(
                f"data.class_names={self.class_names}: binary masks need exactly 2 names "
                "(background, foreground); multi-class masks one name per class index."
            )
        self.num_classes = len(self.class_names)
        if mask_size_mismatch not in SIZE_MISMATCH_POLICIES:
            raise ConfigError(
                f"data.mask_size_mismatch={mask_size_mismatch!r}: use one of "
                f"{list(SIZE_MISMATCH_POLICIES)}"
            )
        self.mask_size_mismatch = mask_size_mismatch
        self.invert_mask = bool(invert_mask)
        self.set_loader_options(batch_size, num_workers, pin_memory, persistent_workers)
        self.mean, self.std = check_mean_std(mean, std, self.channels)
        self.split_spec = SplitSpec(**dict(split or {}))
        empty = dict(empty_slices or {})
        self.empty_policy = str(empty.pop("policy", "keep"))
        self.empty_ratio = float(empty.pop("ratio", 1.0))
        if empty or self.empty_policy not in EMPTY_POLICIES or self.empty_ratio < 0:
            raise ConfigError(
                f"data.empty_slices={dict(empty_slices or {})}: use {{policy: keep}} or "
                "{policy: sample, ratio: R} (R >= 0 tumour-free training images per image with "
                "foreground)"
            )
        # Built now so that a bad transform name fails before any data is read.
        self.train_transform = build_pipeline(train_augment, mean=self.mean, std=self.std)
        self.eval_transform = build_pipeline(None, mean=self.mean, std=self.std)
        self.datasets: dict[str, Dataset] = {}
        self.samples: list[Sample] = []
        self.index: CacheIndex | None = None
        self.split_rows: dict[str, np.ndarray] = {}
        self._notes: list[str] = []  # mask-size decisions, recorded in the cache index
        self._discovered: list[Sample] = []

    # -- hooks -------------------------------------------------------------------------------
    def discover(self) -> list[Sample]:
        """All samples under ``root`` (sorted, ids unique); DataError for layout problems."""
        raise NotImplementedError

    def mirror_paths(self, mirror_dir: Path) -> list[str]:
        """Relative paths of the files to copy from this dataset's mirror folder."""
        raise NotImplementedError

    def download(self, force: bool = False) -> list[Path]:
        """Fetch from upstream (no mirror set)."""
        raise NotImplementedError

    def remote_md5(self, relpath: str) -> str | None:
        """Known MD5 of a dataset file (verified on mirror copies too), or None."""
        return None

    @property
    def needs_masks(self) -> bool:
        """Whether samples carry masks (False for ISIC classification)."""
        return True

    # -- fetch -------------------------------------------------------------------------------
    def fetch(self, *, force: bool = False) -> list[Path]:
        """Copy the dataset from the mirror when one is set, else download it from upstream."""
        mirror_root = resolve_mirror(self.mirror)
        if mirror_root is None:
            return self.download(force)
        mirror_dir = mirror_root / self.mirror_subdir
        if not mirror_dir.is_dir():
            raise DataError(
                f"the data mirror has no {self.mirror_subdir!r} folder ({mirror_dir}); lay it "
                "out like upstream or unset the mirror to download."
            )
        rel = self.mirror_paths(mirror_dir)
        if not rel:
            raise DataError(
                f"the mirror folder {mirror_dir} holds no {self.name} files in the expected "
                "layout (see the data config); nothing to fetch."
            )
        remotes = [RemoteFile(r, None, self.remote_md5(r)) for r in rel]
        return fetch_files(
            remotes, self.root, mirror=mirror_root, mirror_subdir=self.mirror_subdir, force=force
        )

    # -- masks -------------------------------------------------------------------------------
    def load_mask(self, sample: Sample, image_shape: tuple[int, int]) -> np.ndarray:
        """The sample's mask at the image's size: binary {0, 1} or class indices, validated."""
        if not sample.masks:
            raise DataError(f"{sample.image} has no mask file; it cannot be used for training.")
        merged: np.ndarray | None = None
        for path in sample.masks:
            raw = read_mask_file(path)
            if raw.shape != image_shape:
                raw = self._mismatch(path, sample, raw, image_shape)
                if raw is None:
                    continue
            if self.mask_mode == "binary" or sample.fg_class is not None:
                check_binary_values(raw, path)
                m = (raw > 0).astype(np.uint8)
            else:
                m = raw
                if int(m.max()) >= self.num_classes:
                    raise DataError(
                        f"mask {path} holds class index {int(m.max())} but data.class_names "
                        f"lists {self.num_classes} classes (0..{self.num_classes - 1}); add the "
                        "missing class names or fix the mask."
                    )
            merged = m if merged is None else np.maximum(merged, m)
        if merged is None:
            raise DataError(
                f"{sample.image}: every mask file differs from the image size {image_shape} and "
                f"data.mask_size_mismatch={self.mask_size_mismatch} skipped them all; no mask "
                "is left. Fix the masks or set data.mask_size_mismatch=resize."
            )
        if self.invert_mask and self.mask_mode == "binary":
            merged = 1 - merged
        if self.mask_mode == "multiclass" and sample.fg_class is not None:
            merged = merged * np.uint8(sample.fg_class)
        return merged

    def _mismatch(
        self, path: Path, sample: Sample, mask: np.ndarray, shape: tuple[int, int]
    ) -> np.ndarray | None:
        """Apply ``data.mask_size_mismatch`` to a mask whose size differs from its image."""
        what = (
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
            f"{sample.image.name} is {shape[1]}x{shape[0]}"
        )
        if self.mask_size_mismatch == "error":
            raise DataError(
                f"{what}. Fix or remove the mask, or set data.mask_size_mismatch=skip (ignore "
                "that mask file) or resize (nearest-neighbour to the image size)."
            )
        if self.mask_size_mismatch == "skip":
            log.warning("%s: skipped (data.mask_size_mismatch=skip)", what)
            self._notes.append(f"skipped {path.name}: {what}")
            return None
        log.warning("%s: resized to the image (data.mask_size_mismatch=resize)", what)
        self._notes.append(f"resized {path.name}: {what}")
        return cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)

    def original_mask(self, split: str, i: int) -> np.ndarray:
        """Item ``i`` of ``split``'s mask at its original size, re-read from ``data/raw``."""
        sample = self.split_samples(split)[i]
        shape = self.original_shape(split, i)
        self._notes = []
        return self.load_mask(sample, shape)

    def original_shape(self, split: str, i: int) -> tuple[int, int]:
        """``(H, W)`` of item ``i`` of ``split`` as stored upstream."""
        assert self.index is not None
        h, w = self.index.shapes[int(self.split_rows[split][i])]
        return int(h), int(w)

    def split_samples(self, split: str) -> list[Sample]:
        """The samples of ``split`` in loader order."""
        self.setup()
        if split not in self.split_rows:
            known = [s for s in (*SPLIT_NAMES, UNLABELLED) if s in self.split_rows]
            raise ConfigError(f"split {split!r} does not exist for data={self.name}; use {known}")
        return [self.samples[r] for r in self.split_rows[split]]

    # -- prepare (cache) ----------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        return self.processed / f"{self.size[0]}x{self.size[1]}"

    def _settings(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "channels": self.channels,
            "mask_mode": self.mask_mode,
            "num_classes": self.num_classes,
            "mask_size_mismatch": self.mask_size_mismatch,
            "invert_mask": self.invert_mask,
            "needs_masks": self.needs_masks,
        }

    def _fingerprint(self, samples: Sequence[Sample]) -> str:
        """Hash of the sample list (ids, relative paths, file sizes): changes with the raw data."""
        digest = hashlib.sha1()
        for s in samples:
            files = [(self._rel(p), p.stat().st_size) for p in (s.image, *s.masks)]
            meta = (s.id, s.group, s.label, s.labelled, s.split, s.fg_class, files)
            digest.update(repr(meta).encode())
        return digest.hexdigest()

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def _read_index(self) -> CacheIndex | None:
        path = self.cache_dir / "index.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return CacheIndex(**data)
        except (OSError, ValueError, TypeError):
            return None

    def _discover_checked(self) -> list[Sample]:
        if not self.root.is_dir():
            raise DataError(
                f"{self.root} does not exist; run `medpipe fetch data={self.name}` first."
            )
        samples = self.discover()
        if not samples:
            raise DataError(
                f"{self.root} holds no {self.name} images in the expected layout; run "
                f"`medpipe fetch data={self.name}` (with MEDPIPE_DATA_MIRROR set when offline)."
            )
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise DataError(f"{self.root}: duplicate image ids {dupes[:5]}; ids must be unique.")
        return samples

    def prepare(self, force: bool = False) -> Path:
        """Decode, validate and resize every image (and mask) once into ``cache_dir``."""
        samples = self._discover_checked()
        self._discovered = samples
        fingerprint = self._fingerprint(samples)
        current = self._read_index()
        if (
            not force
            and current is not None
            and current.version == CACHE_VERSION
            and current.fingerprint == fingerprint
            and current.settings == self._settings()
            and (self.cache_dir / "images.npy").is_file()
        ):
            log.info("%s is up to date (%d images)", self.cache_dir, len(current.ids))
            return self.cache_dir
        log.info("decoding %d %s images into %s", len(samples), self.name, self.cache_dir)
        h, w = self.size
        self._notes = []
        index = CacheIndex(CACHE_VERSION, self._settings(), fingerprint)
        self.processed.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.cache_dir.name}-", dir=self.processed))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary output folder
        try:
            n = len(samples)
            images = np.lib.format.open_memmap(
                tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, h, w, self.channels)
            )
            masks = None
            if self.needs_masks:
                masks = np.lib.format.open_memmap(
                    tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, h, w)
                )
            for i, sample in enumerate(samples):
                img = read_image(sample.image)
                mask = None
                if self.needs_masks and sample.labelled:
                    mask = self.load_mask(sample, img.shape[:2])
                small, small_mask = resize_pair(to_channels(img, self.channels), mask, (h, w))
                images[i] = small.reshape(h, w, self.channels)
                if masks is not None:
                    masks[i] = 0 if small_mask is None else small_mask
                index.ids.append(sample.id)
                index.shapes.append([int(img.shape[0]), int(img.shape[1])])
                positive = bool(mask is not None and mask.any())
                index.positive.append(positive)
                index.labels.append(sample.label or ("positive" if positive else "empty"))
            for arr in (images, masks):
                if arr is not None:
                    arr.flush()
            del images, masks
            index.notes = list(self._notes)
            write_json(tmp / "index.json", asdict(index))  # written last: marks a complete cache
            self._swap_in(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("cached %d images in %s", len(samples), self.cache_dir)
        return self.cache_dir

    def _swap_in(self, tmp: Path) -> None:
        """Rename the finished cache folder over ``cache_dir`` (old one removed after)."""
        old = None
        if self.cache_dir.exists():
            old = self.cache_dir.with_name(f".{self.cache_dir.name}-old-{os.getpid()}")
            os.replace(self.cache_dir, old)
        os.replace(tmp, self.cache_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    # -- setup --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare()  # a no-op when the cache is current (the `prepare` stage built it)
        self.samples = self._discovered
        index = self._read_index()
        assert index is not None
        self.index = index
        images = np.load(self.cache_dir / "images.npy", mmap_mode="r")
        masks = np.load(self.cache_dir / "masks.npy", mmap_mode="r") if self.needs_masks else None
        self.split_rows = self._make_splits()
        self._build_datasets(images, masks)

    def stratify_labels(self, rows: np.ndarray) -> list[str]:
        """Labels the split keeps balanced: the sample label, or foreground present / absent."""
        assert self.index is not None
        return [self.index.labels[r] for r in rows]

    def _labelled_rows(self) -> np.ndarray:
        return np.array([i for i, s in enumerate(self.samples) if s.labelled], dtype=np.int64)

    def _make_splits(self) -> dict[str, np.ndarray]:
        """Official splits when the distribution defines all three, else carved by ``split``.

        When only some official splits exist (e.g. ISIC training + test folders), the missing
        ones are carved from the official training images.
        """
        assert self.index is not None
        labelled = self._labelled_rows()
        official = {self.samples[r].split for r in labelled}
        rows: dict[str, np.ndarray] = {}
        if official == set(SPLIT_NAMES):
            for name in SPLIT_NAMES:
                rows[name] = np.array(
                    [r for r in labelled if self.samples[r].split == name], dtype=np.int64
                )
        else:
            pool = np.array(
                [r for r in labelled if self.samples[r].split in (None, "train")], dtype=np.int64
            )
            labels = self.stratify_labels(pool)
            groups = None
            if self.split_spec.method == "grouped":
                groups = [self.samples[r].group or self.samples[r].id for r in pool]
            parts = self.split_spec.split(labels, groups)
            rows = {name: pool[parts[name]] for name in SPLIT_NAMES}
            for name in ("val", "test"):
                given = [r for r in labelled if self.samples[r].split == name]
                if given:  # an official split wins; its carved counterpart goes back to train
                    rows["train"] = np.sort(np.concatenate([rows["train"], rows[name]]))
                    rows[name] = np.array(given, dtype=np.int64)
        rows["train"] = self._apply_empty_policy(rows["train"])
        unlabelled = [i for i, s in enumerate(self.samples) if not s.labelled]
        if unlabelled:
            rows[UNLABELLED] = np.array(unlabelled, dtype=np.int64)
        return rows

    def _apply_empty_policy(self, train: np.ndarray) -> np.ndarray:
        """``empty_slices.policy=sample``: keep ``ratio`` x (#positive) empty training images."""
        if self.empty_policy == "keep" or not self.needs_masks:
            return train
        assert self.index is not None
        pos = np.array([r for r in train if self.index.positive[r]], dtype=np.int64)
        neg = np.array([r for r in train if not self.index.positive[r]], dtype=np.int64)
        n_keep = min(len(neg), round(self.empty_ratio * len(pos)))
        rng = np.random.default_rng(self.split_spec.seed)
        kept = rng.choice(neg, size=n_keep, replace=False) if n_keep else neg[:0]
        log.info(
            "empty_slices: training on %d images with foreground and %d of %d without",
            len(pos),
            n_keep,
            len(neg),
        )
        return np.sort(np.concatenate([pos, kept])).astype(np.int64)

    def _build_datasets(self, images: np.ndarray, masks: np.ndarray | None) -> None:
        multiclass = self.mask_mode == "multiclass"
        for split, rows in self.split_rows.items():
            tf = self.train_transform if split == "train" else self.eval_transform
            self.datasets[split] = SegmentationDataset(
                images, masks, rows, [self.samples[r] for r in rows], tf, multiclass=multiclass
            )

    # -- loaders ------------------------------------------------------------------------------
    def loader(self, split: str, *, shuffle: bool = False) -> DataLoader:
        """DataLoader over ``split`` (train/val/test, or ``unlabelled`` where a dataset has it)."""
        self.setup()
        dataset = self.datasets.get(split)
        drop_last = shuffle and dataset is not None and len(dataset) > self.batch_size
        return self.split_loader(split, data=self.name, shuffle=shuffle, drop_last=drop_last)

    def dataloader(self, split: str) -> DataLoader:
        """Unshuffled loader over ``split`` (what ``medpipe predict --split`` uses)."""
        return self.loader(split)

    def sample_ids(self, split: str) -> list[str]:
        """Image ids of ``split`` in loader order (prediction file names and CSV rows)."""
        return [s.id for s in self.split_samples(split)]

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        return {s: len(self.datasets[s]) for s in SPLIT_NAMES}
