"""Shared DataModule options: loader option checks, split loaders, mean/std checks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler, TensorDataset

from medpipe.data.base import LoaderOptions, check_mean_std
from medpipe.data.isbi import ISBIDataModule
from medpipe.data.malaria import MalariaDataModule
from medpipe.data.medmnist import MedMNISTDataModule
from medpipe.errors import ConfigError


class _Holder(LoaderOptions):
    def __init__(self, **options) -> None:
        self.set_loader_options(**options)
        self.datasets = {
            "train": TensorDataset(torch.arange(10.0)),
            "val": TensorDataset(torch.arange(4.0)),
        }


def _collate(batch):
    return batch


# -- loader options ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -3])
def test_batch_size_below_one_is_refused(batch_size):
    with pytest.raises(ConfigError, match=rf"data\.batch_size={batch_size} must be >= 1"):
        _Holder(batch_size=batch_size, num_workers=0)


def test_negative_num_workers_is_refused():
    with pytest.raises(ConfigError, match=r"data\.num_workers=-1 must be >= 0"):
        _Holder(batch_size=4, num_workers=-1)


def test_options_are_coerced_and_persistent_workers_need_workers():
    h = _Holder(batch_size=8.0, num_workers=2.0, pin_memory=1, persistent_workers=1)
    assert (h.batch_size, h.num_workers, h.pin_memory, h.persistent_workers) == (8, 2, True, True)
    assert type(h.batch_size) is int and type(h.num_workers) is int
    assert _Holder(batch_size=8, num_workers=0, persistent_workers=True).persistent_workers is False


# -- split loaders ---------------------------------------------------------------------------


def test_unknown_split_names_the_data_and_known_splits():
    h = _Holder(batch_size=4, num_workers=0)
    with pytest.raises(
        ConfigError,
        match=r"split 'holdout' does not exist for data=toy; use one of \['train', 'val'\]",
    ):
        h.split_loader("holdout", data="toy")


def test_loader_gets_the_options_and_extra_arguments():
    h = _Holder(batch_size=3, num_workers=2, pin_memory=True, persistent_workers=True)
    loader = h.split_loader("train", data="toy", shuffle=True, drop_last=True, collate_fn=_collate)
    assert loader.dataset is h.datasets["train"]
    assert loader.batch_size == 3
    assert loader.num_workers == 2
    assert loader.pin_memory is True
    assert loader.persistent_workers is True
    assert loader.drop_last is True
    assert loader.collate_fn is _collate
    assert isinstance(loader.sampler, RandomSampler)


def test_loader_is_unshuffled_by_default_and_yields_batches():
    h = _Holder(batch_size=4, num_workers=0, persistent_workers=True)
    loader = h.split_loader("train", data="toy")
    assert isinstance(loader.sampler, SequentialSampler)
    assert loader.persistent_workers is False and loader.drop_last is False
    assert [len(b[0]) for b in loader] == [4, 4, 2]


# -- mean / std --------------------------------------------------------------------------------


def test_mean_std_default_to_half_per_channel_and_become_floats():
    assert check_mean_std(None, None, 3) == ((0.5,) * 3, (0.5,) * 3)
    mean, std = check_mean_std([0, 1], (1, 2), 2)
    assert mean == (0.0, 1.0) and std == (1.0, 2.0)
    assert all(type(v) is float for v in mean + std)


@pytest.mark.parametrize(("mean", "std"), [([0.5, 0.5], None), (None, [0.2] * 3)])
def test_mean_std_need_one_value_per_channel(mean, std):
    with pytest.raises(
        ConfigError, match=r"data\.mean/data\.std need 1 values \(one per channel\)"
    ):
        check_mean_std(mean, std, 1)


@pytest.mark.parametrize("std", [[0.0, 0.5, 0.5], [0.5, -0.1, 0.5]])
def test_std_must_be_positive(std):
    with pytest.raises(ConfigError, match=r"data\.std=.* must be positive"):
        check_mean_std(None, std, 3)


# -- the DataModules use them ------------------------------------------------------------------


def _medmnist(tmp_path, **kw):
    return MedMNISTDataModule(flag="pneumoniamnist", root=tmp_path, **kw)


def _malaria(tmp_path, **kw):
    return MalariaDataModule(root=tmp_path / "raw", processed=tmp_path / "p", size=32, **kw)


def _isbi(tmp_path, **kw):
    return ISBIDataModule(root=tmp_path / "raw", processed=tmp_path / "p", size=32, **kw)


@pytest.mark.parametrize("make", [_medmnist, _malaria, _isbi])
def test_datamodules_check_loader_options_and_mean_std(tmp_path, make):
    with pytest.raises(ConfigError, match=r"data\.batch_size=0 must be >= 1"):
        make(tmp_path, batch_size=0)
    with pytest.raises(ConfigError, match=r"data\.num_workers=-2 must be >= 0"):
        make(tmp_path, num_workers=-2)
    with pytest.raises(ConfigError, match=r"data\.std=.* must be positive"):
        make(tmp_path, channels=1, std=[0.0])
    dm = make(tmp_path, channels=1, batch_size=5, num_workers=0, persistent_workers=True)
    assert (dm.batch_size, dm.num_workers, dm.persistent_workers) == (5, 0, False)


@pytest.mark.parametrize(
    ("make", "loader", "name"),
    [
        (_medmnist, lambda dm, s: dm._loader(s, shuffle=False), "pneumoniamnist"),
        (_malaria, lambda dm, s: dm.dataloader(s), "MalariaDataModule"),
        (_isbi, lambda dm, s: dm.loader(s), "isbi"),
    ],
)
def test_datamodule_loaders_name_unknown_splits(tmp_path, make, loader, name):
    dm = make(tmp_path, batch_size=4, channels=1)
    dm.datasets = {"train": TensorDataset(torch.arange(6.0))}  # set up: no data is read
    with pytest.raises(
        ConfigError,
        match=rf"split 'holdout' does not exist for data={name}; use one of \['train'\]",
    ):
        loader(dm, "holdout")
    assert loader(dm, "train").batch_size == 4
