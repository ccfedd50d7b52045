"""Config composition: Hydra's compose API over ``conf/``, or a resolved ``params.yaml``.

The compose API is used instead of ``@hydra.main`` on purpose: it never changes the working
directory and creates no per-run output folder, so a stage launched by DVC (or by DDP workers,
which re-run the command) writes to one fixed set of outputs relative to the repository root.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from medpipe.errors import ConfigError

CONFIG_DIR_ENV = "MEDPIPE_CONFIG_DIR"


def config_dir() -> Path:
    """``$MEDPIPE_CONFIG_DIR`` or ``./conf`` (stages run from the repository root)."""
    path = Path(os.environ.get(CONFIG_DIR_ENV, "conf")).resolve()
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"no config.yaml in {path}. Run medpipe from the repository root, or set "
            f"{CONFIG_DIR_ENV} to the folder holding config.yaml."
        )
    return path


def compose(
    overrides: Sequence[str] = (), *, params_file: str | os.PathLike[str] | None = None
) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, or load ``params_file`` + dotlist overrides.

    ``params_file`` is the resolved config DVC writes (``params.yaml``); overrides on top of it
    must be plain ``key=value`` assignments because groups are already resolved there.
    """
    if params_file is not None:
        path = Path(params_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        cfg = OmegaConf.load(path)
        bad = [o for o in overrides if "=" not in o or o.startswith(("+", "~"))]
        if bad:
            raise ConfigError(f"with --config only key=value overrides work, got {bad}")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    else:
        from hydra import compose as hydra_compose
        from hydra import initialize_config_dir
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            with initialize_config_dir(str(config_dir()), version_base=None):
                cfg = hydra_compose(config_name="config", overrides=list(overrides))
        except (HydraException, OmegaConfBaseException) as exc:
            raise ConfigError(f"bad config or override: {_one_line(str(exc))}") from exc
    assert isinstance(cfg, DictConfig)
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:  # interpolation errors name the key
        raise ConfigError(f"could not resolve the config: {exc}") from exc
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (the same text DVC's Hydra integration writes)."""
    return OmegaConf.to_yaml(cfg)


def _one_line(message: str) -> str:
    """Fold Hydra's multi-line messages (option lists, search paths) into one line."""
    lines = [ln.strip() for ln in message.splitlines()]
    head = lines[0] if lines else message
    options: list[str] = []
    label = ""
    for i, ln in enumerate(lines):
        if ln.startswith("Available options in"):
            label = ln.rstrip(":").replace("Available options in", "available options for")
            for opt in lines[i + 1 :]:
                if not opt or opt.startswith("Config search path"):
                    break
                options.append(opt)
            break
    return f"{head}; {label}: {', '.join(options)}" if options else head
