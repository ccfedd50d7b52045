"""Competition folders (homework format) built from the shared cells, and their bad inputs."""

from __future__ import annotations

import csv
import hashlib
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medpipe.data.competition import (
    SUBMISSION_SPLIT,
    CompetitionDataModule,
    build_competition_from_cells,
)
from medpipe.data.splits import malaria_patient_id
from medpipe.errors import ConfigError, DataError, MedpipeError


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _write_rows(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_data: Path) -> Path:
    """A competition folder from 40 cells per class of the shared data (read-only for tests)."""
    dest = tmp_path_factory.mktemp("competition") / "comp"
    build_competition_from_cells(
        shared_data / "malaria" / "cell_images", dest, test_fraction=0.3, seed=1, limit=40
    )
    return dest


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "comp"
    shutil.copytree(folder, dest)
    return dest


def _dm(root: Path, tmp_path: Path, **kw) -> CompetitionDataModule:
    return CompetitionDataModule(
        root=root, processed=tmp_path / "processed", size=32, batch_size=8, **kw
    )


def test_folder_layout_and_patient_level_test_set(folder: Path, shared_data: Path) -> None:
    for name in ("train_data.zip", "test_data.zip", "train_labels.csv", "sample_submission.csv"):
        assert (folder / name).is_file()
    labels = _rows(folder / "train_labels.csv")
    sample = _rows(folder / "sample_submission.csv")
    assert labels[0] == ["id", "label"] == sample[0]
    assert {r[1] for r in labels[1:]} == {"0", "1"} and {r[1] for r in sample[1:]} == {"0"}
    assert len(labels) - 1 + len(sample) - 1 == 80
    # numeric ids, PNG bytes unchanged: map them back to the source files to find the patients
    by_hash = {
        hashlib.md5(p.read_bytes()).hexdigest(): p.name
        for p in (shared_data / "malaria" / "cell_images").rglob("*.png")
    }

    def patients(zip_name: str) -> set[str]:
        with zipfile.ZipFile(folder / zip_name) as zf:
            names = [by_hash[hashlib.md5(zf.read(n)).hexdigest()] for n in zf.namelist()]
            assert all(Path(n).stem.isdigit() for n in zf.namelist())
        return {malaria_patient_id(n) for n in names}

    train_p, test_p = patients("train_data.zip"), patients("test_data.zip")
    assert train_p and test_p and not train_p & test_p


def test_prepare_setup_and_submission_split(folder: Path, tmp_path: Path) -> None:
    dm = _dm(folder, tmp_path)
    assert dm.fetch()[-1] == folder / "sample_submission.csv"  # source=local: only checks
    dm.prepare()
    dm.setup()
    n_train = len(_rows(folder / "train_labels.csv")) - 1
    n_test = len(_rows(folder / "sample_submission.csv")) - 1
    assert sum(dm.split_sizes().values()) == n_train
    assert len(dm.datasets[SUBMISSION_SPLIT]) == n_test
    ids = dm.sample_ids(SUBMISSION_SPLIT)
    assert sorted(ids, key=int) == ids and set(ids) == {
        r[0] for r in _rows(folder / "sample_submission.csv")[1:]
    }
    x, y = next(iter(dm.submission_dataloader()))
    assert x.shape == (8, 3, 32, 32) and (y == -1).all()
    assert dm.solution_path == folder / "solution.csv"


def test_cells_source_builds_the_folder(tmp_path: Path, shared_data: Path) -> None:
    dm = CompetitionDataModule(
        root=tmp_path / "comp",
        processed=tmp_path / "processed",
        source="cells",
        cells_root=shared_data / "malaria",
        size=16,
    )
    files = dm.fetch()
    assert [f.name for f in files] == [
        "train_data.zip",
        "train_labels.csv",
        "test_data.zip",
        "sample_submission.csv",
    ]
    assert len(_rows(dm.root / "solution.csv")) - 1 + len(_rows(files[1])) - 1 == 800


# ------------------------------------------------------------------------ bad input


def test_labels_with_unknown_ids(folder: Path, tmp_path: Path) -> None:
    root = _copy(folder, tmp_path)
    rows = _rows(root / "train_labels.csv")
    _write_rows(root / "train_labels.csv", [*rows, ["999999", "1"]])
    with pytest.raises(DataError, match=r"train_labels\.csv has 1 id\(s\) with no image.*999999"):
        _dm(root, tmp_path).prepare()


def test_labels_other_than_0_1(folder: Path, tmp_path: Path) -> None:
    root = _copy(folder, tmp_path)
    rows = _rows(root / "train_labels.csv")
    rows[2][1] = "2"
    rows[3][1] = "0.5"
    _write_rows(root / "train_labels.csv", rows)
    with pytest.raises(DataError, match=r"train_labels\.csv.*not 0/1") as err:
        _dm(root, tmp_path).prepare()
    assert "'2'" in str(err.value) and "'0.5'" in str(err.value)


def test_image_without_label(folder: Path, tmp_path: Path) -> None:
    root = _copy(folder, tmp_path)
    rows = _rows(root / "train_labels.csv")
    _write_rows(root / "train_labels.csv", rows[:-1])
    with pytest.raises(DataError, match=rf"without a label.*'{rows[-1][0]}'"):
        _dm(root, tmp_path).prepare()


def test_test_zip_not_matching_sample(folder: Path, tmp_path: Path) -> None:
    root = _copy(folder, tmp_path)
    rows = _rows(root / "sample_submission.csv")
    _write_rows(root / "sample_submission.csv", [*rows[:-1], ["123456", "0"]])
    with pytest.raises(DataError, match=r"test_data\.zip does not match .*sample_submission\.csv"):
        _dm(root, tmp_path).prepare()


def test_corrupt_image_in_train_zip(folder: Path, tmp_path: Path) -> None:
    root = _copy(folder, tmp_path)
    src = root / "train_data.zip"
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    bad = sorted(members)[1]
    members[bad] = members[bad][:200]  # truncated PNG
    with zipfile.ZipFile(src, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    dm = _dm(root, tmp_path)
    with pytest.raises(DataError, match=rf"train_data\.zip:{bad}"):
        dm.prepare()
    assert not dm.cache_path.exists() and list(dm.processed.glob("*")) == []
    skipping = _dm(root, tmp_path, on_bad_image="skip")
    skipping.prepare()
    assert [s.name for s in skipping.skipped] == [f"{src}:{bad}"]


def test_missing_files_and_bad_config(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train_data\.zip.*data.source=kaggle"):
        _dm(tmp_path / "empty", tmp_path).fetch()
    with pytest.raises(ConfigError, match="data.competition"):
        _dm(tmp_path, tmp_path, source="kaggle")
    with pytest.raises(ConfigError, match="data.source"):
        _dm(tmp_path, tmp_path, source="http")


def test_kaggle_competition_source(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    dm = _dm(tmp_path / "comp", tmp_path, source="kaggle", competition="malaria-homework")
    with pytest.raises(MedpipeError, match="No Kaggle credentials"):
        dm.fetch()
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "fake-key-123456")
    calls: list[str] = []

    class FakeApi:
        def authenticate(self) -> None:
            pass

        def competition_download_files(self, competition, path, quiet):
            calls.append(competition)
            with zipfile.ZipFile(Path(path) / f"{competition}.zip", "w") as zf:
                for p in folder.iterdir():
                    if p.name != "solution.csv":
                        zf.write(p, p.name)

    ext = types.ModuleType("kaggle.api.kaggle_api_extended")
    ext.KaggleApi = FakeApi  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", ext)
    files = dm.fetch()
    assert calls == ["malaria-homework"] and len(files) == 4
    assert dm.solution_path is None and not (dm.root / "malaria-homework.zip").exists()
    dm.prepare()
    assert np.load(dm.cache_path)["test_ids"].size == len(_rows(files[-1])) - 1
