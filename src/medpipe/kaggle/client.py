"""Submitting to a Kaggle competition, safely.

* The file is always validated first (:func:`~medpipe.kaggle.submission.validate_submission`),
  so a malformed CSV never burns one of the day's limited submissions.
* ``dry_run=True`` shows what would be sent and never contacts Kaggle.
* Credentials are looked up where the official ``kaggle`` package looks
  (:func:`find_credentials`); only their *location* is ever reported, never their value, and
  :func:`redact` / :class:`RedactFilter` mask secret values in text that reaches logs.
* The ``kaggle`` package is imported lazily: importing it authenticates at import time, may
  create config folders and (1.x) exit the process when no credentials exist.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from medpipe.errors import ConfigError, MedpipeError
from medpipe.kaggle.submission import PathLike, validate_submission

__all__ = [
    "SECRET_ENV_VARS",
    "CredentialSource",
    "RedactFilter",
    "find_credentials",
    "redact",
    "submit",
]

log = logging.getLogger(__name__)

#: Environment variables whose *values* are secrets and must never reach output.
SECRET_ENV_VARS: tuple[str, ...] = ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "WANDB_API_KEY")
_MASK = "***"
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary text and hide nothing worth hiding
_SETTINGS_URL = "https://www.kaggle.com/settings"
_COMPETITION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_]*")

CredentialKind = Literal["env_token", "token_file", "env", "kaggle_json", "oauth"]


# --------------------------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------------------------


def _known_secrets(extra: Iterable[str] = ()) -> list[str]:
    values = [os.environ.get(name, "") for name in SECRET_ENV_VARS]
    values.extend(extra)
    secrets = {v.strip() for v in values if v and len(v.strip()) >= _MIN_SECRET_LEN}
    return sorted(secrets, key=len, reverse=True)  # longest first: no partial leftovers


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Mask the values of ``KAGGLE_KEY``, ``KAGGLE_API_TOKEN``, ``WANDB_API_KEY`` (and ``extra``).

    For anything that may echo environment or library output into logs or the console.
    """
    out = str(text)
    for secret in _known_secrets(extra):
        out = out.replace(secret, _MASK)
    return out


class RedactFilter(logging.Filter):
    """Logging filter that runs every record's final message through :func:`redact`.

    Attach to a handler (``handler.addFilter(RedactFilter())``) so secrets never hit log files.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CredentialSource:
    """Where Kaggle credentials were found. Holds a description and path, never the secret."""

    kind: CredentialKind
    description: str
    path: Path | None = None

    def __str__(self) -> str:
        return self.description


def _config_dirs() -> list[Path]:
    """Folders the kaggle package reads ``kaggle.json`` from, in its order of preference."""
    explicit = os.environ.get("KAGGLE_CONFIG_DIR")
    if explicit:
        return [Path(explicit).expanduser()]
    home = Path(os.path.expanduser("~"))
    dirs = [home / ".kaggle"]
    if sys.platform.startswith("linux"):
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(home / ".config")
        dirs.append(Path(xdg) / "kaggle")
    return dirs


def _nonempty_file(path: Path) -> bool:
    try:
        return path.is_file() and bool(path.read_text(encoding="utf-8").strip())
    except OSError:
        return False


def _check_kaggle_json(path: Path) -> None:
    """Fail early (without echoing contents) if ``kaggle.json`` is unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    fields_ok = isinstance(data, dict) and all(
        isinstance(data.get(k), str) and data.get(k) for k in ("username", "key")
    )
    env_fills = bool(os.environ.get("KAGGLE_USERNAME")) and bool(os.environ.get("KAGGLE_KEY"))
    if not fields_ok and not env_fills:
        raise MedpipeError(
            f"Kaggle credentials file {str(path)!r} is not valid JSON with non-empty "
            '"username" and "key" fields. Download a fresh kaggle.json from '
            f"{_SETTINGS_URL} (API > Create New Token) and save it there with mode 600."
        )


def find_credentials() -> CredentialSource:
    """Report where Kaggle credentials are, in the order the kaggle package tries them.

    1. ``KAGGLE_API_TOKEN`` (a token or the path of a token file) / ``~/.kaggle/access_token``
    2. ``KAGGLE_USERNAME`` + ``KAGGLE_KEY`` environment variables
    3. ``kaggle.json`` in ``$KAGGLE_CONFIG_DIR`` or ``~/.kaggle`` (or ``~/.config/kaggle``)
    4. ``~/.kaggle/credentials.json`` from ``kaggle auth login`` (OAuth)

    Raises :class:`MedpipeError` explaining how to provide credentials when none exist.
    """
    token = os.environ.get("KAGGLE_API_TOKEN", "").strip()
    if token:
        if Path(token).expanduser().is_file():
            path = Path(token).expanduser()
            return CredentialSource(
                "token_file", f"file {path} (named by env KAGGLE_API_TOKEN)", path
            )
        return CredentialSource("env_token", "env KAGGLE_API_TOKEN")
    home_kaggle = Path(os.path.expanduser("~")) / ".kaggle"
    for name in ("access_token", "access_token.txt"):
        path = home_kaggle / name
        if _nonempty_file(path):
            return CredentialSource("token_file", f"file {path}", path)

    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return CredentialSource("env", "env KAGGLE_USERNAME/KAGGLE_KEY")

    for folder in _config_dirs():
        path = folder / "kaggle.json"
        if path.is_file():
            _check_kaggle_json(path)
            return CredentialSource("kaggle_json", f"file {path}", path)

    oauth = home_kaggle / "credentials.json"
    if _nonempty_file(oauth):
        return CredentialSource("oauth", f"file {oauth} (kaggle auth login)", oauth)

    partial = ""
    if bool(os.environ.get("KAGGLE_USERNAME")) != bool(os.environ.get("KAGGLE_KEY")):
        have = "KAGGLE_USERNAME" if os.environ.get("KAGGLE_USERNAME") else "KAGGLE_KEY"
        lacking = "KAGGLE_KEY" if have == "KAGGLE_USERNAME" else "KAGGLE_USERNAME"
        partial = f" ({have} is set but {lacking} is not.)"
    json_places = " or ".join(str(d / "kaggle.json") for d in _config_dirs())
    raise MedpipeError(
        "No Kaggle credentials found." + partial + " Create an API token at "
        f"{_SETTINGS_URL} (API section), then provide it in one of three ways: "
        "(1) environment variables KAGGLE_USERNAME and KAGGLE_KEY; "
        f"(2) the downloaded kaggle.json saved as {json_places} "
        "(chmod 600; set KAGGLE_CONFIG_DIR to use another folder); "
        "(3) a new-style API token in env KAGGLE_API_TOKEN or the file ~/.kaggle/access_token."
    )


# --------------------------------------------------------------------------------------------
# Submitting
# --------------------------------------------------------------------------------------------


def _load_kaggle_api() -> Any:
    """Import ``KaggleApi`` only now: importing ``kaggle`` authenticates as a side effect."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except SystemExit as exc:  # kaggle 1.x exits on import without credentials
        raise MedpipeError(
            f"the kaggle package refused to start (exit {exc.code}); check your credentials "
            f"at {_SETTINGS_URL}."
        ) from None
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing and missing.split(".")[0] != "kaggle":
            # e.g. kaggle 2.2.x imports `six` without declaring it as a dependency.
            raise MedpipeError(
                f"the 'kaggle' package cannot be imported because its dependency {missing!r} "
                f"is missing ({exc}); add it to the environment (`uv add {missing}`)."
            ) from None
        raise MedpipeError(
            f"the 'kaggle' package is not installed ({exc}); it is a medpipe dependency, so "
            "re-sync the environment with `uv sync`."
        ) from None
    return KaggleApi


def submit(
    competition: str,
    file: PathLike,
    message: str,
    *,
    dry_run: bool = False,
    sample_submission: PathLike | None = None,
    console: Console | None = None,
) -> str:
    """Validate ``file`` then submit it to ``competition``; return Kaggle's reply message.

    With ``dry_run`` nothing is sent: the competition, file, size, row count, label counts,
    message and the *location* of the credentials are printed, and a summary is returned.
    Errors (bad file, missing credentials, API failure) raise :class:`MedpipeError` subclasses
    whose text has secrets masked.
    """
    if not isinstance(competition, str) or not _COMPETITION_RE.fullmatch(competition):
        raise ConfigError(
            f"kaggle.competition={competition!r} is not a competition slug; use the name from "
            "the competition URL, e.g. 'histopathologic-cancer-detection'."
        )
    if not isinstance(message, str):
        raise ConfigError(f"kaggle submission message must be a string, got {message!r}.")
    path = Path(file)
    report = validate_submission(path, sample_submission)
    out = console if console is not None else Console(highlight=False, soft_wrap=True)

    def show(text: str) -> None:
        out.print(escape(redact(text)))

    size = path.stat().st_size
    counts = ", ".join(f"{k}: {v}" for k, v in report.label_counts.items())
    if dry_run:
        try:
            creds = f"credentials: {find_credentials().description}"
        except MedpipeError:
            creds = "credentials: none found (a real submit would fail; see find_credentials)"
        summary = (
            f"dry run: would submit {path} ({size} bytes, {report.rows} rows) "
            f"to competition {competition!r} with message {message!r}"
        )
        show("[dry run] nothing is sent to Kaggle")
        show(f"competition: {competition}")
        show(f"file: {path}")
        show(f"size: {size} bytes")
        show(f"rows: {report.rows} (labels {counts})")
        show(f"message: {message}")
        show(creds)
        return redact(summary)

    source = find_credentials()
    show(
        f"submitting {path} ({size} bytes, {report.rows} rows) to {competition!r} "
        f"using credentials from {source.description}"
    )
    kaggle_api = _load_kaggle_api()
    api = kaggle_api()
    try:
        api.authenticate()
    except SystemExit:
        raise MedpipeError(
            f"Kaggle rejected the credentials from {source.description}; create a new token "
            f"at {_SETTINGS_URL} and replace them."
        ) from None
    try:
        response = api.competition_submit(str(path), message, competition)
    except Exception as exc:  # network, HTTP 4xx (rules not accepted), etc.
        raise MedpipeError(
            f"Kaggle submission of {str(path)!r} to {competition!r} failed: "
            f"{type(exc).__name__}: {redact(str(exc))}. Check that you accepted the "
            f"competition rules at https://www.kaggle.com/c/{competition}/rules."
        ) from None
    reply = str(getattr(response, "message", "") or "")
    failed = getattr(kaggle_api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", None)
    if failed and reply == failed:
        raise MedpipeError(
            f"Kaggle could not upload {str(path)!r} to {competition!r} ({reply}); retry later."
        )
    if not reply:
        reply = f"submitted {path.name} to {competition}"
    reply = redact(reply)
    show(reply)
    return reply
