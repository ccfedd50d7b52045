"""Kaggle run-length encoding (RLE) of binary masks, and submission CSVs of RLE strings.

Kaggle segmentation competitions score submissions written as space-separated ``start length``
pairs, where ``start`` is 1-indexed and pixels are numbered **column-major**: top to bottom,
then left to right (Fortran order, ``mask.T.flatten()``). Getting the order wrong still yields a
valid-looking file that scores near zero, so decoding validates strictly and says what is wrong.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from medpipe.errors import ConfigError, DataError
from medpipe.io import atomic_open

# Plain ASCII integers only: int() would also accept "1_000" or non-ASCII digits.
_INT_TOKEN = re.compile(r"[+-]?[0-9]+")


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (nonzero = foreground) as a Kaggle RLE string; empty mask -> ``""``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(
            f"rle_encode needs a 2-D (height, width) mask, got shape {mask.shape}; "
            "encode one image (and one channel) at a time"
        )
    pixels = mask.T.reshape(-1) != 0  # column-major order
    padded = np.concatenate([[False], pixels, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + 1  # 1-indexed run boundaries
    starts, ends = changes[0::2], changes[1::2]
    return " ".join(f"{s} {n}" for s, n in zip(starts, ends - starts, strict=True))


def _is_empty(rle: Any) -> bool:
    if rle is None:
        return True
    if isinstance(rle, float | np.floating) and math.isnan(rle):
        return True
    return isinstance(rle, str) and not rle.strip()


def rle_decode(rle: str | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode a Kaggle RLE string to a ``uint8`` 0/1 mask of ``shape`` (height, width).

    ``""``, ``None`` and NaN (an empty cell read by pandas) decode to an all-zero mask. Malformed
    strings raise :class:`DataError` naming the offending token or run.
    """
    if len(shape) != 2 or any(int(d) < 1 for d in shape):
        raise DataError(f"rle_decode needs a (height, width) shape of positive sizes, got {shape}")
    height, width = int(shape[0]), int(shape[1])
    n_pixels = height * width
    flat = np.zeros(n_pixels, dtype=np.uint8)
    if _is_empty(rle):
        return flat.reshape(width, height).T.copy()
    if not isinstance(rle, str):
        raise DataError(f"RLE must be a string of 'start length' pairs, got {type(rle).__name__}")

    tokens = rle.split()
    if len(tokens) % 2:
        raise DataError(
            f"RLE has an odd number of tokens ({len(tokens)}); it must be 'start length' pairs. "
            f"Check that the column holds one complete RLE string: {_preview(rle)}"
        )
    bad = next((t for t in tokens if not _INT_TOKEN.fullmatch(t)), None)
    if bad is not None:
        raise DataError(
            f"RLE token {bad!r} is not an integer; RLE must be space-separated integers "
            f"'start length ...': {_preview(rle)}"
        )
    values = [int(t) for t in tokens]

    prev_end = 1  # first 1-indexed pixel not yet covered
    for i in range(0, len(values), 2):
        start, length = values[i], values[i + 1]
        run = f"run {i // 2 + 1} ('{start} {length}')"
        if start < 1:
            raise DataError(f"RLE {run} has start {start}; starts are 1-indexed and must be >= 1")
        if length < 1:
            raise DataError(f"RLE {run} has non-positive length {length}; lengths must be >= 1")
        if start < prev_end:
            raise DataError(
                f"RLE {run} starts at pixel {start}, before the end of the previous run "
                f"(pixel {prev_end - 1}); runs must be sorted by start and must not overlap"
            )
        end = start + length - 1  # last covered pixel, 1-indexed, inclusive
        if end > n_pixels:
            raise DataError(
                f"RLE {run} covers pixels {start}..{end}, past the end of the {height}x{width} "
                f"image ({n_pixels} pixels); check the image shape (height, width) passed to "
                "rle_decode"
            )
        flat[start - 1 : end] = 1
        prev_end = end + 1
    return flat.reshape(width, height).T.copy()


def _preview(rle: str, limit: int = 80) -> str:
    return repr(rle if len(rle) <= limit else rle[:limit] + "...")


def write_rle_csv(
    path: str | os.PathLike[str],
    rows: Iterable[tuple[str, np.ndarray]],
    header: tuple[str, str] = ("id", "rle"),
) -> None:
    """Write a submission CSV of ``(id, mask)`` rows as ``id,rle``, atomically.

    Competitions name the columns differently (``ImageId,EncodedPixels``, ``id,rle_mask``), hence
    the configurable header; an interrupted run never leaves a truncated submission behind.
    """
    header = tuple(header)
    if len(header) != 2:
        raise ConfigError(
            f"write_rle_csv header must have exactly 2 column names (id, rle), got {header!r}"
        )
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for image_id, mask in rows:
            writer.writerow([image_id, rle_encode(mask)])
