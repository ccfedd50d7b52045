"""NIH/NLM malaria cells: ``cell_images/{Parasitized,Uninfected}/*.png``, label 1 = Parasitized.

Three ways in (``data.source``):

* ``nlm`` - the upstream ``cell_images.zip`` from the U.S. National Library of Medicine, verified
  against its published size and SHA-256 and extracted into ``data/raw/malaria/cell_images``;
* ``kaggle`` - the Kaggle dataset ``iarunava/cell-images-for-detecting-malaria`` through the
  Kaggle API (credentials from Kaggle's standard places; the package is imported only then);
* ``mirror`` - a local folder laid out like upstream (``<mirror>/malaria/cell_images.zip`` or the
  extracted ``<mirror>/malaria/cell_images/``); ``auto`` (default) is the mirror when one is set,
  else ``nlm``.

``prepare`` decodes every PNG once (any mode -> RGB, resized to ``data.size``) into a uint8 cache
``data/processed/malaria/cells_<size>.npz`` with labels, file names and patient ids, so training
never decodes a PNG. Batches are then cut from that array with one fancy-index per batch
(:class:`CachedImageDataset.__getitems__`), augmented per image only where the config asks for it
and normalised per batch in torch.

Splits are seeded stratified or patient-level grouped (the patient/slide code comes from the file
name, see :func:`medpipe.data.splits.malaria_patient_id`), optionally k-fold; a grouped split that
puts one patient in two splits fails loudly.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from medpipe.data.base import LoaderOptions, check_mean_std
from medpipe.data.sources import RemoteFile, fetch_file, resolve_mirror
from medpipe.data.splits import SPLIT_NAMES, SplitSpec, assert_no_group_leak, malaria_patient_ids
from medpipe.data.transforms import build_transform
from medpipe.errors import ChecksumError, ConfigError, DataError, MedpipeError
from medpipe.io import atomic_open, write_json

log = logging.getLogger(__name__)

# Upstream archive. NLM publishes no MD5 for it; the size and SHA-256 below are those recorded by
# TensorFlow Datasets for this file (tensorflow_datasets/url_checksums/malaria.txt, recorded at the
# former address https://ceb.nlm.nih.gov/proj/malaria/cell_images.zip, which now redirects to
# NLM_URL). Both are checked after every download or mirror copy.
NLM_URL = "https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip"
NLM_ZIP_NAME = "cell_images.zip"
NLM_ZIP_SIZE = 353_452_851
NLM_ZIP_SHA256 = "0a949556b2414159b5100192609805376654c4266d8d187be9b1922fad43c668"
NLM_REMOTE = RemoteFile(NLM_ZIP_NAME, NLM_URL, md5=None, size=NLM_ZIP_SIZE)
KAGGLE_DATASET = "iarunava/cell-images-for-detecting-malaria"

CELLS_DIR = "cell_images"
#: Class folders in label order: index 0 = Uninfected, 1 = Parasitized.
CLASS_DIRS: tuple[str, str] = ("Uninfected", "Parasitized")
SOURCES = ("auto", "nlm", "kaggle", "mirror")
ON_BAD_IMAGE = ("error", "skip")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
_SHOW = 10  # skipped files listed by name in the log


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode_image(data: bytes | str | os.PathLike[str], size: int, *, name: str) -> np.ndarray:
    """Decode one image file (path or bytes) to a ``(size, size, 3)`` uint8 RGB array.

    Any PIL mode is accepted: palette, grey, grey+alpha and RGBA are converted to RGB (alpha is
    dropped), 16-bit and 32-bit grey are scaled to 8 bits first. Raises :class:`DataError` naming
    ``name`` for a corrupt or truncated file.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()  # decodes now: a truncated PNG fails here, not in a worker later
            img = _to_rgb(img)
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"{name}: cannot decode the image ({type(exc).__name__}: {exc}); the file is corrupt "
            "or truncated. Replace or delete it, or set data.on_bad_image=skip to leave it out "
            "(skipped files are listed)."
        ) from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass(frozen=True)
class Skipped:
    """An image left out by ``data.on_bad_image=skip``, with the reason."""

    name: str
    reason: str


def check_on_bad_image(value: str) -> str:
    """Validated ``data.on_bad_image``."""
    key = str(value).lower()
    if key not in ON_BAD_IMAGE:
        raise ConfigError(
            f"data.on_bad_image={value!r}: use 'error' (stop at the first unreadable image) or "
            "'skip' (leave unreadable images out and list them)."
        )
    return key


def decode_many(
    items: Sequence[tuple[str, Callable[[], bytes | Path]]],
    size: int,
    *,
    on_bad_image: str = "error",
    what: str = "images",
) -> tuple[np.ndarray, np.ndarray, list[Skipped]]:
    """Decode ``(name, loader)`` items into ``(images N x size x size x 3, kept indices, skipped)``.

    With ``on_bad_image="error"`` the first unreadable image raises :class:`DataError` naming it;
    with ``"skip"`` it is left out, and how many and which are logged as a warning and returned,
    never skipped silently.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    mode = check_on_bad_image(on_bad_image)
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[Skipped] = []
    columns = (TextColumn("[bold]decoding {task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, transient=True, disable=len(items) < 2000) as progress:
        task = progress.add_task(what, total=len(items))
        for i, (name, load) in enumerate(items):
            try:
                out[len(kept)] = decode_image(load(), size, name=name)
            except DataError as exc:
                if mode == "error":
                    raise
                skipped.append(Skipped(name, str(exc.__cause__ or exc)))
            else:
                kept.append(i)
            progress.advance(task)
    if skipped:
        listed = ", ".join(s.name for s in skipped[:_SHOW])
        more = f" and {len(skipped) - _SHOW} more" if len(skipped) > _SHOW else ""
        log.warning(
            "data.on_bad_image=skip: skipped %d unreadable %s of %d: %s%s",
            len(skipped),
            what,
            len(items),
            listed,
            more,
        )
    return out[: len(kept)], np.asarray(kept, dtype=np.int64), skipped


# --------------------------------------------------------------------------------------------
# Folder layout
# --------------------------------------------------------------------------------------------


def list_cells(cells_dir: Path) -> tuple[list[str], np.ndarray]:
    """Sorted ``Class/file.png`` names under ``cells_dir`` and their labels (1 = Parasitized).

    Only image files count (the NLM zip also holds ``Thumbs.db``). A missing or empty class folder
    is a :class:`DataError` naming it: a one-class dataset would train a useless model.
    """
    names: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(CLASS_DIRS):
        folder = cells_dir / cls
        if not folder.is_dir():
            raise DataError(
                f"{folder} does not exist: expected the NLM layout {CELLS_DIR}/"
                f"{{{','.join(CLASS_DIRS)}}}/*.png. Run `medpipe fetch data=malaria --force`."
            )
        files = sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise DataError(
                f"class folder {folder} holds no images (.png); every class needs images. "
                "Re-fetch the data (`medpipe fetch data=malaria --force`) or fix the folder."
            )
        names += [f"{cls}/{f}" for f in files]
        labels += [label] * len(files)
    return names, np.asarray(labels, dtype=np.int64)


def find_cells_dir(root: Path) -> Path | None:
    """The shallowest folder under ``root`` holding both class folders (Kaggle nests a copy)."""
    candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    found = [p for p in candidates if all((p / c).is_dir() for c in CLASS_DIRS)]
    return min(found, key=lambda p: len(p.parts)) if found else None


@contextmanager
def staged_dir(target: Path) -> Any:
    """Yield an empty temporary folder beside ``target``; it replaces ``target`` on success only.

    The directory counterpart of :func:`medpipe.io.atomic_path`: an interrupted extraction or
    copy never leaves a half-filled ``target``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _copy_cells(src: Path, dest: Path) -> int:
    """Copy the class folders' image files from ``src`` into ``dest``; returns the file count."""
    n = 0
    for cls in CLASS_DIRS:
        (dest / cls).mkdir(parents=True)
        folder = src / cls
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist; the source is not in the NLM layout.")
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                shutil.copyfile(p, dest / cls / p.name)
                n += 1
    list_cells(dest)  # an empty class folder fails here, before anything is installed
    return n


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_nlm_zip(path: Path, *, name: str | None = None) -> None:
    """Check size and SHA-256 of the NLM zip; a bad file is deleted and ChecksumError raised."""
    shown = name or str(path)
    size = path.stat().st_size
    problem = None
    if size != NLM_ZIP_SIZE:
        problem = f"expected {NLM_ZIP_SIZE} bytes, got {size}"
    else:
        digest = sha256sum(path)
        if digest != NLM_ZIP_SHA256:
            problem = f"expected SHA-256 {NLM_ZIP_SHA256}, got {digest}"
    if problem:
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {shown}: {problem}. The file is truncated or not the NLM "
            "release; it was deleted. Fetch it again, or fix the copy in the mirror."
        )


def _extract_cells(zip_path: Path, dest: Path) -> int:
    """Extract the cell images of ``zip_path`` into ``dest/{Uninfected,Parasitized}``."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".extract.") as tmp:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)  # zipfile strips absolute paths and '..' components
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{zip_path} is not a readable zip ({exc}); fetch it again.") from exc
        found = find_cells_dir(Path(tmp))
        if found is None:
            raise DataError(
                f"{zip_path} holds no {'/'.join(CLASS_DIRS)} folders; it is not the malaria zip."
            )
        return _copy_cells(found, dest)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def batched_collate(batch: Any) -> Any:
    """Collate for :class:`CachedImageDataset`: its ``__getitems__`` already returns a batch."""
    if isinstance(batch, _Batch):
        return (batch.x, batch.y)
    return default_collate(batch)


class _Batch(tuple):
    """Marker type for a batch built by ``__getitems__`` (so collate leaves it alone)."""

    @property
    def x(self) -> torch.Tensor:
        return self[0]

    @property
    def y(self) -> torch.Tensor:
        return self[1]


class BatchDihedral:
    """HorizontalFlip / VerticalFlip / RandomRotate90 applied to a whole ``(N, H, W, C)`` batch.

    Written by hand (albumentations transforms one image per call) because per-image calls were
    most of the data-loading time; the semantics are albumentations': each step fires with its
    probability ``p`` per image, RandomRotate90 turns by a uniform 0-3 quarter turns. Randomness
    comes from ``np.random``, which Lightning seeds per process and per DataLoader worker.
    """

    NAMES = frozenset({"HorizontalFlip", "VerticalFlip", "RandomRotate90"})

    def __init__(self, steps: Sequence[tuple[str, float]]) -> None:
        self.steps = [(str(name), float(p)) for name, p in steps]

    @classmethod
    def from_config(cls, specs: Sequence[Mapping[str, Any]]) -> BatchDihedral | None:
        """The batched equivalent of ``specs``, or None when they hold anything else."""
        steps = []
        for spec in specs:
            spec = dict(spec)
            name, p = spec.pop("name", None), spec.pop("p", 0.5)
            if name not in cls.NAMES or spec or not 0 <= float(p) <= 1:
                return None
            steps.append((name, float(p)))
        return cls(steps)

    def __call__(self, imgs: np.ndarray) -> np.ndarray:
        n = len(imgs)
        for name, p in self.steps:
            hit = np.random.random_sample(n) < p
            if name == "HorizontalFlip":
                imgs[hit] = imgs[hit][:, :, ::-1]
            elif name == "VerticalFlip":
                imgs[hit] = imgs[hit][:, ::-1]
            else:
                k = np.random.randint(0, 4, n)
                for turns in (1, 2, 3):
                    sel = hit & (k == turns)
                    if sel.any():
                        imgs[sel] = np.rot90(imgs[sel], turns, axes=(1, 2))
        return imgs


class BatchBrightnessContrast:
    """albumentations' ``RandomBrightnessContrast`` with its own draw per image, on a batch.

    Written by hand because albumentations' batch path (``apply_to_images``) draws one
    alpha/beta for the whole batch, and per-image calls cost more than the arithmetic. Same
    parameters and uint8 result as albumentations (``clip(img * alpha + beta)``, truncated):
    alpha = 1 + U(contrast_limit), beta = U(brightness_limit) x 255 (or x the image mean when
    ``brightness_by_max`` is false), each image hit with probability ``p``.
    """

    NAME = "RandomBrightnessContrast"
    KEYS = frozenset({"brightness_limit", "contrast_limit", "brightness_by_max", "p"})

    def __init__(
        self,
        brightness_limit: float | Sequence[float] = 0.2,
        contrast_limit: float | Sequence[float] = 0.2,
        brightness_by_max: bool = True,
        p: float = 0.5,
    ) -> None:
        def limits(v: float | Sequence[float]) -> tuple[float, float]:
            lo, hi = (-float(v), float(v)) if isinstance(v, int | float) else map(float, v)
            return lo, hi

        self.brightness = limits(brightness_limit)
        self.contrast = limits(contrast_limit)
        self.by_max = bool(brightness_by_max)
        self.p = float(p)

    def __call__(self, imgs: np.ndarray) -> np.ndarray:
        if imgs.dtype != np.uint8:
            raise ValueError(f"{self.NAME} batch path expects uint8 images, got {imgs.dtype}")
        n = len(imgs)
        hit = np.random.random_sample(n) < self.p
        alpha = (1.0 + np.random.uniform(*self.contrast, n)).astype(np.float32)
        beta = np.random.uniform(*self.brightness, n).astype(np.float32)
        if not hit.any():
            return imgs
        sub = imgs[hit].astype(np.float32)
        shape = (-1,) + (1,) * (imgs.ndim - 1)
        scale = np.float32(255.0) if self.by_max else sub.reshape(len(sub), -1).mean(axis=1)
        sub *= alpha[hit].reshape(shape)
        sub += (beta[hit] * scale).reshape(shape)
        imgs[hit] = np.clip(sub, 0, 255).astype(np.uint8)
        return imgs


class BatchAugment:
    """``data.train_augment`` split into a batched prefix and a per-image albumentations rest.

    The leading flips, quarter turns and brightness/contrast steps run on the whole batch
    (:class:`BatchDihedral`, :class:`BatchBrightnessContrast`); from the first other transform
    on, the remaining steps run per image through albumentations, so the configured order is
    kept.
    """

    def __init__(
        self, batch_steps: Sequence[Callable[[np.ndarray], np.ndarray]], per_image: A.Compose | None
    ) -> None:
        self.batch_steps = list(batch_steps)
        self.per_image = per_image

    @classmethod
    def from_config(cls, specs: Sequence[Mapping[str, Any]]) -> BatchAugment | None:
        """Build from transform specs; None when ``specs`` is empty."""
        rest = [dict(s) for s in specs]
        steps: list[Callable[[np.ndarray], np.ndarray]] = []
        while rest and (step := cls._batched(rest[0])) is not None:
            rest.pop(0)
            if isinstance(step, BatchDihedral) and steps and isinstance(steps[-1], BatchDihedral):
                steps[-1].steps.extend(step.steps)  # consecutive flips/turns: one pass
            else:
                steps.append(step)
        if not steps and not rest:
            return None
        per_image = (
            A.Compose([build_transform(s, option="data.train_augment") for s in rest])
            if rest
            else None
        )
        return cls(steps, per_image)

    @staticmethod
    def _batched(spec: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray] | None:
        """The batch-wise equivalent of one transform spec, or None when there is none."""
        dihedral = BatchDihedral.from_config([spec])
        if dihedral is not None:
            return dihedral
        options = {k: v for k, v in spec.items() if k != "name"}
        if spec.get("name") != BatchBrightnessContrast.NAME or not (
            set(options) <= BatchBrightnessContrast.KEYS
        ):
            return None
        build_transform(spec, option="data.train_augment")  # albumentations' own validation
        return BatchBrightnessContrast(**options)

    def __call__(self, imgs: np.ndarray) -> np.ndarray:
        for step in self.batch_steps:
            imgs = step(imgs)
        if self.per_image is not None:
            imgs = np.stack([self.per_image(image=im)["image"] for im in imgs])
        return imgs


class CachedImageDataset(Dataset):
    """uint8 images ``(N, H, W, C)`` + labels; batches are cut and normalised in one go.

    ``__getitems__`` (used by DataLoader for whole batches) fancy-indexes the array once,
    augments (batch-wise for flips/rotations, else per image with albumentations) and normalises
    the batch in numpy: per-image Python work is what makes PNG folders slow, and torch's
    element-wise kernels stall on a CPU shared with the training threads.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        augment: BatchAugment | BatchDihedral | A.Compose | None = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got {images.shape}")
        self.images, self.labels, self.augment = images, labels, augment
        self._seeded_pid: int | None = None
        c = images.shape[-1]
        self.mean = (np.asarray(mean, dtype=np.float32) * 255.0).reshape(1, c, 1, 1)
        self.inv_std = (1.0 / (np.asarray(std, dtype=np.float32) * 255.0)).reshape(1, c, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def _batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        imgs = self.images[idx]  # a copy: augmentation never touches the cache
        per_image = self.augment
        if isinstance(self.augment, BatchAugment):
            per_image = self.augment.per_image
        if isinstance(per_image, A.Compose) and self._seeded_pid != os.getpid():
            # albumentations draws its own seed from the OS unless given one: derive it from
            # np.random, which Lightning seeds per process and per worker, so that runs repeat.
            per_image.set_random_seed(int(np.random.randint(0, 2**31 - 1)))
            self._seeded_pid = os.getpid()
        if isinstance(self.augment, BatchAugment | BatchDihedral):
            imgs = self.augment(imgs)
        elif self.augment is not None:
            imgs = np.stack([self.augment(image=im)["image"] for im in imgs])
        x = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)).astype(np.float32)
        x -= self.mean
        x *= self.inv_std
        return torch.from_numpy(x), torch.as_tensor(self.labels[idx])

    def __getitems__(self, indices: Sequence[int]) -> _Batch:
        return _Batch(self._batch(indices))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._batch([int(index)])
        return x[0], y[0]


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """RGB uint8 ``(N, H, W, 3)`` -> ``channels`` (3 unchanged, 1 = ITU-R 601 luma as PIL's L)."""
    if channels == 3:
        return images
    luma = images.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(luma + 0.5, 0, 255).astype(np.uint8)[..., None]


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed npz atomically (loading it is then a plain read, no inflate)."""
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_npz(path: Path, keys: Iterable[str], *, hint: str) -> dict[str, np.ndarray]:
    """Load a prepared cache; DataError naming the file and ``hint`` when missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable cache ({exc}); {hint}") from exc
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks arrays {missing}; {hint}")
    return arrays


# --------------------------------------------------------------------------------------------
# DataModule base: cached uint8 arrays -> loaders
# --------------------------------------------------------------------------------------------


class CachedImageDataModule(LoaderOptions, L.LightningDataModule):
    """Common options and loaders of DataModules serving a prepared uint8 image cache.

    Subclasses fill ``self.datasets`` (``train``/``val``/``test``) and ``self.ids`` (one id per
    sample and split, for prediction files) in ``setup``.
    """

    task_type = "binary-class"

    def __init__(
        self,
        *,
        size: int,
        channels: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        split: Mapping[str, Any] | None,
        on_bad_image: str,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        train_augment: Sequence[Mapping[str, Any]] | None,
        class_names: Sequence[str],
    ) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024:
            raise ConfigError(f"data.size={size!r} must be an integer in [8, 1024] (pixels)")
        if channels not in (1, 3):
            raise ConfigError(f"data.channels={channels!r}: use 3 (RGB) or 1 (grey)")
        self.set_loader_options(batch_size, num_workers, pin_memory, persistent_workers)
        self.size, self.channels = int(size), int(channels)
        self.on_bad_image = check_on_bad_image(on_bad_image)
        try:
            self.split = SplitSpec(**dict(split or {}))
        except TypeError as exc:
            raise ConfigError(
                f"data.split: {exc}; keys are method, val_fraction, test_fraction, seed, "
                "n_folds, fold"
            ) from exc
        self.mean, self.std = check_mean_std(mean, std, self.channels)
        # Built now so that a bad transform name fails before any data is read.
        specs = list(train_augment or [])
        self.train_augment = BatchAugment.from_config(specs)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.datasets: dict[str, CachedImageDataset] = {}
        self.ids: dict[str, np.ndarray] = {}
        self.skipped: list[Skipped] = []

    def _make_datasets(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        ids: np.ndarray,
        splits: Mapping[str, np.ndarray],
    ) -> None:
        images = to_channels(images, self.channels)
        for name, idx in splits.items():
            augment = self.train_augment if name == "train" else None
            self.datasets[name] = CachedImageDataset(
                images[idx], labels[idx], mean=self.mean, std=self.std, augment=augment
            )
            self.ids[name] = ids[idx]

    def dataloader(self, split: str, *, shuffle: bool = False) -> DataLoader:
        """Loader of any split this DataModule holds (``train``, ``val``, ``test``, ...)."""
        self.setup()
        return self.split_loader(
            split, data=type(self).__name__, shuffle=shuffle, collate_fn=batched_collate
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        return {s: len(self.datasets[s]) for s in SPLIT_NAMES}

    def sample_ids(self, split: str) -> list[str]:
        """One id per sample of ``split``, in loader order (for prediction files)."""
        self.setup()
        return [str(i) for i in self.ids[split]]


# --------------------------------------------------------------------------------------------
# Malaria
# --------------------------------------------------------------------------------------------


class MalariaDataModule(CachedImageDataModule):
    """NIH/NLM malaria cells, binary (0 = Uninfected, 1 = Parasitized), from a prepared cache."""

    def __init__(
        self,
        root: str | Path = "data/raw/malaria",
        processed: str | Path = "data/processed/malaria",
        source: str = "auto",
        mirror: str | Path | None = None,
        mirror_subdir: str = "malaria",
        size: int = 64,
        channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        split: Mapping[str, Any] | None = None,
        on_bad_image: str = "error",
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        train_augment: Sequence[Mapping[str, Any]] | None = None,
        **_: Any,
    ) -> None:
        split = {"method": "grouped", "val_fraction": 0.15, "test_fraction": 0.2, **(split or {})}
        super().__init__(
            size=size,
            channels=channels,
            mean=mean,
            std=std,
            split=split,
            on_bad_image=on_bad_image,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            train_augment=train_augment,
            class_names=CLASS_DIRS,
        )
        self.source = str(source).lower()
        if self.source not in SOURCES:
            raise ConfigError(
                f"data.source={source!r}: use one of {list(SOURCES)} (auto = the mirror when "
                "one is set, else the NLM zip)"
            )
        self.root, self.processed = Path(root), Path(processed)
        self.mirror, self.mirror_subdir = mirror, mirror_subdir
        self.patients: dict[str, np.ndarray] = {}

    # -- fetch ---------------------------------------------------------------------------------
    @property
    def cells_dir(self) -> Path:
        return self.root / CELLS_DIR

    def fetch(self, *, force: bool = False) -> list[Path]:
        """Put ``cell_images/{Uninfected,Parasitized}`` under ``root`` from the chosen source."""
        target = self.cells_dir
        if not force and target.is_dir():
            names, _ = list_cells(target)
            log.info("%s already present (%d images); --force fetches again", target, len(names))
            return [target]
        source = self.source
        if source == "auto":
            source = "mirror" if resolve_mirror(self.mirror) is not None else "nlm"
        with staged_dir(target) as tmp:
            n = {"mirror": self._from_mirror, "nlm": self._from_nlm, "kaggle": self._from_kaggle}[
                source
            ](tmp, force=force)
        write_json(self.root / "FETCHED.json", {"source": source, "images": n})
        log.info("fetched %d malaria cell images from %s into %s", n, source, target)
        return [target]

    def _from_mirror(self, dest: Path, *, force: bool) -> int:
        root = resolve_mirror(self.mirror)
        if root is None:
            raise ConfigError(
                "data.source=mirror but no mirror is set: set data.mirror=... or "
                "MEDPIPE_DATA_MIRROR to a folder holding malaria/cell_images(.zip)."
            )
        folder = root / self.mirror_subdir
        if (folder / NLM_ZIP_NAME).is_file():
            zip_path = fetch_file(NLM_REMOTE, self.root, mirror_dir=folder, force=True)
            try:
                verify_nlm_zip(zip_path, name=str(folder / NLM_ZIP_NAME))
                return _extract_cells(zip_path, dest)
            finally:
                zip_path.unlink(missing_ok=True)  # the extracted images are what is kept
        if (folder / CELLS_DIR).is_dir():
            log.info("copying %s from mirror", folder / CELLS_DIR)
            return _copy_cells(folder / CELLS_DIR, dest)
        raise DataError(
            f"the data mirror has neither {folder / NLM_ZIP_NAME} nor {folder / CELLS_DIR}/; put "
            "the NLM zip or its extracted folder there, or set data.source=nlm to download."
        )

    def _from_nlm(self, dest: Path, *, force: bool) -> int:
        zip_path = fetch_file(NLM_REMOTE, self.root, mirror_dir=None, force=True)
        try:
            verify_nlm_zip(zip_path, name=NLM_URL)
            return _extract_cells(zip_path, dest)
        finally:
            zip_path.unlink(missing_ok=True)

    def _from_kaggle(self, dest: Path, *, force: bool) -> int:
        api = kaggle_api()
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".kaggle.") as tmp:
            try:
                api.dataset_download_files(KAGGLE_DATASET, path=tmp, unzip=True, quiet=False)
            except Exception as exc:  # network, HTTP 401/403/404
                raise kaggle_error(
                    f"download of the Kaggle dataset {KAGGLE_DATASET}", exc
                ) from None
            found = find_cells_dir(Path(tmp))
            if found is None:
                raise DataError(
                    f"the Kaggle dataset {KAGGLE_DATASET} holds no {'/'.join(CLASS_DIRS)} "
                    "folders; has its layout changed? Use data.source=nlm instead."
                )
            return _copy_cells(found, dest)

    # -- prepare -------------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        return self.processed / f"cells_{self.size}.npz"

    def prepare(self, *, force: bool = False) -> Path:
        """Decode every cell image once into ``processed/cells_<size>.npz`` (uint8 RGB)."""
        out = self.cache_path
        if out.is_file() and not force:
            log.info("%s already prepared; --force rebuilds it", out)
            return out
        if not self.cells_dir.is_dir():
            raise DataError(
                f"{self.cells_dir} does not exist; run `medpipe fetch data=malaria` first."
            )
        names, labels = list_cells(self.cells_dir)
        patients = malaria_patient_ids(names)  # a bad file name fails before decoding
        cells = self.cells_dir

        def loader(name: str) -> Callable[[], Path]:
            return lambda: cells / name

        images, kept, skipped = decode_many(
            [(str(cells / n), loader(n)) for n in names],
            self.size,
            on_bad_image=self.on_bad_image,
            what="malaria cells",
        )
        files = np.asarray(names)[kept]
        save_npz(
            out,
            images=images,
            labels=labels[kept],
            files=files.astype(str),
            patients=patients[kept].astype(str),
            size=np.asarray(self.size),
        )
        write_json(
            self.processed / f"cells_{self.size}.json",
            {
                "size": self.size,
                "images": len(files),
                "per_class": {c: int((labels[kept] == i).sum()) for i, c in enumerate(CLASS_DIRS)},
                "patients": len(set(patients[kept].tolist())),
                "skipped": [{"file": s.name, "reason": s.reason} for s in skipped],
            },
        )
        self.skipped = skipped
        log.info("prepared %d cells at %dpx -> %s", len(files), self.size, out)
        return out

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if not self.cache_path.is_file():
            log.info("no prepared cache at %s; preparing it now", self.cache_path)
            self.prepare()
        hint = "rebuild it with `medpipe prepare data=malaria --force`."
        arrays = load_npz(
            self.cache_path, ("images", "labels", "files", "patients", "size"), hint=hint
        )
        images, labels = arrays["images"], arrays["labels"].astype(np.int64)
        if images.shape[1:3] != (self.size, self.size):
            raise DataError(f"{self.cache_path} holds {images.shape[1:3]} images; {hint}")
        patients = arrays["patients"]
        grouped = self.split.method == "grouped"
        splits = self.split.split(labels, groups=patients if grouped else None)
        if grouped:
            assert_no_group_leak(splits, patients)  # fail loudly, never train on a leak
        self._make_datasets(images, labels, arrays["files"], splits)
        self.patients = {k: patients[v] for k, v in splits.items()}


# --------------------------------------------------------------------------------------------
# Kaggle
# --------------------------------------------------------------------------------------------


def kaggle_api() -> Any:
    """An authenticated ``KaggleApi``; credentials are located first, never printed."""
    from medpipe.kaggle.client import _load_kaggle_api, find_credentials

    source = find_credentials()  # MedpipeError explaining where to put a token when absent
    api = _load_kaggle_api()()
    try:
        api.authenticate()
    except SystemExit:
        raise MedpipeError(
            f"Kaggle rejected the credentials from {source.description}; create a new token at "
            "https://www.kaggle.com/settings and replace them."
        ) from None
    return api


def kaggle_error(what: str, exc: BaseException) -> MedpipeError:
    """A one-line, secret-free error for a failed Kaggle API call."""
    from medpipe.kaggle.client import redact

    return MedpipeError(
        f"{what} failed: {type(exc).__name__}: {redact(str(exc))}. Check the network, your "
        "Kaggle token, and that you accepted the dataset/competition rules on kaggle.com."
    )
