"""Multi-process training helpers: device checks and exact distributed evaluation.

With ``use_distributed_sampler`` Lightning gives validation and test loaders a
``DistributedSampler``, which pads the split with repeated samples until it divides by the world
size, so DDP metrics would count some samples twice. :func:`prepare_loaders` gives them
Lightning's ``UnrepeatedDistributedSampler`` instead (each sample on exactly one rank; ranks may
differ by one sample), and the metrics, which gather predictions from every rank, then equal a
single-process evaluation.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from medpipe.errors import ConfigError
from medpipe.reproducibility import seed_loader_workers

GPU_ACCELERATORS = ("gpu", "cuda")


def _requested(devices: Any) -> int | None:
    """How many devices a ``trainer.devices`` value asks for (None: 'auto' or all of them)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return None
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        devices = text
    try:
        n = int(devices)
    except (TypeError, ValueError):
        raise ConfigError(
            f"trainer.devices={devices!r}: use a number, a list of GPU ids, -1 (all) or auto"
        ) from None
    return None if n == -1 else n


def check_devices(trainer_cfg: Mapping[str, Any]) -> None:
    """Fail with one clear line when the config asks for devices this machine does not have."""
    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    devices = trainer_cfg.get("devices", "auto")
    n = _requested(devices)
    if n is not None and n < 1:
        raise ConfigError(f"trainer.devices={devices!r} must be at least 1 (or -1 for all)")
    if accelerator in GPU_ACCELERATORS:
        available = torch.cuda.device_count()
        if available == 0:
            raise ConfigError(
                f"trainer.accelerator={accelerator} but no CUDA GPU is visible on this machine; "
                "use trainer=cpu (or trainer=ddp_cpu for several CPU processes)"
            )
        ids = devices if isinstance(devices, (list, tuple)) else []
        if any(int(i) >= available for i in ids):
            raise ConfigError(
                f"trainer.devices={list(ids)} names GPUs this machine does not have (it has "
                f"{available}: ids 0..{available - 1})"
            )
        if n is not None and n > available:
            raise ConfigError(
                f"trainer.devices={devices} but this machine has {available} GPU(s); use "
                f"trainer.devices={available} or trainer.devices=-1 (all)"
            )
    elif accelerator == "cpu":
        cores = os.cpu_count() or 1
        if n is not None and n > cores:
            raise ConfigError(
                f"trainer.devices={devices} asks for {n} CPU processes but this machine has "
                f"{cores} CPU cores; use trainer.devices<={cores}"
            )


def _unrepeated(loader: Any, trainer: L.Trainer) -> Any:
    """``loader`` with an ``UnrepeatedDistributedSampler`` for this rank (DDP only)."""
    if trainer.world_size <= 1 or not isinstance(loader, DataLoader):
        return loader
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    sampler = UnrepeatedDistributedSampler(
        loader.dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
    # Lightning's own helper re-instantiates the loader (subclasses included) with a new sampler.
    return _update_dataloader(loader, sampler, mode=RunningStage.VALIDATING)


def _wrap(
    dm: L.LightningDataModule, name: str, fn: Callable[[Any, L.Trainer], Any], trainer: L.Trainer
) -> None:
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if not is_overridden(name, dm, L.LightningDataModule):
        return
    original = getattr(dm, name)

    @functools.wraps(original)
    def wrapped() -> Any:
        loader = fn(original(), trainer)
        if isinstance(loader, (list, tuple)):
            return type(loader)(seed_loader_workers(x, trainer.global_rank) for x in loader)
        return seed_loader_workers(loader, trainer.global_rank)

    setattr(dm, name, wrapped)


def prepare_loaders(dm: L.LightningDataModule, trainer: L.Trainer) -> None:
    """Seeded workers for every loader; exact (unpadded) DDP sharding for val and test."""

    def unrepeated(loader: Any, tr: L.Trainer) -> Any:
        if isinstance(loader, (list, tuple)):
            return type(loader)(_unrepeated(x, tr) for x in loader)
        return _unrepeated(loader, tr)

    _wrap(dm, "train_dataloader", lambda loader, tr: loader, trainer)
    _wrap(dm, "val_dataloader", unrepeated, trainer)
    _wrap(dm, "test_dataloader", unrepeated, trainer)


class ExactDistributedMeans(L.Callback):
    """Makes ``self.log(..., sync_dist=True)`` epoch means exact on unequal DDP shards.

    Lightning accumulates a mean-reduced metric as ``sum(value * batch_size)`` and an integer
    sample count, then averages both over ranks; the integer average truncates (23 samples on 2
    ranks count as 22), which only matters when ranks saw different numbers of samples, as the
    unpadded val/test shards of :func:`prepare_loaders` do. Casting the count to float after each
    batch (before Lightning may compute and sync the epoch value) makes the mean exact. It touches
    Lightning's private result collection; tests/test_ddp.py fails if that ever changes.
    """

    @staticmethod
    def _float_counts(trainer: L.Trainer) -> None:
        if trainer.world_size <= 1:
            return
        for metric in (getattr(trainer, "_results", None) or {}).values():
            count = getattr(metric, "cumulated_batch_size", None)
            if isinstance(count, torch.Tensor) and not count.is_floating_point():
                metric.cumulated_batch_size = count.to(torch.get_default_dtype())

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._float_counts(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._float_counts(trainer)


def sequential_copy(loader: Any) -> DataLoader | None:
    """A single-process, in-order loader over the same dataset (for rank-0 side work)."""
    if not isinstance(loader, DataLoader):
        return None
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size or 1, collate_fn=loader.collate_fn
    )
