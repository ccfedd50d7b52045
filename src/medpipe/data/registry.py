"""DataModules from config: ``data._target_`` names the class, the other keys are its arguments."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from medpipe.errors import ConfigError


def build_datamodule(data_cfg: DictConfig | dict[str, Any]) -> L.LightningDataModule:
    """Instantiate the DataModule of ``data_cfg`` (a ``conf/data/*.yaml`` entry)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = OmegaConf.create(data_cfg) if isinstance(data_cfg, dict) else data_cfg
    if "_target_" not in cfg:
        raise ConfigError(
            "data._target_ is missing: the data config must name its DataModule class"
        )
    try:
        return instantiate(cfg, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"could not build the DataModule {cfg._target_}: {exc}") from exc
