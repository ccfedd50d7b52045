"""Seeding and provenance: what makes a run repeatable and a checkpoint traceable.

Lightning's ``seed_everything(workers=True)`` seeds torch, numpy and ``random`` in the main
process and in every DataLoader worker. albumentations (>= 1.4) does not follow them: each
``Compose`` owns a generator seeded from OS entropy unless it is given a seed, so the same config
would augment differently on every run, and forked workers would all replay the same sequence.
:func:`seed_augmentations` reseeds every albumentations pipeline reachable from a DataModule or a
dataset, :class:`SeedAugmentations` does it per epoch and rank in the main process, and
:func:`worker_init_fn` does it inside each worker.

:func:`provenance` is what every checkpoint stores next to its weights (see
``medpipe.checkpointing``): resolved config, git revision, DVC hashes of the data, and versions.
"""

from __future__ import annotations

import functools
import logging
import platform
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

# Data folders larger than this are not hashed file by file when DVC has no hash for them.
MAX_HASHED_BYTES = 256 * 2**20
PACKAGES = (
    "medpipe",
    "torch",
    "lightning",
    "torchvision",
    "torchmetrics",
    "timm",
    "albumentations",
)


# --------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixing ``parts`` (base seed, epoch, rank, ...) with numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1)[0])


def _random_transforms(obj: Any, depth: int, seen: set[int]) -> Iterator[Any]:
    if depth < 0 or id(obj) in seen:
        return
    seen.add(id(obj))
    if callable(getattr(obj, "set_random_seed", None)) and type(obj).__module__.startswith(
        "albumentations"
    ):
        yield obj  # Compose.set_random_seed propagates to its children
        return
    if isinstance(obj, dict):
        children: Any = obj.values()
    elif isinstance(obj, (list, tuple)):
        children = obj
    elif isinstance(obj, (Dataset, L.LightningDataModule)):
        children = vars(obj).values()
    else:
        return
    for child in children:
        yield from _random_transforms(child, depth - 1, seen)


def seed_augmentations(root: Any, seed: int) -> int:
    """Reseed every albumentations pipeline reachable from ``root``; returns how many."""
    found = list(_random_transforms(root, 4, set()))
    for transform in found:
        transform.set_random_seed(int(seed))
    return len(found)


def worker_init_fn(worker_id: int, rank: int = 0) -> None:
    """Lightning's worker seeding, then albumentations reseeded per worker, epoch and rank.

    ``torch.initial_seed()`` inside a worker is the loader's per-epoch base seed plus the worker
    id, itself drawn from the (seeded) main-process generator, so it is reproducible and differs
    between workers and epochs.
    """
    from lightning.fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id, rank=rank)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        seed_augmentations(info.dataset, derive_seed(torch.initial_seed(), rank))


def seed_loader_workers(loader: Any, rank: int) -> Any:
    """Give a multi-worker DataLoader :func:`worker_init_fn` unless it already has its own."""
    if isinstance(loader, DataLoader) and loader.num_workers > 0 and loader.worker_init_fn is None:
        loader.worker_init_fn = functools.partial(worker_init_fn, rank=rank)
    return loader


class SeedAugmentations(L.Callback):
    """Reseeds the DataModule's augmentations in the main process at every training epoch.

    The seed mixes the config seed, the epoch and the global rank: two runs of one config augment
    identically, DDP ranks differ, and a run resumed at an epoch boundary sees the same
    augmentations as an uninterrupted one.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.datamodule is not None:
            seed = derive_seed(self.seed, trainer.current_epoch, trainer.global_rank)
            seed_augmentations(trainer.datamodule, seed)


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


def git_revision() -> dict[str, Any]:
    """``{revision, dirty}`` of the repository in the working directory (None outside git)."""
    revision = _git("rev-parse", "HEAD")
    if not revision:
        return {"revision": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"revision": revision, "dirty": bool(status) if status is not None else None}


def _dvc_entries(doc: Any) -> Iterator[dict[str, Any]]:
    """Every ``{path, md5, ...}`` entry of a parsed dvc.lock or .dvc file."""
    if not isinstance(doc, dict):
        return
    yield from (e for e in doc.get("outs") or [] if isinstance(e, dict))
    for stage in (doc.get("stages") or {}).values():
        if isinstance(stage, dict):
            for key in ("deps", "outs"):
                yield from (e for e in stage.get(key) or [] if isinstance(e, dict))


def _norm(path: str | Path) -> Path:
    return Path(path).resolve()


def dvc_hashes(data_path: str | Path) -> dict[str, str]:
    """The hashes DVC recorded for ``data_path`` (dvc.lock of the working directory or a .dvc file).

    Entries for the folder itself, a folder holding it, or files inside it are returned as
    ``{path: md5}``; an empty dict means DVC does not track that data here.
    """
    import yaml

    target = _norm(data_path)
    found: dict[str, str] = {}
    for source in (Path("dvc.lock"), Path(f"{data_path}.dvc")):
        if not source.is_file():
            continue
        try:
            doc = yaml.safe_load(source.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        base = source.parent
        for entry in _dvc_entries(doc):
            path, digest = entry.get("path"), entry.get("md5") or entry.get("etag")
            if not path or not digest:
                continue
            full = _norm(base / path)
            if full == target or full in target.parents or target in full.parents:
                found[str(path)] = str(digest)
    return found


def data_fingerprint(data_path: str | Path | None) -> dict[str, Any]:
    """DVC hashes of the data folder, else per-file MD5s (DVC 3 file hashes) of a small folder."""
    if not data_path:
        return {"path": None}
    path = Path(data_path)
    info: dict[str, Any] = {"path": str(path), "dvc": dvc_hashes(path)}
    if info["dvc"] or not path.exists():
        return info
    from medpipe.data.sources import md5sum

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if sum(f.stat().st_size for f in files) <= MAX_HASHED_BYTES:
        info["md5"] = {str(f.relative_to(path) if f != path else f.name): md5sum(f) for f in files}
    return info


def package_versions() -> dict[str, str | None]:
    """Versions of python and of the packages that decide what a checkpoint contains."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["torch"] = str(
        torch.__version__
    )  # the build too (2.5.1+cu124); plain str: weights_only loads
    out["cuda"] = torch.version.cuda
    return out


def provenance(cfg: DictConfig) -> dict[str, Any]:
    """Resolved config, git revision, data hashes and versions: stored in every checkpoint."""
    config = OmegaConf.to_container(cfg, resolve=True)
    data_root = cfg.get("data", {}).get("root") if cfg.get("data") else None
    return {
        "config": config,
        "git": git_revision(),
        "data": data_fingerprint(data_root),
        "versions": package_versions(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }
