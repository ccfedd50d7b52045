"""Shared fixtures: where the real-data mirror is, and small helpers for end-to-end runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never reach a model hub: fail fast instead of retrying against an unreachable network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def mirror_root() -> Path:
    """``$MEDPIPE_DATA_MIRROR`` (as CI sets it) or ``../shared/data`` beside the checkout."""
    env = os.environ.get("MEDPIPE_DATA_MIRROR")
    return Path(env).resolve() if env else (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = mirror_root()
    if not (root / "medmnist" / "pneumoniamnist.npz").is_file():
        pytest.skip(f"real-data mirror not found at {root}; set MEDPIPE_DATA_MIRROR")
    return root


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to open a URL."""
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
