"""Kaggle RLE: hand-computed examples, column-major order, round trip, decode errors, CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medpipe.errors import ConfigError, DataError
from medpipe.kaggle.rle import rle_decode, rle_encode, write_rle_csv

# Column-major numbering of a 3x3 image (1-indexed):
#   1 4 7
#   2 5 8
#   3 6 9
MASK_3X3 = np.array(
    [
        [0, 1, 0],
        [1, 1, 0],
        [0, 0, 1],
    ],
    dtype=np.uint8,
)
RLE_3X3 = "2 1 4 2 9 1"


def test_hand_computed_3x3() -> None:
    assert rle_encode(MASK_3X3) == RLE_3X3
    decoded = rle_decode(RLE_3X3, (3, 3))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, MASK_3X3)


def test_column_major_first_row_is_not_one_run() -> None:
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, :] = True
    assert rle_encode(mask) == "1 1 4 1 7 1 10 1"  # row-major would wrongly give "1 4"
    first_column = np.zeros((3, 4), dtype=bool)
    first_column[:, 0] = True
    assert rle_encode(first_column) == "1 3"


def test_non_square_decode_orientation() -> None:
    # 2 rows x 3 columns: pixels 3 and 4 are (row 0, col 1) and (row 1, col 1).
    expected = np.array([[0, 1, 0], [0, 1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(rle_decode("3 2", (2, 3)), expected)
    assert rle_encode(expected) == "3 2"


def test_full_mask_and_nonbinary_values() -> None:
    assert rle_encode(np.ones((2, 5))) == "1 10"
    assert rle_encode(np.array([[0, 255], [7, 0]])) == "2 2"


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan"), np.float64("nan")])
def test_empty(empty) -> None:
    decoded = rle_decode(empty, (4, 5))
    assert decoded.shape == (4, 5)
    assert decoded.dtype == np.uint8
    assert decoded.sum() == 0


def test_empty_mask_encodes_to_empty_string() -> None:
    assert rle_encode(np.zeros((7, 3), dtype=np.uint8)) == ""


def test_encode_rejects_non_2d() -> None:
    with pytest.raises(DataError, match="2-D"):
        rle_encode(np.zeros((1, 3, 3)))


@settings(max_examples=150, deadline=None)
@given(
    st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
        lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 1))
    )
)
def test_round_trip(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape), mask)
    assert rle_encode(rle_decode(rle, mask.shape)) == rle
    values = [int(t) for t in rle.split()]
    assert sum(values[1::2]) == int(mask.sum())
    starts = values[0::2]
    assert starts == sorted(starts)


@pytest.mark.parametrize(
    ("rle", "match"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 a", "'a' is not an integer"),
        ("1.5 2", "'1.5' is not an integer"),
        ("1 0", "non-positive length 0"),
        ("1 -2", "non-positive length -2"),
        ("0 2", "1-indexed"),
        ("1 3 2 2", "must not overlap"),
        ("5 1 1 1", "sorted by start"),
    ],
)
def test_decode_errors(rle: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        rle_decode(rle, (3, 3))


def test_decode_run_past_image_names_run_shape_and_pixel_count() -> None:
    with pytest.raises(DataError) as info:
        rle_decode("1 1 8 3", (3, 3))
    message = str(info.value)
    assert "run 2 ('8 3')" in message
    assert "3x3" in message
    assert "9 pixels" in message


def test_write_rle_csv(tmp_path) -> None:
    out = tmp_path / "sub" / "submission.csv"
    empty = np.zeros((3, 3), dtype=np.uint8)
    write_rle_csv(out, [("a", MASK_3X3), ("b", empty)], header=("ImageId", "EncodedPixels"))
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["ImageId", "EncodedPixels"], ["a", RLE_3X3], ["b", ""]]
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]  # no temp files


def test_write_rle_csv_default_header_and_generator(tmp_path) -> None:
    out = tmp_path / "s.csv"
    write_rle_csv(out, ((f"img{i}", MASK_3X3) for i in range(2)))
    assert out.read_text(encoding="utf-8").splitlines() == [
        "id,rle",
        f"img0,{RLE_3X3}",
        f"img1,{RLE_3X3}",
    ]


def test_write_rle_csv_failure_leaves_no_file(tmp_path) -> None:
    out = tmp_path / "s.csv"

    def rows():
        yield "a", MASK_3X3
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_rle_csv(out, rows())
    assert list(tmp_path.iterdir()) == []


def test_write_rle_csv_bad_header(tmp_path) -> None:
    with pytest.raises(ConfigError, match="2 column names"):
        write_rle_csv(tmp_path / "s.csv", [], header=("id",))
