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


@pytest.fixture()
def kaggle_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty HOME with no Kaggle credentials in the environment (isolates from the real user)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    return home


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two threads per process thrash."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
