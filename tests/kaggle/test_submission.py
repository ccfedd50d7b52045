"""Tests for medpipe.kaggle.submission: writing, validating and reading Kaggle CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medpipe.errors import DataError
from medpipe.kaggle.submission import (
    SubmissionReport,
    natural_key,
    read_labels_csv,
    validate_submission,
    write_submission,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return _write(tmp_path / "sample_submission.csv", "id,label\nc,0\na,0\nb,0\n")


# ------------------------------------------------------------------------------ write


def test_write_natural_sort_without_sample(tmp_path: Path) -> None:
    out = write_submission(tmp_path / "sub" / "s.csv", [10, 2, 1, "img3"], np.array([1, 0, 1, 0]))
    assert out == tmp_path / "sub" / "s.csv"
    assert out.read_text() == "id,label\n1,1\n2,0\n10,1\nimg3,0\n"
    assert [p.name for p in out.parent.iterdir()] == ["s.csv"]  # no temp files left


def test_natural_key_orders_numbers_numerically() -> None:
    ids = ["img10", "img2", "10", "2", "b", "a1"]
    assert sorted(ids, key=natural_key) == ["2", "10", "a1", "b", "img2", "img10"]


def test_write_follows_sample_order_and_header(tmp_path: Path) -> None:
    sample = _write(tmp_path / "sample.csv", "ImageId,Prediction\nc,0\na,0\nb,0\n")
    out = write_submission(
        tmp_path / "s.csv", ["a", "b", "c"], [True, 0, np.int64(1)], sample_submission=sample
    )
    assert out.read_text() == "ImageId,Prediction\nc,1\na,1\nb,0\n"
    report = validate_submission(out, sample)
    assert report.rows == 3 and report.label_counts == {0: 1, 1: 2}


def test_write_custom_header(tmp_path: Path) -> None:
    out = write_submission(tmp_path / "s.csv", ["x"], [1], header=("image", "target"))
    assert out.read_text() == "image,target\nx,1\n"


def test_write_id_mismatch_with_sample_lists_ids(tmp_path: Path, sample: Path) -> None:
    target = tmp_path / "s.csv"
    with pytest.raises(DataError) as err:
        write_submission(target, ["a", "b", "zz"], [0, 1, 1], sample_submission=sample)
    msg = str(err.value)
    assert "'c'" in msg and "'zz'" in msg and "s.csv" in msg
    assert not target.exists()


@pytest.mark.parametrize(
    ("ids", "labels", "needle"),
    [
        (["a", "b"], [0], "2 ids but 1 labels"),
        (["a", "b"], [0.7, 1], "not integer 0/1"),
        (["a", "b"], [1.0, 0], "not integer 0/1"),
        (["a", "b"], [2, 0], "not integer 0/1"),
        (["a", "a"], [0, 1], "duplicate ids"),
        (["", "b"], [0, 1], "empty id"),
    ],
)
def test_write_rejects_bad_input(tmp_path: Path, ids, labels, needle: str) -> None:
    target = tmp_path / "s.csv"
    with pytest.raises(DataError, match=needle):
        write_submission(target, ids, labels)
    assert not target.exists()


# ------------------------------------------------------------------------------ validate


def test_validate_ok_without_sample(tmp_path: Path) -> None:
    f = _write(tmp_path / "s.csv", "id,label\n1,0\n2,1\n3,1\n")
    report = validate_submission(f)
    assert report == SubmissionReport(
        path=f, header=("id", "label"), rows=3, label_counts={0: 1, 1: 2}
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ID,label\na,0\nb,0\nc,0\n", "header is ['ID', 'label']"),
        ("id,label\na,0\nb,0\n", "2 data rows but the sample has 3"),
        ("id,label\na,0\na,1\nb,0\nc,0\n", "duplicate id(s): 'a'"),
        ("id,label\na,0\nb,0\nd,1\n", "not in the sample: 'd'"),
        ("id,label\na,0\nb,0\nd,1\n", "missing: 'c'"),
        ("id,label\na,0\nb,2\nc,0\n", "line 3: '2'"),
        ("id,label\na,0\nb,0.9\nc,0\n", "line 3: '0.9'"),
        ("id,label\na,0\nb,yes\nc,0\n", "line 3: 'yes'"),
        ("id,label\na,0\nb,0,1\nc,0\n", "do not have 2 columns"),
        ("id,label\n,0\nb,0\nc,0\n", "empty id"),
        ("id,label\n", "no data rows"),
    ],
)
def test_validate_each_failure(tmp_path: Path, sample: Path, text: str, needle: str) -> None:
    f = _write(tmp_path / "s.csv", text)
    with pytest.raises(DataError) as err:
        validate_submission(f, sample)
    assert needle in str(err.value)
    assert str(f) in str(err.value)


def test_validate_lists_all_problems_at_once(tmp_path: Path, sample: Path) -> None:
    f = _write(tmp_path / "s.csv", "id,pred\na,0\na,3\nq,1\n")
    with pytest.raises(DataError) as err:
        validate_submission(f, sample)
    msg = str(err.value)
    for needle in ("header", "not in [0, 1]", "duplicate", "missing", "not in the sample"):
        assert needle in msg
    assert "5 problem(s)" in msg


def test_validate_missing_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        validate_submission(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is empty"):
        validate_submission(_write(tmp_path / "e.csv", ""))


def test_validate_allowed_labels_and_header_options(tmp_path: Path) -> None:
    f = _write(tmp_path / "s.csv", "img,cls\na,0\nb,2\n")
    report = validate_submission(f, allowed_labels={0, 1, 2}, header=("img", "cls"))
    assert report.label_counts == {0: 1, 2: 1}
    with pytest.raises(DataError, match="not in \\[0, 1\\]"):
        validate_submission(f, header=("img", "cls"))


def test_validate_handles_bom(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_bytes("\ufeffid,label\r\n1,0\r\n".encode())
    assert validate_submission(f).rows == 1


# ------------------------------------------------------------------------------ read labels


def test_read_labels_csv_ok(tmp_path: Path) -> None:
    f = _write(tmp_path / "train_labels.csv", "id,label\nf38a,0\nc18f,1\n")
    assert read_labels_csv(f) == {"f38a": 0, "c18f": 1}
    g = _write(tmp_path / "other.csv", "image_id,x,target\nz,9,1\ny,9,0\n")
    assert list(read_labels_csv(g, id_col="image_id", label_col="target").items()) == [
        ("z", 1),
        ("y", 0),
    ]


def test_read_labels_csv_unknown_column(tmp_path: Path) -> None:
    f = _write(tmp_path / "train_labels.csv", "id,target\na,0\n")
    with pytest.raises(DataError) as err:
        read_labels_csv(f)
    msg = str(err.value)
    assert "'label'" in msg and "['id', 'target']" in msg and "train_labels.csv" in msg


def test_read_labels_csv_lists_bad_rows(tmp_path: Path) -> None:
    f = _write(tmp_path / "train_labels.csv", "id,label\na,0\nb,2\na,1\nc,\n,1\nd\n")
    with pytest.raises(DataError) as err:
        read_labels_csv(f)
    msg = str(err.value)
    assert "line 3 (id 'b'): '2'" in msg
    assert "line 5 (id 'c'): ''" in msg
    assert "'a' (lines 2 and 4)" in msg
    assert "empty 'id' at lines 6" in msg
    assert "too few columns at lines 7" in msg


def test_read_labels_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_labels_csv(tmp_path / "train_labels.csv")
