"""``medpipe submit --competition C --file F --message M [--sample-submission S] [--dry-run]``.

Thin on purpose: :func:`medpipe.kaggle.client.submit` validates the file first (header, row
count, ids and labels, against ``--sample-submission`` when given), finds the credentials where the ``kaggle`` package looks (reporting only their location)
and submits through the Kaggle API; ``--dry-run`` validates and prints what would be sent.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medpipe.errors import DataError

log = logging.getLogger(__name__)


def run(
    *,
    competition: str,
    file: str,
    message: str,
    sample_submission: str | None = None,
    dry_run: bool = False,
) -> str:
    """Validate ``file`` and submit it to ``competition`` (or only show what would be sent)."""
    from medpipe.kaggle.client import submit

    path = Path(file)
    if not path.is_file():
        raise DataError(
            f"submission file {str(path)!r} does not exist or is not a file; write it with `medpipe predict "
            "experiment=<competition experiment>` (it lands in submissions/<experiment>.csv)."
        )
    sample = Path(sample_submission) if sample_submission else None
    if sample is not None and not sample.is_file():
        raise DataError(
            f"--sample-submission {str(sample)!r} does not exist; give the competition's "
            "sample_submission.csv (e.g. data/raw/<competition>/sample_submission.csv)."
        )
    if sample is None:
        log.warning(
            "no --sample-submission given: ids are not checked against the competition's; pass "
            "it to catch missing or extra ids before using one of the day's submissions."
        )
    try:
        return submit(competition, path, message, dry_run=dry_run, sample_submission=sample)
    except DataError as exc:  # the validator lists every problem on its own line: fold them
        text = str(exc).replace(":\n  - ", ": ").replace("\n  - ", "; ")
        raise DataError(
            f"{text}. Fix the file (e.g. re-run `medpipe predict`) before submitting."
        ) from None
