"""Experiment loggers from the ``logger`` config group (several may be on at once).

``logger=csv`` (default), ``logger=wandb``, ``logger=dvclive``, ``logger=none``, or several:
``logger=[csv,wandb,dvclive]``. Each key of the composed ``logger`` node is one Lightning logger;
its options are that logger's arguments plus the medpipe options documented in
``conf/logger/<name>.yaml``. The resolved config is logged as hyperparameters.

Secrets never go through here: W&B reads its key from ``WANDB_API_KEY`` or ``wandb login``
(netrc); a key-like option in the config is refused, and the key is never printed or stored.
Without a key (or with ``WANDB_MODE=offline`` / ``logger.wandb.offline=true``) the run is written
offline and can be uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from medpipe.errors import ConfigError

log = logging.getLogger(__name__)

KNOWN = ("csv", "tensorboard", "wandb", "dvclive")
SECRET_WORDS = ("api_key", "apikey", "token", "password", "secret")


def _refuse_secrets(kind: str, options: Mapping[str, Any]) -> None:
    for key in options:
        if any(word in str(key).lower() for word in SECRET_WORDS):
            raise ConfigError(
                f"logger.{kind}.{key}: credentials do not belong in the config (it is logged and "
                "stored in every checkpoint). Remove it; for W&B set WANDB_API_KEY in the "
                "environment or run `wandb login` once."
            )


def _require(module: str, kind: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"logger={kind} needs the {module} package, which is not installed; install it "
            f"(uv add {module}) or pick another logger, e.g. logger=csv"
        )


def wandb_has_credentials() -> bool:
    """Whether W&B would find an API key (environment or netrc); the key itself is not read out."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:  # wandb's own netrc lookup for the configured host
        from wandb.sdk.lib.wbauth import wbnetrc

        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        return wbnetrc.read_netrc_auth(host=host) is not None
    except Exception:  # private API moved, unreadable netrc, malformed key: treat as no key
        return False


def wandb_offline(options: Mapping[str, Any]) -> tuple[bool, str]:
    """``(offline, why)`` from the config, ``WANDB_MODE`` and the presence of credentials."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if options.get("offline"):
        return True, "logger.wandb.offline=true"
    if mode in ("offline", "dryrun"):
        return True, f"WANDB_MODE={mode}"
    if mode == "disabled":
        return True, "WANDB_MODE=disabled"
    if not wandb_has_credentials():
        return True, "no W&B API key found (set WANDB_API_KEY or run `wandb login`)"
    return False, ""


def _wandb(options: dict[str, Any], resume_run: str | None) -> Any:
    _require("wandb", "wandb")
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    offline, why = wandb_offline(options)
    log_model = options.pop("log_model", True)
    options.pop("offline", None)
    save_dir = Path(options.pop("save_dir", "logs"))
    # rank from the launcher's environment: ranks > 0 write nothing
    rank_zero = rank_zero_only.rank == 0
    if rank_zero:
        save_dir.mkdir(parents=True, exist_ok=True)  # wandb.init falls back to /tmp without it
    if offline and rank_zero:
        log.warning(
            "W&B: %s; the run is written offline under %s/wandb/ (upload it later with "
            "`wandb sync <run folder>`)",
            why,
            save_dir,
        )
    if resume_run:
        options.update(id=resume_run, resume="allow")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        return WandbLogger(
            save_dir=str(save_dir),
            offline=offline,
            log_model=bool(log_model) and not offline,  # WandbLogger refuses both at once
            **options,
        )
    except TypeError as exc:
        raise ConfigError(f"bad logger.wandb option: {exc}") from exc


def _dvclive(options: dict[str, Any], resuming: bool) -> Any:
    _require("dvclive", "dvclive")
    from dvclive.lightning import DVCLiveLogger

    options.setdefault("save_dvc_exp", False)  # never create git refs behind the user's back
    # DVCLive duplicates its entries when dvc.yaml sits inside its own `dir` (3.49), hence the
    # conf/logger/dvclive.yaml layout: dvclive/<name>/dvc.yaml describing dvclive/<name>/run/.
    dvcyaml = options.get("dvcyaml")
    if dvcyaml not in (None, False, True) and Path(str(dvcyaml)).name != "dvc.yaml":
        raise ConfigError(f"logger.dvclive.dvcyaml={dvcyaml!r} must be a path ending in dvc.yaml")
    try:
        return DVCLiveLogger(resume=resuming, **options)
    except TypeError as exc:
        raise ConfigError(f"bad logger.dvclive option: {exc}") from exc


def build_loggers(cfg: DictConfig, resume_meta: Mapping[str, Any] | None = None) -> list[Any]:
    """One Lightning logger per key of ``cfg.logger`` (see :class:`LogConfig` for the hparams).

    ``resume_meta`` is the metadata of the checkpoint being resumed: W&B continues the same run
    and DVCLive appends to its curves instead of starting over.
    """
    node = cfg.get("logger")
    spec = OmegaConf.to_container(node, resolve=True) if node else {}
    if not isinstance(spec, dict):
        raise ConfigError(f"logger must be a mapping of logger names to options, got {spec!r}")
    runs = dict((resume_meta or {}).get("logger_runs") or {})
    loggers: list[Any] = []
    for kind, options in spec.items():
        options = dict(options or {})
        _refuse_secrets(kind, options)
        if kind == "csv":
            from lightning.pytorch.loggers import CSVLogger

            try:
                loggers.append(CSVLogger(**options))
            except TypeError as exc:
                raise ConfigError(f"bad logger.csv option: {exc}") from exc
        elif kind == "tensorboard":
            if not any(_has(m) for m in ("tensorboard", "tensorboardX")):
                _require("tensorboard", kind)
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(**options))
        elif kind == "wandb":
            loggers.append(_wandb(options, runs.get("wandb") if resume_meta else None))
        elif kind == "dvclive":
            loggers.append(_dvclive(options, resuming=resume_meta is not None))
        else:
            raise ConfigError(
                f"logger {kind!r} is not available; use one of {', '.join(KNOWN)} "
                "(e.g. logger=csv, logger=wandb, logger=[csv,wandb])"
            )
    return loggers


class LogConfig(L.Callback):
    """Logs the resolved config as hyperparameters once ranks are known (rank 0 writes)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.hparams = OmegaConf.to_container(cfg, resolve=True)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            for lg in trainer.loggers:
                lg.log_hyperparams(self.hparams)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def finish(loggers: list[Any]) -> None:
    """Close tracker runs so offline files are complete (Lightning leaves W&B runs open)."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish()
            lg._experiment = None
