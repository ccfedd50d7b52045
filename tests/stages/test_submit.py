"""``medpipe submit``: validation first, dry run, credentials never shown, one-line errors."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from medpipe.cli import main

SECRET = "0123456789abcdef-fake-kaggle-key"


@pytest.fixture(autouse=True)
def clean_env(kaggle_home: Path) -> Path:
    return kaggle_home


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    sub, sample = tmp_path / "sub.csv", tmp_path / "sample_submission.csv"
    sub.write_text("id,label\n3,1\n1,0\n2,1\n")
    sample.write_text("id,label\n3,0\n1,0\n2,0\n")
    return sub, sample


@pytest.fixture
def fake_kaggle(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    class FakeApi:
        def authenticate(self) -> None:
            pass

        def competition_submit(self, file_name, message, competition, quiet=False):
            calls.append((file_name, message, competition))
            return types.SimpleNamespace(message="Successfully submitted")

    ext = types.ModuleType("kaggle.api.kaggle_api_extended")
    ext.KaggleApi = FakeApi  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", ext)
    return calls


def _submit(sub: Path, *extra: str) -> list[str]:
    return ["submit", "--competition", "malaria-hw", "--file", str(sub), "--message", "m1", *extra]


def test_dry_run_validates_and_shows_what_would_be_sent(
    files, monkeypatch: pytest.MonkeyPatch, capsys, fake_kaggle
) -> None:
    sub, sample = files
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    assert main(_submit(sub, "--sample-submission", str(sample), "--dry-run")) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    for needle in ("nothing is sent", "malaria-hw", "sub.csv", "rows: 3", "m1", "KAGGLE_KEY"):
        assert needle in text
    assert SECRET not in text and fake_kaggle == []


def test_real_submit_goes_through_the_api(files, monkeypatch, capsys, fake_kaggle) -> None:
    sub, sample = files
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    assert main(_submit(sub, "--sample-submission", str(sample))) == 0
    assert fake_kaggle == [(str(sub), "m1", "malaria-hw")]
    out = capsys.readouterr()
    assert "Successfully submitted" in out.out and SECRET not in out.out + out.err


def test_missing_credentials_is_one_clear_line(files, capsys, fake_kaggle) -> None:
    sub, sample = files
    assert main(_submit(sub, "--sample-submission", str(sample))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medpipe submit: error: No Kaggle credentials found")
    assert "kaggle.json" in err and len(err.splitlines()) == 1
    assert fake_kaggle == []


def test_invalid_file_is_refused_before_any_upload(tmp_path, files, monkeypatch, capsys,
                                                   fake_kaggle) -> None:  # fmt: skip
    _, sample = files
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n3,1\n1,0.7\n9,1\n")
    assert main(_submit(bad, "--sample-submission", str(sample))) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.csv" in err and "'0.7'" in err and "'9'" in err and "'2'" in err
    assert len(err.splitlines()) == 1
    assert fake_kaggle == []


def test_missing_files_are_named(tmp_path, files, capsys) -> None:
    sub, _ = files
    assert main(_submit(tmp_path / "nope.csv", "--dry-run")) == 2
    assert "nope.csv" in capsys.readouterr().err
    assert main(_submit(sub, "--sample-submission", str(tmp_path / "s.csv"), "--dry-run")) == 2
    assert "s.csv" in capsys.readouterr().err
