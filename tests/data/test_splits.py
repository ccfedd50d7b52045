"""Tests for medpipe.data.splits: patient ids, grouped/stratified/k-fold splits, leak check."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medpipe.data.splits import (
    SplitSpec,
    assert_no_group_leak,
    make_splits,
    malaria_patient_id,
    malaria_patient_ids,
)
from medpipe.errors import ConfigError, DataError

MALARIA = Path("/work/shared/data/malaria/cell_images")


@pytest.fixture(scope="module")
def malaria_files() -> tuple[list[str], np.ndarray]:
    """Real NIH malaria file names (names only, read-only listing) and 1=Parasitized labels."""
    if not MALARIA.is_dir():
        pytest.skip(f"{MALARIA} not available")
    names: list[str] = []
    labels: list[int] = []
    for label, cls in ((1, "Parasitized"), (0, "Uninfected")):
        files = sorted(f for f in os.listdir(MALARIA / cls) if f.endswith(".png"))
        names += files
        labels += [label] * len(files)
    return names, np.asarray(labels)


# ------------------------------------------------------------------------------ patient ids


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        # verbatim from cell_images/Parasitized
        ("C100P61ThinF_IMG_20150918_144104_cell_164.png", "C100P61"),
        ("C101P62ThinF_IMG_20150923_165215_cell_31.png", "C101P62"),
        ("C47P8thinOriginalOlympusCX21_IMG_20150717_172748_cell_158.png", "C47P8"),
        ("C47P8thin_Original_Motic_IMG_20150714_093512_cell_169.png", "C47P8"),
        ("C51AP12thinF_IMG_20150724_153313_cell_101.png", "C51AP12"),
        # verbatim from cell_images/Uninfected
        ("C1_thinF_IMG_20150604_104722_cell_191.png", "C1"),
        ("C102P63ThinF_IMG_20150918_162051_cell_29.png", "C102P63"),
        ("C42P5thin_original_IMG_20150623_134426_cell_185.png", "C42P5"),
        # from the brief / other NIH names
        ("C100P61ThinF_IMG_20150918_144104_cell_162.png", "C100P61"),
        ("C12NThinF_IMG_20150614_124212_cell_164.png", "C12N"),
        ("C39P4thinF_original_IMG_20150622_105253_cell_94.png", "C39P4"),
        ("C63P24N_ThinF_IMG_20150818_110756_cell_11.png", "C63P24N"),
        ("C4thin_original_IMG_20150608_170038_cell_106.png", "C4"),
        ("some/dir/C5NThinF_IMG_20150609_122006_cell_44.png", "C5N"),
        ("C99P60THINF_IMG_x.png", "C99P60"),
    ],
)
def test_malaria_patient_id(name: str, patient: str) -> None:
    assert malaria_patient_id(name) == patient


@pytest.mark.parametrize("name", ["Thumbs.db", "IMG_20150604_104722.png", "C100P61.png", "", "_x"])
def test_malaria_patient_id_unparseable_names_the_file(name: str) -> None:
    with pytest.raises(DataError, match=repr(name).replace(".", r"\.")):
        malaria_patient_id(name)


def test_every_real_malaria_name_parses(malaria_files) -> None:
    names, _ = malaria_files
    ids = malaria_patient_ids(names)
    assert len(ids) == len(names)
    assert all(i.startswith("C") and "thin" not in i.lower() for i in ids)
    assert len(set(ids)) > 20


# ------------------------------------------------------------------------------ helpers


def _check_partition(splits: dict[str, np.ndarray], n: int) -> None:
    assert set(splits) == {"train", "val", "test"}
    joined = np.concatenate(list(splits.values()))
    assert sorted(joined.tolist()) == list(range(n))
    for idx in splits.values():
        assert idx.dtype == np.int64 and len(idx) > 0
        assert np.all(np.diff(idx) > 0)


def _pos_rate(y: np.ndarray, idx: np.ndarray) -> float:
    return float(y[idx].mean())


# ------------------------------------------------------------------------------ stratified


def test_stratified_sizes_and_label_mix() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.3).astype(int)
    s = make_splits(y, method="stratified", val_fraction=0.1, test_fraction=0.2, seed=1)
    _check_partition(s, 1000)
    assert abs(len(s["test"]) - 200) <= 1
    assert abs(len(s["val"]) - 100) <= 1
    for idx in s.values():
        assert abs(_pos_rate(y, idx) - y.mean()) < 0.02


def test_stratified_deterministic_and_seed_dependent() -> None:
    y = np.arange(300) % 3
    kw = dict(method="stratified", val_fraction=0.15, test_fraction=0.15)
    a = make_splits(y, seed=7, **kw)
    b = make_splits(list(y), seed=7, **kw)
    c = make_splits(y, seed=8, **kw)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_string_labels_work() -> None:
    y = ["cat", "dog"] * 50
    s = make_splits(y, method="stratified", val_fraction=0.2, test_fraction=0.2, seed=0)
    _check_partition(s, 100)
    assert Counter(np.asarray(y)[s["test"]]) == {"cat": 10, "dog": 10}


def test_stratified_kfold_partitions_test_sets() -> None:
    y = np.array([0] * 60 + [1] * 40)
    tests = []
    for fold in range(5):
        s = make_splits(y, method="stratified", val_fraction=0.1, seed=3, n_folds=5, fold=fold)
        _check_partition(s, 100)
        assert len(s["test"]) == 20 and len(s["val"]) == 10
        assert _pos_rate(y, s["test"]) == pytest.approx(0.4)
        tests.append(s["test"])
    assert sorted(np.concatenate(tests).tolist()) == list(range(100))


def test_stratified_too_few_of_a_class_is_data_error() -> None:
    y = [0] * 20 + [1]
    with pytest.raises(DataError, match="label counts"):
        make_splits(y, method="stratified", val_fraction=0.1, test_fraction=0.2, seed=0)


def test_stratified_with_groups_warns(caplog: pytest.LogCaptureFixture) -> None:
    y = [0, 1] * 20
    make_splits(y, ["p"] * 40, method="stratified", val_fraction=0.2, test_fraction=0.2, seed=0)
    assert "ignores groups" in caplog.text


# ------------------------------------------------------------------------------ grouped


def test_grouped_real_malaria_no_leak_and_roughly_sized(malaria_files) -> None:
    names, y = malaria_files
    groups = malaria_patient_ids(names)
    s = make_splits(y, groups, method="grouped", val_fraction=0.15, test_fraction=0.2, seed=0)
    n = len(y)
    _check_partition(s, n)
    sets = {k: set(groups[v]) for k, v in s.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"])
    assert not sets["val"] & sets["test"]
    assert abs(len(s["test"]) / n - 0.2) < 0.03
    assert abs(len(s["val"]) / n - 0.15) < 0.03
    for idx in s.values():
        assert abs(_pos_rate(y, idx) - y.mean()) < 0.05
    assert_no_group_leak(s, groups)  # explicit, though make_splits already ran it


def test_grouped_real_malaria_kfold_partitions(malaria_files) -> None:
    names, y = malaria_files
    groups = malaria_patient_ids(names)
    tests = []
    for fold in range(4):
        s = make_splits(y, groups, method="grouped", val_fraction=0.1, seed=5, n_folds=4, fold=fold)
        _check_partition(s, len(y))
        assert_no_group_leak(s, groups)
        tests.append(s["test"])
    joined = np.concatenate(tests)
    assert sorted(joined.tolist()) == list(range(len(y)))
    fold_groups = [set(groups[t]) for t in tests]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not fold_groups[i] & fold_groups[j]


def test_grouped_deterministic(malaria_files) -> None:
    names, y = malaria_files
    groups = malaria_patient_ids(names)
    spec = SplitSpec(method="grouped", val_fraction=0.1, test_fraction=0.25, seed=11)
    a, b = spec.split(y, groups), spec.split(y, groups)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = SplitSpec(method="grouped", val_fraction=0.1, test_fraction=0.25, seed=12).split(y, groups)
    assert not np.array_equal(a["test"], c["test"])


def test_grouped_synthetic_stratification() -> None:
    # 60 patients of 10 cells, 20 of them "positive" patients -> overall 1/3 positive.
    groups = np.repeat([f"P{i}" for i in range(60)], 10)
    y = np.repeat([1 if i % 3 == 0 else 0 for i in range(60)], 10)
    s = make_splits(y, groups, method="grouped", val_fraction=0.2, test_fraction=0.2, seed=0)
    _check_partition(s, 600)
    for name in ("val", "test"):
        assert len(s[name]) == 120
        assert _pos_rate(y, s[name]) == pytest.approx(1 / 3, abs=0.05)


def test_grouped_needs_groups_and_enough_of_them() -> None:
    y = [0, 1] * 10
    with pytest.raises(ConfigError, match="groups"):
        make_splits(y, method="grouped", val_fraction=0.1, test_fraction=0.2, seed=0)
    with pytest.raises(ConfigError, match="at least 3 distinct groups"):
        make_splits(
            y, ["a", "b"] * 10, method="grouped", val_fraction=0.1, test_fraction=0.2, seed=0
        )
    with pytest.raises(ConfigError, match="n_folds=5"):
        make_splits(
            y, list("abcd") * 5, method="grouped", val_fraction=0.1, seed=0, n_folds=5, fold=0
        )


def test_length_mismatch_is_data_error() -> None:
    with pytest.raises(DataError, match="differ in length"):
        make_splits(
            [0, 1] * 5, ["a"] * 9, method="grouped", val_fraction=0.1, test_fraction=0.2, seed=0
        )


# ------------------------------------------------------------------------------ leak check


def test_assert_no_group_leak_lists_offenders() -> None:
    groups = ["C1", "C1", "C2", "C3", "C3", "C4"]
    splits = {"train": np.array([0, 2, 3]), "val": np.array([1]), "test": np.array([4, 5])}
    with pytest.raises(DataError) as err:
        assert_no_group_leak(splits, groups)
    msg = str(err.value)
    assert "C1 (train/val)" in msg and "C3 (train/test)" in msg
    assert "C2" not in msg and "C4" not in msg
    assert_no_group_leak({"train": [0, 1], "val": [2], "test": [3, 4, 5]}, groups)


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        (dict(method="random"), "split.method"),
        (dict(val_fraction=0.0), "split.val_fraction"),
        (dict(val_fraction=1.0), "split.val_fraction"),
        (dict(test_fraction=-0.1), "split.test_fraction"),
        (dict(test_fraction=None), "split.test_fraction"),
        (dict(val_fraction=0.5, test_fraction=0.5), "must be < 1"),
        (dict(fold=1), "split.fold"),
        (dict(test_fraction=None, n_folds=1, fold=0), "split.n_folds"),
        (dict(n_folds=5, fold=0), "split.test_fraction"),
        (dict(test_fraction=None, n_folds=5, fold=5), "split.fold"),
        (dict(test_fraction=None, n_folds=5, fold=None), "split.fold"),
        (dict(test_fraction=None, n_folds=2, fold=0, val_fraction=0.5), "split.val_fraction"),
        (dict(seed="x"), "split.seed"),
    ],
)
def test_invalid_spec_is_config_error_naming_option(kwargs: dict, option: str) -> None:
    base = dict(method="stratified", val_fraction=0.1, test_fraction=0.2, seed=0)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        make_splits([0, 1] * 20, **base)
