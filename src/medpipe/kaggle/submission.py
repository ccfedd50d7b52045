"""Kaggle submission CSVs: write them in the order Kaggle expects and check them before upload.

A rejected or silently mis-scored submission wastes one of a limited number of daily
submissions, so :func:`validate_submission` lists *every* problem at once (header, row count,
duplicate / missing / extra ids, label values) with the file named, and :func:`write_submission`
follows the competition's ``sample_submission.csv`` row order and header when given one.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import DataError
from medpipe.io import atomic_open

__all__ = [
    "DEFAULT_HEADER",
    "SubmissionReport",
    "natural_key",
    "read_labels_csv",
    "validate_submission",
    "write_submission",
]

DEFAULT_HEADER: tuple[str, str] = ("id", "label")
_SHOW = 5  # how many example ids/rows to list per problem

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class SubmissionReport:
    """What a valid submission file contains (for dry-run summaries and logs)."""

    path: Path
    header: tuple[str, ...]
    rows: int
    label_counts: dict[int, int] = field(default_factory=dict)


def natural_key(value: str) -> tuple[tuple[int, Any], ...]:
    """Sort key treating digit runs as numbers, so ``"2"`` sorts before ``"10"``."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", str(value))
        if part
    )


def _examples(values: Iterable[Any], n: int = _SHOW) -> str:
    items = list(values)
    shown = ", ".join(repr(v) for v in items[:n])
    return shown + (f" ... and {len(items) - n} more" if len(items) > n else "")


def _read_csv(path: PathLike, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Read a CSV into (header, [(line_number, row), ...]); DataError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {str(p)!r} does not exist or is not a file.")
    try:
        with open(p, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {what} {str(p)!r} as UTF-8 CSV: {exc}") from exc
    rows = [(line, row) for line, row in rows if row and any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{what} {str(p)!r} is empty; expected a header row and data rows.")
    header = [cell.strip() for cell in rows[0][1]]
    return header, rows[1:]


def _read_sample(sample_submission: PathLike) -> tuple[tuple[str, ...], list[str]]:
    """Header and id column (first column) of a competition's sample submission."""
    header, rows = _read_csv(sample_submission, "sample submission")
    ids = [row[0].strip() for _, row in rows]
    dupes = [i for i, c in Counter(ids).items() if c > 1]
    if dupes:
        raise DataError(
            f"sample submission {str(sample_submission)!r} has duplicate ids "
            f"{_examples(dupes)}; re-download it from the competition's data page."
        )
    return tuple(header), ids


def _as_label(value: Any) -> int | None:
    """0/1 label as int, or None when ``value`` is not an integer 0 or 1 (floats rejected)."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer) and int(value) in (0, 1):
        return int(value)
    return None


def write_submission(
    path: PathLike,
    ids: Sequence[Any],
    labels: Sequence[Any],
    *,
    sample_submission: PathLike | None = None,
    header: Sequence[str] = DEFAULT_HEADER,
) -> Path:
    """Write ``id,label`` rows atomically and return the path.

    With ``sample_submission`` the rows follow its id order and its header (Kaggle scores by
    id, but matching the sample avoids surprises); predicted and sample ids must be the same
    set. Without it rows are sorted by id in natural order (``"2"`` before ``"10"``). Labels
    must be integer 0/1 (or bool): thresholding probabilities is the caller's decision.
    """
    ids_s = [str(i).strip() for i in ids]
    labels_l = list(labels)
    if len(ids_s) != len(labels_l):
        raise DataError(
            f"cannot write submission {str(path)!r}: {len(ids_s)} ids but {len(labels_l)} labels."
        )
    problems: list[str] = []
    bad = [(i, lab) for i, lab in zip(ids_s, labels_l, strict=True) if _as_label(lab) is None]
    if bad:
        problems.append(
            f"{len(bad)} label(s) are not integer 0/1, e.g. "
            + ", ".join(f"id {i!r}: {lab!r}" for i, lab in bad[:_SHOW])
            + " (threshold probabilities and cast to int first)"
        )
    empty = sum(1 for i in ids_s if not i)
    if empty:
        problems.append(f"{empty} empty id(s)")
    dupes = [i for i, c in Counter(ids_s).items() if c > 1]
    if dupes:
        problems.append(f"duplicate ids {_examples(dupes)}")

    out_header: tuple[str, ...] = tuple(header)
    if len(out_header) != 2:
        raise DataError(f"submission header must have 2 columns (id, label), got {out_header}.")
    by_id = {i: _as_label(lab) for i, lab in zip(ids_s, labels_l, strict=True)}
    if sample_submission is not None:
        out_header, order = _read_sample(sample_submission)
        if len(out_header) != 2:
            raise DataError(
                f"sample submission {str(sample_submission)!r} has header {list(out_header)}; "
                "only two-column (id, label) submissions are supported."
            )
        missing = [i for i in order if i not in by_id]
        sample_set = set(order)
        extra = [i for i in by_id if i not in sample_set]
        if missing:
            problems.append(f"{len(missing)} sample id(s) have no prediction: {_examples(missing)}")
        if extra:
            problems.append(
                f"{len(extra)} predicted id(s) are not in the sample: {_examples(extra)}"
            )
    else:
        order = sorted(by_id, key=natural_key)

    if problems:
        where = f" (sample {str(sample_submission)!r})" if sample_submission is not None else ""
        raise DataError(
            f"cannot write submission {str(path)!r}{where}: " + "; ".join(problems) + "."
        )

    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(out_header)
        for i in order:
            writer.writerow((i, by_id[i]))
    return Path(path)


def validate_submission(
    path: PathLike,
    sample_submission: PathLike | None = None,
    *,
    allowed_labels: Iterable[int] = frozenset({0, 1}),
    header: Sequence[str] = DEFAULT_HEADER,
) -> SubmissionReport:
    """Check a submission file before upload; raise :class:`DataError` listing ALL problems.

    Checks the header (the sample's header when ``sample_submission`` is given, else
    ``header``), that every row has one id and one label, the row count, duplicate ids, that
    the ids equal the sample's, and that labels are integers in ``allowed_labels``.
    """
    allowed = set(allowed_labels)
    p = Path(path)
    got_header, rows = _read_csv(p, "submission")
    problems: list[str] = []

    sample_ids: list[str] | None = None
    expected_header: tuple[str, ...] = tuple(header)
    if sample_submission is not None:
        expected_header, sample_ids = _read_sample(sample_submission)
    if tuple(got_header) != expected_header:
        problems.append(f"header is {got_header}, expected {list(expected_header)}")

    ncols = len(expected_header)
    ids: list[str] = []
    bad_shape: list[int] = []
    bad_label: list[str] = []
    label_counts: Counter[int] = Counter()
    for line, row in rows:
        if len(row) != ncols:
            bad_shape.append(line)
            continue
        rid, raw = row[0].strip(), row[1].strip()
        ids.append(rid)
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value not in allowed or raw != str(value):
            bad_label.append(f"line {line}: {raw!r}")
        else:
            label_counts[value] += 1
    if bad_shape:
        problems.append(
            f"{len(bad_shape)} row(s) do not have {ncols} columns (lines {_examples(bad_shape)})"
        )
    if bad_label:
        problems.append(
            f"{len(bad_label)} label(s) not in {sorted(allowed)}: "
            + ", ".join(bad_label[:_SHOW])
            + (f" ... and {len(bad_label) - _SHOW} more" if len(bad_label) > _SHOW else "")
        )
    empty = sum(1 for i in ids if not i)
    if empty:
        problems.append(f"{empty} row(s) have an empty id")
    dupes = [i for i, c in Counter(ids).items() if c > 1]
    if dupes:
        problems.append(f"{len(dupes)} duplicate id(s): {_examples(dupes)}")
    if not rows:
        problems.append("no data rows")

    if sample_ids is not None:
        if len(rows) != len(sample_ids):
            problems.append(f"{len(rows)} data rows but the sample has {len(sample_ids)}")
        got = set(ids)
        want = set(sample_ids)
        missing = [i for i in sample_ids if i not in got]
        extra = [i for i in dict.fromkeys(ids) if i not in want]
        if missing:
            problems.append(f"{len(missing)} sample id(s) missing: {_examples(missing)}")
        if extra:
            problems.append(f"{len(extra)} id(s) not in the sample: {_examples(extra)}")

    if problems:
        against = f" against sample {str(sample_submission)!r}" if sample_submission else ""
        raise DataError(
            f"submission {str(p)!r} is invalid{against} ({len(problems)} problem(s)):\n  - "
            + "\n  - ".join(problems)
        )
    return SubmissionReport(
        path=p,
        header=tuple(got_header),
        rows=len(rows),
        label_counts=dict(sorted(label_counts.items())),
    )


def read_labels_csv(
    path: PathLike, *, id_col: str = "id", label_col: str = "label"
) -> dict[str, int]:
    """Read a competition ``train_labels.csv`` into ``{id: 0/1}`` (file order kept).

    Fails with :class:`DataError` naming the file and rows for unknown columns, empty or
    duplicate ids, and labels other than 0/1, so a bad label file never trains a model.
    """
    p = Path(path)
    header, rows = _read_csv(p, "labels file")
    missing_cols = [c for c in (id_col, label_col) if c not in header]
    if missing_cols:
        raise DataError(
            f"labels file {str(p)!r} has no column(s) {missing_cols}; its columns are {header}. "
            "Set id_col= / label_col= to the right names."
        )
    ci, cl = header.index(id_col), header.index(label_col)
    out: dict[str, int] = {}
    first_line: dict[str, int] = {}
    problems: list[str] = []
    bad_label: list[str] = []
    dup_lines: list[str] = []
    empty_lines: list[int] = []
    short_lines: list[int] = []
    for line, row in rows:
        if len(row) <= max(ci, cl):
            short_lines.append(line)
            continue
        rid, raw = row[ci].strip(), row[cl].strip()
        if not rid:
            empty_lines.append(line)
            continue
        if raw not in ("0", "1"):
            bad_label.append(f"line {line} (id {rid!r}): {raw!r}")
        if rid in first_line:
            dup_lines.append(f"{rid!r} (lines {first_line[rid]} and {line})")
            continue
        first_line[rid] = line
        out[rid] = 1 if raw == "1" else 0
    if short_lines:
        problems.append(f"rows with too few columns at lines {_examples(short_lines)}")
    if empty_lines:
        problems.append(f"empty {id_col!r} at lines {_examples(empty_lines)}")
    if dup_lines:
        problems.append(
            f"{len(dup_lines)} duplicate id(s): "
            + ", ".join(dup_lines[:_SHOW])
            + (f" ... and {len(dup_lines) - _SHOW} more" if len(dup_lines) > _SHOW else "")
        )
    if bad_label:
        problems.append(
            f"{len(bad_label)} {label_col!r} value(s) are not 0/1: "
            + ", ".join(bad_label[:_SHOW])
            + (f" ... and {len(bad_label) - _SHOW} more" if len(bad_label) > _SHOW else "")
        )
    if not rows:
        problems.append("no data rows")
    if problems:
        raise DataError(f"labels file {str(p)!r} is invalid:\n  - " + "\n  - ".join(problems))
    return out
