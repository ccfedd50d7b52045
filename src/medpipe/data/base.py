"""Options and loaders every DataModule shares.

Kept in one place so that a bad ``data.*`` value fails with the same message whichever dataset
is configured, and every split loader is built from the same options.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset

from medpipe.errors import ConfigError


def check_mean_std(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.mean``/``data.std`` as one float per channel (0.5 where unset); std must be > 0."""
    default = (0.5,) * channels
    mean_ = tuple(float(v) for v in mean) if mean is not None else default
    std_ = tuple(float(v) for v in std) if std is not None else default
    if len(mean_) != channels or len(std_) != channels:
        raise ConfigError(
            f"data.mean/data.std need {channels} values (one per channel), "
            f"got {list(mean_)} / {list(std_)}"
        )
    if any(s <= 0 for s in std_):
        raise ConfigError(f"data.std={list(std_)} must be positive")
    return mean_, std_


class LoaderOptions:
    """Mixin for DataModules: the ``data`` loader options and a DataLoader per named split."""

    batch_size: int
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    datasets: Mapping[str, Dataset]

    def set_loader_options(
        self,
        batch_size: int,
        num_workers: int,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        """Check and keep the options; checked at construction so a bad one fails before any I/O."""
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be >= 1")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers} must be >= 0")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.pin_memory = bool(pin_memory)
        # DataLoader refuses persistent_workers without workers: dropped, so one config serves
        # both num_workers=0 (tests, CPU) and >0.
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0

    def split_loader(
        self, split: str, *, data: str, shuffle: bool = False, **kwargs: Any
    ) -> DataLoader:
        """DataLoader over ``self.datasets[split]``; ConfigError naming the splits there are.

        ``data`` names the dataset in the message; ``kwargs`` go to DataLoader as they are.
        """
        if split not in self.datasets:
            raise ConfigError(
                f"split {split!r} does not exist for data={data}; use one of "
                f"{sorted(self.datasets)}"
            )
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            **kwargs,
        )
