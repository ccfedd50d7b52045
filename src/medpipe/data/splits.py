"""Train/val/test splitting, with patient-level (grouped) splits for medical images.

Cells or tiles cut from the same patient's slide look alike, so a random per-image split lets a
model "recognise the patient" and report optimistic scores. ``method="grouped"`` keeps every
patient in exactly one split (and :func:`assert_no_group_leak` fails loudly otherwise), while
keeping the label mix of each split close to the whole dataset's.

All splits are deterministic for a fixed ``seed`` and every index lands in exactly one split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.model_selection import (
    GroupShuffleSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from medpipe.errors import ConfigError, DataError

__all__ = [
    "SPLIT_NAMES",
    "SplitSpec",
    "assert_no_group_leak",
    "make_splits",
    "malaria_patient_id",
    "malaria_patient_ids",
]

log = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
SplitMethod = Literal["stratified", "grouped"]
_METHODS: tuple[str, ...] = ("stratified", "grouped")

# Patient/slide code, then an optional "thin..." smear-type suffix (ThinF, thinF, Thin, thin,
# thinOriginalOlympusCX21, ...). The lazy code part stops at the first "thin".
_MALARIA_PREFIX = re.compile(r"(C\d+[A-Za-z0-9]*?)(?:thin[A-Za-z0-9]*)?", re.IGNORECASE)
# How many candidate group splits to score when carving a grouped split of a given size.
_GROUP_CANDIDATES = 64


# --------------------------------------------------------------------------------------------
# Patient ids
# --------------------------------------------------------------------------------------------


def malaria_patient_id(filename: str) -> str:
    """Return the patient/slide code of an NIH malaria cell image name (the grouping key).

    ``C100P61ThinF_IMG_20150918_144104_cell_162.png`` -> ``C100P61``; ``C1_thinF_IMG_...`` ->
    ``C1``; ``C39P4thinF_original_IMG_...`` -> ``C39P4``. The code is the text before the first
    ``_`` with a trailing smear-type suffix starting with ``thin`` (any case) removed. Leading
    folders are ignored. Raises :class:`DataError` naming the file when no code can be parsed.
    """
    name = re.split(r"[\\/]", str(filename))[-1]
    prefix, sep, _ = name.partition("_")
    match = _MALARIA_PREFIX.fullmatch(prefix) if sep else None
    if match is None:
        raise DataError(
            f"cannot parse a patient id from malaria image file name {filename!r}: expected a "
            "name like 'C100P61ThinF_IMG_20150918_144104_cell_162.png' (patient code such as "
            "'C100P61' before the first '_'). Remove or rename this file in the image folder."
        )
    return match.group(1)


def malaria_patient_ids(filenames: Sequence[str]) -> np.ndarray:
    """Vectorised :func:`malaria_patient_id`: one patient id per file, for ``groups=``."""
    return np.asarray([malaria_patient_id(f) for f in filenames], dtype=object)


# --------------------------------------------------------------------------------------------
# Spec and validation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSpec:
    """How to split a dataset; invalid values fail at construction with a :class:`ConfigError`.

    Fractions are of the *whole* dataset. With ``n_folds=k, fold=i`` the test set is fold ``i``
    of a k-fold partition (about ``1/k`` of the data, so ``test_fraction`` must be ``None``) and
    the validation set (``val_fraction`` of the whole dataset) is carved from the other folds.
    """

    method: SplitMethod = "stratified"
    val_fraction: float = 0.1
    test_fraction: float | None = 0.2
    seed: int = 0
    n_folds: int | None = None
    fold: int | None = None

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ConfigError(
                f"split.method={self.method!r} is not supported; use one of {list(_METHODS)} "
                "('grouped' keeps each patient in a single split)."
            )
        _check_fraction("val_fraction", self.val_fraction)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ConfigError(f"split.seed must be an integer, got {self.seed!r}.")
        if self.n_folds is None:
            if self.fold is not None:
                raise ConfigError(
                    f"split.fold={self.fold!r} is set but split.n_folds is not; set n_folds "
                    "(e.g. 5) for k-fold splitting, or fold=null for a single split."
                )
            if self.test_fraction is None:
                raise ConfigError(
                    "split.test_fraction is required (a value in (0, 1)) unless split.n_folds "
                    "is set."
                )
            _check_fraction("test_fraction", self.test_fraction)
            total = self.val_fraction + self.test_fraction
            if total >= 1:
                raise ConfigError(
                    f"split.val_fraction + split.test_fraction must be < 1 so some data is left "
                    f"for training, got {self.val_fraction} + {self.test_fraction} = {total:g}."
                )
            return
        if isinstance(self.n_folds, bool) or not isinstance(self.n_folds, int | np.integer):
            raise ConfigError(f"split.n_folds must be an integer >= 2, got {self.n_folds!r}.")
        if self.n_folds < 2:
            raise ConfigError(f"split.n_folds must be >= 2, got {self.n_folds}.")
        if self.test_fraction is not None:
            raise ConfigError(
                f"split.test_fraction={self.test_fraction} cannot be combined with split.n_folds="
                f"{self.n_folds}: in k-fold mode the test set is fold split.fold "
                f"(about 1/{self.n_folds} of the data). Set test_fraction=null."
            )
        if (
            self.fold is None
            or isinstance(self.fold, bool)
            or not isinstance(self.fold, int | np.integer)
            or not 0 <= self.fold < self.n_folds
        ):
            raise ConfigError(
                f"split.fold must be an integer in [0, {self.n_folds - 1}] when split.n_folds="
                f"{self.n_folds}, got {self.fold!r}."
            )
        total = self.val_fraction + 1 / self.n_folds
        if total >= 1:
            raise ConfigError(
                f"split.val_fraction={self.val_fraction} leaves no training data with "
                f"split.n_folds={self.n_folds} (test fold is 1/{self.n_folds}); lower "
                "val_fraction or raise n_folds."
            )

    def split(
        self, labels: Sequence[Any], groups: Sequence[Any] | None = None
    ) -> dict[str, np.ndarray]:
        """Apply this spec; see :func:`make_splits`."""
        return _split(self, labels, groups)


def _check_fraction(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.floating | np.integer)
        or not 0 < float(value) < 1
    ):
        raise ConfigError(f"split.{name} must be a number strictly between 0 and 1, got {value!r}.")


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def make_splits(
    labels: Sequence[Any],
    groups: Sequence[Any] | None = None,
    *,
    method: SplitMethod,
    val_fraction: float,
    test_fraction: float | None = None,
    seed: int,
    n_folds: int | None = None,
    fold: int | None = None,
) -> dict[str, np.ndarray]:
    """Split sample indices into ``{"train", "val", "test"}`` sorted int64 index arrays.

    ``stratified``: seeded random split keeping each split's label mix close to the whole.
    ``grouped``: patient-level split (``groups`` gives one patient id per sample); no group is
    in two splits, and the label mix is kept as close as the groups allow. With ``n_folds=k``
    and ``fold=i`` the test set is fold ``i`` and val is carved from the remaining folds, so
    looping ``fold`` over ``range(k)`` tests every sample exactly once. Deterministic per seed.
    """
    spec = SplitSpec(
        method=method,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        n_folds=n_folds,
        fold=fold,
    )
    return _split(spec, labels, groups)


def _split(
    spec: SplitSpec, labels: Sequence[Any], groups: Sequence[Any] | None
) -> dict[str, np.ndarray]:
    y = _encode(labels, "labels")
    n = len(y)
    if n < 3:
        raise DataError(f"cannot split {n} sample(s) into train/val/test; need at least 3.")
    g: np.ndarray | None = None
    if groups is not None:
        g = _encode(groups, "groups")
        if len(g) != n:
            raise DataError(
                f"labels and groups differ in length ({n} vs {len(g)}); pass one group id "
                "(patient id) per sample."
            )
    rng_seed = int(spec.seed)
    if spec.method == "grouped":
        if g is None:
            raise ConfigError(
                "split.method='grouped' needs groups (one patient id per sample); pass groups= "
                "or use split.method='stratified'."
            )
        splits = _grouped(spec, y, g, rng_seed)
    else:
        if g is not None:
            log.warning(
                "split.method='stratified' ignores groups: the same patient can appear in "
                "train, val and test. Use split.method='grouped' for a patient-level split."
            )
        splits = _stratified(spec, y, rng_seed)

    out = {name: np.sort(np.asarray(splits[name], dtype=np.int64)) for name in SPLIT_NAMES}
    _assert_partition(out, n)
    if spec.method == "grouped":
        assert_no_group_leak(out, groups)  # type: ignore[arg-type]
    return out


def _encode(values: Sequence[Any], name: str) -> np.ndarray:
    """Map arbitrary labels / group ids to 0..k-1 codes (works for str, int, mixed)."""
    arr = np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise DataError(f"{name} must be one-dimensional (one value per sample), got {arr.shape}.")
    _, codes = np.unique(arr.astype(str), return_inverse=True)
    return codes.astype(np.int64)


def _stratified(spec: SplitSpec, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    n = len(y)
    idx = np.arange(n)
    try:
        if spec.n_folds is None:
            assert spec.test_fraction is not None
            rest, test = train_test_split(
                idx, test_size=spec.test_fraction, stratify=y, random_state=seed
            )
        else:
            skf = StratifiedKFold(n_splits=spec.n_folds, shuffle=True, random_state=seed)
            rest, test = list(skf.split(idx, y))[spec.fold]  # type: ignore[index]
        n_val = max(1, round(spec.val_fraction * n))
        if n_val >= len(rest):
            raise DataError(
                f"split.val_fraction={spec.val_fraction} of {n} samples leaves no training data."
            )
        train, val = train_test_split(
            rest, test_size=n_val, stratify=y[rest], random_state=seed + 1
        )
    except ValueError as exc:
        raise DataError(
            f"stratified split failed for {n} samples with label counts "
            f"{_counts(y)}: {exc}. Every label needs enough samples for each split; use more "
            "data, smaller fractions / fewer folds."
        ) from exc
    return {"train": train, "val": val, "test": test}


def _grouped(spec: SplitSpec, y: np.ndarray, g: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    n = len(y)
    n_groups = len(np.unique(g))
    idx = np.arange(n)
    if spec.n_folds is None:
        if n_groups < 3:
            raise ConfigError(
                f"split.method='grouped' needs at least 3 distinct groups (patients) to fill "
                f"train/val/test, got {n_groups}."
            )
        assert spec.test_fraction is not None
        rest, test = _carve_groups(idx, y, g, spec.test_fraction * n, y, seed)
    else:
        if n_groups < spec.n_folds + 1:
            raise ConfigError(
                f"split.n_folds={spec.n_folds} with split.method='grouped' needs at least "
                f"{spec.n_folds + 1} distinct groups (patients), got {n_groups}; lower n_folds."
            )
        sgkf = StratifiedGroupKFold(n_splits=spec.n_folds, shuffle=True, random_state=seed)
        rest, test = list(sgkf.split(idx, y, g))[spec.fold]  # type: ignore[index]
    if len(np.unique(g[rest])) < 2:
        raise ConfigError(
            "split.method='grouped' left fewer than 2 groups outside the test set, so val and "
            "train cannot both get a patient; lower split.test_fraction or use more patients."
        )
    train, val = _carve_groups(rest, y[rest], g[rest], spec.val_fraction * n, y, seed + 1)
    return {"train": train, "val": val, "test": test}


def _carve_groups(
    idx: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    target: float,
    y_all: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, carved) by whole groups, carved holding ~``target`` samples.

    Scores seeded :class:`GroupShuffleSplit` candidates by how close the carved part is to the
    target size and to the overall label mix, and keeps the best: grouped *and* stratified as
    far as the group sizes allow.
    """
    n_classes = int(y_all.max()) + 1
    overall = np.bincount(y_all, minlength=n_classes) / len(y_all)
    unique_groups, group_sizes = np.unique(g, return_counts=True)
    # GroupShuffleSplit's test_size counts groups; convert the sample target via the mean size.
    n_carve_groups = int(np.clip(round(target / group_sizes.mean()), 1, len(unique_groups) - 1))
    gss = GroupShuffleSplit(n_splits=_GROUP_CANDIDATES, test_size=n_carve_groups, random_state=seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for keep, carve in gss.split(idx, y, g):
        size_err = abs(len(carve) - target) / max(target, 1.0)
        mix = np.bincount(y[carve], minlength=n_classes) / len(carve)
        mix_err = float(np.abs(mix - overall).sum())
        score = size_err + mix_err
        if best is None or score < best[0]:
            best = (score, keep, carve)
    assert best is not None
    return idx[best[1]], idx[best[2]]


def _counts(y: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(y, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _assert_partition(splits: Mapping[str, np.ndarray], n: int) -> None:
    """Internal invariant: each index 0..n-1 appears in exactly one split, none empty."""
    joined = np.concatenate([splits[name] for name in SPLIT_NAMES])
    if len(joined) != n or not np.array_equal(np.sort(joined), np.arange(n)):
        raise AssertionError("split bug: indices do not partition the dataset")
    for name in SPLIT_NAMES:
        if len(splits[name]) == 0:
            raise DataError(
                f"the {name} split is empty for {n} samples; use more data or larger fractions."
            )


# --------------------------------------------------------------------------------------------
# Leak check
# --------------------------------------------------------------------------------------------


def assert_no_group_leak(splits: Mapping[str, Sequence[int]], groups: Sequence[Any]) -> None:
    """Raise :class:`DataError` listing every group (patient) found in more than one split.

    A patient in both train and test inflates test scores; this is the check that makes a
    grouped split trustworthy, so it fails loudly rather than warning.
    """
    g = np.asarray(groups, dtype=object)
    seen: dict[Any, list[str]] = {}
    for name, indices in splits.items():
        for group in dict.fromkeys(g[np.asarray(indices, dtype=np.int64)].tolist()):
            seen.setdefault(group, []).append(name)
    leaks = {grp: names for grp, names in seen.items() if len(names) > 1}
    if not leaks:
        return
    shown = sorted(leaks.items(), key=lambda kv: str(kv[0]))
    listed = ", ".join(f"{grp} ({'/'.join(names)})" for grp, names in shown[:50])
    more = f" and {len(shown) - 50} more" if len(shown) > 50 else ""
    raise DataError(
        f"group leak: {len(leaks)} patient/group id(s) appear in more than one split: "
        f"{listed}{more}. Use split.method='grouped' so each patient stays in one split."
    )
