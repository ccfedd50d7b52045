"""One exception type for every user-facing problem.

The CLI catches :class:`MedpipeError` and prints its message as one clear line instead of a
traceback, so every message must name the file or option at fault and say what to do.
"""

from __future__ import annotations


class MedpipeError(RuntimeError):
    """A problem the user can fix (bad input file, bad config value, missing credential)."""


class ConfigError(MedpipeError, ValueError):
    """A config value is invalid; the message names the option and the allowed values."""


class DataError(MedpipeError):
    """An input file is missing, corrupt, or inconsistent; the message names the file."""


class ChecksumError(DataError):
    """A downloaded or mirrored file does not match its published checksum."""
