"""Kaggle competition folders in the course-homework format, as a DataModule.

A competition folder holds ``train_data.zip`` (images named ``<id>.<ext>``), ``train_labels.csv``
(columns ``id,label``, labels 0/1), ``test_data.zip`` and, optionally, ``sample_submission.csv``
(the ids Kaggle expects, in its order). ``prepare`` checks that the three agree (every labelled id
has an image and every image a label, labels are 0/1, test ids equal the sample's) and decodes both
zips once into ``processed/competition_<size>.npz``.

The labelled images are split into train/val/test (a held-out test split, so ``medpipe evaluate``
works as for any dataset); the unlabelled test zip is the ``submission`` split, which
``medpipe predict`` turns into ``submissions/<experiment>.csv``.

``data.source`` says where the folder comes from: ``local`` (already in ``data.root``), ``mirror``
(copied from ``<mirror>/<mirror_subdir>/``), ``kaggle`` (``kaggle competitions download`` of
``data.competition`` through the API) or ``cells``: built from the NIH malaria cells
(``data/raw/malaria``), with a patient-level held-out test set and its true labels in
``solution.csv``, a local rehearsal of the homework that scores the submission.
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from medpipe.data.malaria import (
    CLASS_DIRS,
    IMAGE_SUFFIXES,
    CachedImageDataModule,
    CachedImageDataset,
    decode_many,
    find_cells_dir,
    kaggle_api,
    kaggle_error,
    list_cells,
    load_npz,
    save_npz,
    staged_dir,
    to_channels,
)
from medpipe.data.sources import resolve_mirror
from medpipe.data.splits import malaria_patient_ids
from medpipe.errors import ConfigError, DataError
from medpipe.io import atomic_open, atomic_path, write_json
from medpipe.kaggle.submission import natural_key, read_labels_csv

log = logging.getLogger(__name__)

SOURCES = ("local", "mirror", "kaggle", "cells")
SUBMISSION_SPLIT = "submission"
_SHOW = 5


def one_line(message: str) -> str:
    """Fold the multi-line problem lists of medpipe.kaggle.submission into one line."""
    return message.replace(":\n  - ", ": ").replace("\n  - ", "; ").replace("\n", " ")


def _examples(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:_SHOW])
    return shown + (f" ... and {len(values) - _SHOW} more" if len(values) > _SHOW else "")


# --------------------------------------------------------------------------------------------
# Reading a competition folder
# --------------------------------------------------------------------------------------------


def zip_images(path: Path) -> dict[str, str]:
    """``{id: member name}`` of the images in a zip; the id is the file name without extension.

    Folders, macOS metadata (``__MACOSX/``, ``._*``) and non-image files are ignored; two images
    with the same id are a :class:`DataError`.
    """
    if not path.is_file():
        raise DataError(f"{path} does not exist; run `medpipe fetch` for this competition.")
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i.filename for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not a readable zip ({exc}); download it again.") from exc
    out: dict[str, str] = {}
    dupes: list[str] = []
    for member in members:
        base = Path(member)
        if base.name.startswith(".") or "__MACOSX" in base.parts:
            continue
        if base.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        key = base.stem
        if key in out:
            dupes.append(key)
        out[key] = member
    if dupes:
        raise DataError(f"{path} holds several images for the id(s) {_examples(dupes)}.")
    if not out:
        raise DataError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return out


def read_sample_ids(path: Path) -> list[str]:
    """Ids (first column) of ``sample_submission.csv``, in file order; DataError naming the file."""
    from medpipe.kaggle.submission import _read_sample

    return _read_sample(path)[1]


def match_labels(
    labels: Mapping[str, int], images: Mapping[str, str], *, labels_file: Path, zip_file: Path
) -> tuple[list[str], np.ndarray]:
    """Image ids in natural order and their labels; every label needs an image and vice versa.

    A label id may be given with or without the image's extension (``12`` or ``12.png``).
    """
    resolved: dict[str, int] = {}
    unknown: list[str] = []
    for rid, label in labels.items():
        key = rid if rid in images else Path(rid).stem if Path(rid).stem in images else None
        if key is None:
            unknown.append(rid)
        else:
            resolved[key] = label
    if unknown:
        raise DataError(
            f"labels file {labels_file} has {len(unknown)} id(s) with no image in {zip_file}: "
            f"{_examples(unknown)}. Fix the CSV or use the matching train zip."
        )
    unlabelled = [i for i in images if i not in resolved]
    if unlabelled:
        raise DataError(
            f"{zip_file} has {len(unlabelled)} image(s) without a label in {labels_file}: "
            f"{_examples(sorted(unlabelled, key=natural_key))}. Every training image needs one."
        )
    ids = sorted(resolved, key=natural_key)
    return ids, np.asarray([resolved[i] for i in ids], dtype=np.int64)


def check_test_ids(
    test_ids: Sequence[str], sample_ids: Sequence[str], *, test_zip: Path, sample: Path
) -> None:
    """The test zip's ids must equal the sample submission's, or no valid submission exists."""
    have, want = set(test_ids), set(sample_ids)
    problems = []
    missing = sorted(want - have, key=natural_key)
    extra = sorted(have - want, key=natural_key)
    if missing:
        problems.append(f"{len(missing)} sample id(s) have no image: {_examples(missing)}")
    if extra:
        problems.append(f"{len(extra)} image id(s) are not in the sample: {_examples(extra)}")
    if problems:
        raise DataError(
            f"test zip {test_zip} does not match {sample}: " + "; ".join(problems) + ". Download "
            "both files of the same competition again."
        )


# --------------------------------------------------------------------------------------------
# Building a rehearsal competition from the malaria cells
# --------------------------------------------------------------------------------------------


def build_competition_from_cells(
    cells_dir: Path,
    dest: Path,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    limit: int | None = None,
) -> dict[str, Path]:
    """Write a homework-style competition folder from ``cell_images/{Uninfected,Parasitized}``.

    Cells get shuffled numeric ids (as on Kaggle, the file name gives nothing away); the test set
    holds whole patients (grouped split), so the rehearsal scores like an unseen-patient test.
    Files: ``train_data.zip``, ``train_labels.csv``, ``test_data.zip``, ``sample_submission.csv``
    (all labels 0) and ``solution.csv`` (the true test labels). PNG bytes are copied unchanged.
    ``limit`` keeps only the first ``limit`` cells per class (for quick tests).
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"data.cells_test_fraction={test_fraction!r} must be in (0, 1)")
    names, labels = list_cells(cells_dir)
    if limit is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:limit] for c in (0, 1)])
        names, labels = [names[i] for i in keep], labels[keep]
    patients = malaria_patient_ids(names)
    if len(set(patients.tolist())) < 2:
        raise DataError(f"{cells_dir}: need cells from at least 2 patients to hold some out.")
    gss = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train_idx, test_idx = next(gss.split(np.zeros(len(names)), labels, patients))
    ids = np.random.default_rng(seed).permutation(len(names))

    def write_zip(target: Path, indices: np.ndarray) -> None:
        with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for i in sorted(indices, key=lambda j: ids[j]):
                zf.write(cells_dir / names[i], f"{ids[i]}.png")

    def write_rows(target: Path, rows: list[tuple[Any, Any]]) -> None:
        with atomic_open(target, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(("id", "label"))
            writer.writerows(rows)

    dest.mkdir(parents=True, exist_ok=True)
    out = {
        "train_zip": dest / "train_data.zip",
        "labels_csv": dest / "train_labels.csv",
        "test_zip": dest / "test_data.zip",
        "sample_submission": dest / "sample_submission.csv",
        "solution": dest / "solution.csv",
    }
    write_zip(out["train_zip"], train_idx)
    write_zip(out["test_zip"], test_idx)
    train_sorted = sorted(train_idx, key=lambda j: ids[j])
    test_sorted = sorted(test_idx, key=lambda j: ids[j])
    write_rows(out["labels_csv"], [(ids[i], int(labels[i])) for i in train_sorted])
    write_rows(out["sample_submission"], [(ids[i], 0) for i in test_sorted])
    write_rows(out["solution"], [(ids[i], int(labels[i])) for i in test_sorted])
    log.info(
        "built a competition folder in %s: %d train / %d test cells (%d test patients)",
        dest,
        len(train_idx),
        len(test_idx),
        len(set(patients[test_idx].tolist())),
    )
    return out


# --------------------------------------------------------------------------------------------
# DataModule
# --------------------------------------------------------------------------------------------


class CompetitionDataModule(CachedImageDataModule):
    """A homework-style Kaggle competition: labelled train zip, unlabelled test zip, binary 0/1."""

    def __init__(
        self,
        root: str | Path = "data/raw/competition",
        processed: str | Path = "data/processed/competition",
        source: str = "local",
        competition: str | None = None,
        mirror: str | Path | None = None,
        mirror_subdir: str = "competition",
        cells_root: str | Path = "data/raw/malaria",
        cells_test_fraction: float = 0.25,
        cells_seed: int = 0,
        train_zip: str = "train_data.zip",
        labels_csv: str = "train_labels.csv",
        test_zip: str = "test_data.zip",
        sample_submission: str | None = "sample_submission.csv",
        class_names: Sequence[str] = CLASS_DIRS,
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
        split = {
            "method": "stratified",
            "val_fraction": 0.15,
            "test_fraction": 0.15,
            **(split or {}),
        }
        if len(class_names) != 2:
            raise ConfigError(
                f"data.class_names={list(class_names)}: a 0/1 competition has two class names"
            )
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
            class_names=class_names,
        )
        self.source = str(source).lower()
        if self.source not in SOURCES:
            raise ConfigError(f"data.source={source!r}: use one of {list(SOURCES)}")
        if self.source == "kaggle" and not competition:
            raise ConfigError(
                "data.source=kaggle needs data.competition=<slug> (the name in the competition URL)"
            )
        self.root, self.processed = Path(root), Path(processed)
        self.competition = competition
        self.mirror, self.mirror_subdir = mirror, mirror_subdir
        self.cells_root = Path(cells_root)
        self.cells_test_fraction, self.cells_seed = float(cells_test_fraction), int(cells_seed)
        self.files = {"train_zip": train_zip, "labels_csv": labels_csv, "test_zip": test_zip}
        self.sample_name = sample_submission

    # -- paths ---------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.root / self.files[key]

    @property
    def sample_submission_path(self) -> Path | None:
        """The competition's ``sample_submission.csv`` when it has one."""
        if not self.sample_name:
            return None
        path = self.root / self.sample_name
        return path if path.is_file() else None

    @property
    def solution_path(self) -> Path | None:
        """``solution.csv`` (true test labels): only rehearsal folders built from cells have one."""
        path = self.root / "solution.csv"
        return path if path.is_file() else None

    @property
    def cache_path(self) -> Path:
        return self.processed / f"competition_{self.size}.npz"

    # -- fetch ---------------------------------------------------------------------------------
    def fetch(self, *, force: bool = False) -> list[Path]:
        """Bring the competition files into ``root`` from ``data.source``."""
        required = [self.path(k) for k in self.files]
        if self.source == "local" or (not force and all(p.is_file() for p in required)):
            return self._check_present()
        with staged_dir(self.root) as tmp:
            if self.source == "mirror":
                self._from_mirror(tmp)
            elif self.source == "kaggle":
                self._from_kaggle(tmp)
            else:
                cells = find_cells_dir(self.cells_root) if self.cells_root.is_dir() else None
                if cells is None:
                    raise DataError(
                        f"no malaria cells under {self.cells_root}; run `medpipe fetch "
                        "data=malaria` first (data.cells_root names that folder)."
                    )
                build_competition_from_cells(
                    cells,
                    tmp,
                    test_fraction=self.cells_test_fraction,
                    seed=self.cells_seed,
                )
        return self._check_present()

    def _check_present(self) -> list[Path]:
        paths = [self.path(k) for k in self.files]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(
                f"competition file(s) missing: {', '.join(map(str, missing))}. Download them "
                "from the competition's Data page into that folder, or set data.source=kaggle "
                "data.competition=<slug> (or data.source=mirror)."
            )
        sample = self.sample_submission_path
        return [*paths, *([sample] if sample else [])]

    def _wanted(self) -> list[str]:
        names = [*self.files.values(), "solution.csv"]
        return [*names, self.sample_name] if self.sample_name else names

    def _from_mirror(self, dest: Path) -> None:
        root = resolve_mirror(self.mirror)
        if root is None:
            raise ConfigError(
                "data.source=mirror but no mirror is set: set data.mirror=... or "
                "MEDPIPE_DATA_MIRROR."
            )
        self._copy_found(root / self.mirror_subdir, dest, where="the data mirror")

    def _from_kaggle(self, dest: Path) -> None:
        api = kaggle_api()
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".kaggle.") as tmp:
            try:
                api.competition_download_files(self.competition, path=tmp, quiet=False)
            except Exception as exc:
                raise kaggle_error(f"download of competition {self.competition!r}", exc) from None
            for archive in Path(tmp).glob("*.zip"):
                if archive.name not in self._wanted():  # the competition bundle
                    with zipfile.ZipFile(archive) as zf:
                        zf.extractall(tmp)
            self._copy_found(Path(tmp), dest, where=f"competition {self.competition!r}")

    def _copy_found(self, src: Path, dest: Path, *, where: str) -> None:
        for name in self._wanted():
            found = sorted(src.rglob(name), key=lambda p: len(p.parts))
            if found:
                shutil.copyfile(found[0], dest / name)
            elif name in self.files.values():
                raise DataError(f"{where} has no {name} (looked under {src}).")

    # -- prepare -------------------------------------------------------------------------------
    def prepare(self, *, force: bool = False) -> Path:
        """Check the competition files against each other and decode both zips once."""
        out = self.cache_path
        if out.is_file() and not force:
            log.info("%s already prepared; --force rebuilds it", out)
            return out
        self._check_present()
        train_zip, test_zip, labels_csv = (
            self.path(k) for k in ("train_zip", "test_zip", "labels_csv")
        )
        train_images = zip_images(train_zip)
        try:
            labels = read_labels_csv(labels_csv)
        except DataError as exc:  # lists every bad row; fold it into the CLI's one line
            raise DataError(
                f"{one_line(str(exc))}. Fix those rows (unique ids, labels 0 or 1) or download "
                "the file again."
            ) from None
        train_ids, train_labels = match_labels(
            labels, train_images, labels_file=labels_csv, zip_file=train_zip
        )
        test_images = zip_images(test_zip)
        sample = self.sample_submission_path
        test_ids = sorted(test_images, key=natural_key)
        if sample is not None:
            check_test_ids(test_ids, read_sample_ids(sample), test_zip=test_zip, sample=sample)

        with zipfile.ZipFile(train_zip) as ztrain, zipfile.ZipFile(test_zip) as ztest:

            def reader(zf: zipfile.ZipFile, member: str) -> Callable[[], bytes]:
                return lambda: zf.read(member)

            train_x, kept, skipped = decode_many(
                [
                    (f"{train_zip}:{train_images[i]}", reader(ztrain, train_images[i]))
                    for i in train_ids
                ],
                self.size,
                on_bad_image=self.on_bad_image,
                what="training images",
            )
            # Every test id needs a prediction, so an unreadable test image always stops here.
            test_x, _, _ = decode_many(
                [(f"{test_zip}:{test_images[i]}", reader(ztest, test_images[i])) for i in test_ids],
                self.size,
                on_bad_image="error",
                what="test images",
            )
        save_npz(
            out,
            train_images=train_x,
            train_labels=train_labels[kept],
            train_ids=np.asarray(train_ids)[kept].astype(str),
            test_images=test_x,
            test_ids=np.asarray(test_ids).astype(str),
            size=np.asarray(self.size),
        )
        write_json(
            self.processed / f"competition_{self.size}.json",
            {
                "size": self.size,
                "train_images": len(kept),
                "test_images": len(test_ids),
                "skipped": [{"file": s.name, "reason": s.reason} for s in skipped],
            },
        )
        self.skipped = skipped
        log.info("prepared %d train + %d test images -> %s", len(kept), len(test_ids), out)
        return out

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if not self.cache_path.is_file():
            log.info("no prepared cache at %s; preparing it now", self.cache_path)
            self.prepare()
        keys = ("train_images", "train_labels", "train_ids", "test_images", "test_ids")
        arrays = load_npz(
            self.cache_path, keys, hint="rebuild it with `medpipe prepare ... --force`."
        )
        labels = arrays["train_labels"].astype(np.int64)
        groups = None
        if self.split.method == "grouped":  # only when ids are NIH cell file names
            groups = malaria_patient_ids(arrays["train_ids"].tolist())
        splits = self.split.split(labels, groups=groups)
        self._make_datasets(arrays["train_images"], labels, arrays["train_ids"], splits)
        test_ids = arrays["test_ids"]
        self.datasets[SUBMISSION_SPLIT] = CachedImageDataset(
            to_channels(arrays["test_images"], self.channels),
            np.full(len(test_ids), -1, dtype=np.int64),  # unlabelled
            mean=self.mean,
            std=self.std,
        )
        self.ids[SUBMISSION_SPLIT] = test_ids

    def submission_dataloader(self) -> Any:
        """Loader over the unlabelled test zip, in ``sample_ids("submission")`` order."""
        return self.dataloader(SUBMISSION_SPLIT)
