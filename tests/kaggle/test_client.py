"""Tests for medpipe.kaggle.client: credentials lookup, redaction, dry-run and real submit.

The real ``kaggle`` package is never imported here: a fake module tree is put in
``sys.modules`` so the lazy import inside ``submit`` picks up a fake ``KaggleApi``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from medpipe.errors import ConfigError, DataError, MedpipeError
from medpipe.kaggle import client
from medpipe.kaggle.client import (
    CredentialSource,
    RedactFilter,
    find_credentials,
    redact,
    submit,
)

FAKE_KEY = "0123456789abcdef-fake-kaggle-key"
FAKE_TOKEN = "KGAT_fake_token_value_42"
FAKE_WANDB = "wandb-secret-value-99"
ENV_VARS = (
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_API_TOKEN",
    "KAGGLE_CONFIG_DIR",
    "XDG_CONFIG_HOME",
    "WANDB_API_KEY",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Isolate from the real user: empty HOME, no Kaggle/W&B env vars."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def env_creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)


@pytest.fixture
def sub(tmp_path: Path) -> Path:
    f = tmp_path / "submission.csv"
    f.write_text("id,label\n1,0\n2,1\n10,1\n", encoding="utf-8")
    return f


class FakeKaggleApi:
    """Stands in for kaggle.api.kaggle_api_extended.KaggleApi; records calls."""

    COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE = "Could not submit to competition"
    instances: list[FakeKaggleApi] = []  # noqa: RUF012
    reply = "Successfully submitted to Fake Competition"
    raise_on_submit: Exception | None = None

    def __init__(self) -> None:
        self.authenticated = False
        self.calls: list[tuple] = []
        FakeKaggleApi.instances.append(self)

    def authenticate(self) -> None:
        self.authenticated = True

    def competition_submit(self, file_name, message, competition, quiet=False):
        assert self.authenticated
        self.calls.append((file_name, message, competition))
        if self.raise_on_submit is not None:
            raise self.raise_on_submit
        return types.SimpleNamespace(message=self.reply, ref=123)


@pytest.fixture
def fake_kaggle(monkeypatch: pytest.MonkeyPatch) -> type[FakeKaggleApi]:
    pkg = types.ModuleType("kaggle")
    api_pkg = types.ModuleType("kaggle.api")
    ext = types.ModuleType("kaggle.api.kaggle_api_extended")
    ext.KaggleApi = FakeKaggleApi  # type: ignore[attr-defined]
    pkg.api = api_pkg  # type: ignore[attr-defined]
    api_pkg.kaggle_api_extended = ext  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kaggle", pkg)
    monkeypatch.setitem(sys.modules, "kaggle.api", api_pkg)
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", ext)
    FakeKaggleApi.instances = []
    monkeypatch.setattr(FakeKaggleApi, "reply", FakeKaggleApi.reply)
    monkeypatch.setattr(FakeKaggleApi, "raise_on_submit", None)
    return FakeKaggleApi


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (FAKE_KEY, FAKE_TOKEN, FAKE_WANDB):
            assert secret not in text


# ------------------------------------------------------------------------------ credentials


def test_find_credentials_env(env_creds) -> None:
    src = find_credentials()
    assert src == CredentialSource("env", "env KAGGLE_USERNAME/KAGGLE_KEY")
    _assert_no_secret(str(src), repr(src))


def test_find_credentials_kaggle_json_home(clean_env: Path) -> None:
    f = clean_env / ".kaggle" / "kaggle.json"
    f.parent.mkdir()
    f.write_text(json.dumps({"username": "alice", "key": FAKE_KEY}))
    src = find_credentials()
    assert src.kind == "kaggle_json" and src.path == f and str(f) in src.description
    _assert_no_secret(repr(src))


def test_find_credentials_config_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "kaggle.json").write_text(json.dumps({"username": "a", "key": FAKE_KEY}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    assert find_credentials().path == cfg / "kaggle.json"


def test_find_credentials_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("XDG fallback is Linux-only")
    xdg = tmp_path / "xdg"
    (xdg / "kaggle").mkdir(parents=True)
    (xdg / "kaggle" / "kaggle.json").write_text(json.dumps({"username": "a", "key": FAKE_KEY}))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert find_credentials().path == xdg / "kaggle" / "kaggle.json"


def test_find_credentials_tokens(monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    tok = clean_env / ".kaggle" / "access_token"
    tok.parent.mkdir()
    tok.write_text(FAKE_TOKEN + "\n")
    src = find_credentials()
    assert src.kind == "token_file" and src.path == tok
    monkeypatch.setenv("KAGGLE_API_TOKEN", FAKE_TOKEN)
    src = find_credentials()
    assert src == CredentialSource("env_token", "env KAGGLE_API_TOKEN")
    _assert_no_secret(repr(src))


def test_find_credentials_oauth(clean_env: Path) -> None:
    f = clean_env / ".kaggle" / "credentials.json"
    f.parent.mkdir()
    f.write_text('{"refresh_token": "x"}')
    assert find_credentials().kind == "oauth"


def test_bad_kaggle_json_names_file_not_contents(clean_env: Path) -> None:
    f = clean_env / ".kaggle" / "kaggle.json"
    f.parent.mkdir()
    f.write_text('{"username": "alice", "kee": "' + FAKE_KEY + '"}')
    with pytest.raises(MedpipeError) as err:
        find_credentials()
    assert str(f) in str(err.value)
    _assert_no_secret(str(err.value))


def test_missing_credentials_explains_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    with pytest.raises(MedpipeError) as err:
        find_credentials()
    msg = str(err.value)
    for needle in (
        "https://www.kaggle.com/settings",
        "KAGGLE_USERNAME and KAGGLE_KEY",
        "kaggle.json",
        "KAGGLE_API_TOKEN",
        "KAGGLE_USERNAME is set but KAGGLE_KEY is not",
    ):
        assert needle in msg


# ------------------------------------------------------------------------------ redaction


def test_redact_masks_env_secrets(monkeypatch: pytest.MonkeyPatch, env_creds) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB)
    text = f"key={FAKE_KEY} wandb={FAKE_WANDB} user=alice"
    out = redact(text)
    _assert_no_secret(out)
    assert "user=alice" in out and out.count("***") == 2
    assert redact("extra s3cr3t!", extra=["s3cr3t!"]) == "extra ***"


def test_redact_ignores_unset_or_tiny_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KEY", "1")
    assert redact("version 1.2.1") == "version 1.2.1"


def test_redact_filter(env_creds, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("medpipe.test.redact")
    caplog.handler.addFilter(RedactFilter())
    with caplog.at_level(logging.INFO, logger="medpipe.test.redact"):
        logger.info("token is %s", FAKE_KEY)
    assert "token is ***" in caplog.text
    _assert_no_secret(caplog.text)


# ------------------------------------------------------------------------------ submit


def test_importing_client_does_not_import_kaggle() -> None:
    code = "import sys, medpipe.kaggle.client; assert 'kaggle' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dry_run_prints_summary_without_secret(
    env_creds, sub: Path, capsys: pytest.CaptureFixture[str], fake_kaggle
) -> None:
    result = submit("histopathologic-cancer-detection", sub, "resnet18 fold0", dry_run=True)
    out = capsys.readouterr()
    text = out.out + out.err + result
    for needle in (
        "histopathologic-cancer-detection",
        "submission.csv",
        f"{sub.stat().st_size} bytes",
        "rows: 3",
        "resnet18 fold0",
        "env KAGGLE_USERNAME/KAGGLE_KEY",
    ):
        assert needle in text
    _assert_no_secret(text)
    assert fake_kaggle.instances == []  # nothing sent


def test_dry_run_without_credentials_still_works(sub: Path, capsys) -> None:
    submit("comp", sub, "msg", dry_run=True)
    assert "none found" in capsys.readouterr().out


def test_submit_validates_first(tmp_path: Path, env_creds, fake_kaggle) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n1,0.5\n")
    with pytest.raises(DataError, match=r"bad\.csv"):
        submit("comp", bad, "msg")
    assert fake_kaggle.instances == []


def test_submit_with_sample_mismatch(tmp_path: Path, sub: Path, env_creds, fake_kaggle) -> None:
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,label\n1,0\n2,0\n")
    with pytest.raises(DataError, match="not in the sample"):
        submit("comp", sub, "msg", sample_submission=sample, dry_run=True)


def test_submit_bad_competition_name(sub: Path) -> None:
    with pytest.raises(ConfigError, match="competition"):
        submit("not a slug/../x", sub, "msg", dry_run=True)


def test_real_submit_calls_kaggle_api(
    env_creds, sub: Path, capsys: pytest.CaptureFixture[str], fake_kaggle
) -> None:
    reply = submit("histopathologic-cancer-detection", sub, "first try")
    (api,) = fake_kaggle.instances
    assert api.calls == [(str(sub), "first try", "histopathologic-cancer-detection")]
    assert reply == "Successfully submitted to Fake Competition"
    out = capsys.readouterr()
    _assert_no_secret(out.out, out.err, reply)


def test_real_submit_missing_credentials(sub: Path, fake_kaggle) -> None:
    with pytest.raises(MedpipeError, match="No Kaggle credentials"):
        submit("comp", sub, "msg")
    assert fake_kaggle.instances == []


def test_real_submit_api_error_is_redacted(
    env_creds, sub: Path, fake_kaggle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_kaggle, "raise_on_submit", RuntimeError(f"401 for alice:{FAKE_KEY}"))
    with pytest.raises(MedpipeError) as err:
        submit("comp", sub, "msg")
    assert "401" in str(err.value) and "rules" in str(err.value)
    _assert_no_secret(str(err.value))
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_real_submit_upload_failure(
    env_creds, sub: Path, fake_kaggle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_kaggle, "reply", fake_kaggle.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE)
    with pytest.raises(MedpipeError, match="could not upload"):
        submit("comp", sub, "msg")


def test_load_kaggle_api_exit_becomes_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def exiting_import(name, *args, **kwargs):
        if name.startswith("kaggle"):
            raise SystemExit(1)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "kaggle.api.kaggle_api_extended", raising=False)
    monkeypatch.setattr(builtins, "__import__", exiting_import)
    with pytest.raises(MedpipeError, match="refused to start"):
        client._load_kaggle_api()


@pytest.mark.parametrize(
    ("missing", "needle"),
    [("six", "dependency 'six' is missing"), ("kaggle", "not installed")],
)
def test_load_kaggle_api_import_errors(
    monkeypatch: pytest.MonkeyPatch, missing: str, needle: str
) -> None:
    import builtins

    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name.startswith("kaggle"):
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "kaggle.api.kaggle_api_extended", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(MedpipeError, match=needle):
        client._load_kaggle_api()
