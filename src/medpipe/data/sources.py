"""Where each dataset's upstream files come from, and how they reach ``data/raw/<dataset>/``.

Online, a file is downloaded from its upstream URL. Offline, when a *mirror* folder is given
(``MEDPIPE_DATA_MIRROR`` or ``data.mirror``), the same relative path is copied
from the mirror and no network call is attempted: hospitals and clusters without internet work
this way. Whenever upstream publishes an MD5 it is verified, and every file is first written to a
temporary name and renamed, so nothing half-written is ever left in ``data/raw``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from medpipe.errors import ChecksumError, DataError
from medpipe.io import atomic_path

log = logging.getLogger(__name__)

MIRROR_ENV = "MEDPIPE_DATA_MIRROR"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One upstream file: its path relative to the dataset folder, URL and published MD5."""

    relpath: str
    url: str | None
    md5: str | None = None
    size: int | None = None


def resolve_mirror(configured: str | os.PathLike[str] | None) -> Path | None:
    """The mirror folder to use: ``data.mirror`` from config wins over ``MEDPIPE_DATA_MIRROR``."""
    value = configured if configured not in (None, "") else os.environ.get(MIRROR_ENV)
    if value in (None, ""):
        return None
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data mirror folder {str(path)!r} does not exist (from "
            f"{'data.mirror' if configured else MIRROR_ENV}). Point it at a folder laid out like "
            "the upstream distribution, or unset it to download from upstream."
        )
    return path.resolve()


def md5sum(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file, read in chunks (npz files reach several GB at 224 px)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str | None, *, name: str) -> None:
    """Raise :class:`ChecksumError` naming the file and both checksums when they differ."""
    if not expected:
        return
    actual = md5sum(path)
    if actual != expected:
        raise ChecksumError(
            f"checksum mismatch for {name}: expected MD5 {expected}, got {actual} "
            f"({path.stat().st_size} bytes). The file is truncated or not the upstream release; "
            "delete it from the mirror or re-download it."
        )


def _download(url: str, dest: Path, *, name: str) -> None:
    """Stream ``url`` into ``dest`` with a progress bar."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with Progress(*columns, transient=True) as progress:
                task = progress.add_task(name, total=total)
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    progress.update(task, advance=len(chunk))
    except OSError as exc:  # URLError, HTTPError and socket errors are all OSErrors
        raise DataError(
            f"could not download {name} from {url}: {exc}. If this machine is offline, set "
            f"{MIRROR_ENV}=/path/to/mirror (or data.mirror=...) to a folder laid out like upstream."
        ) from exc


def _copy_from_mirror(src: Path, dest: Path) -> None:
    # A copy, not a hard link: DVC moves and chmods outputs into its cache, and a link would let
    # that (or any later write) reach the shared mirror's file.
    shutil.copyfile(src, dest)


def fetch_file(
    remote: RemoteFile,
    dest_dir: Path,
    *,
    mirror_dir: Path | None = None,
    force: bool = False,
) -> Path:
    """Place ``remote`` at ``dest_dir/remote.relpath`` from the mirror or upstream, verified.

    An existing file with the right checksum is kept (a second ``fetch`` is a no-op).
    """
    target = dest_dir / remote.relpath
    name = remote.relpath
    if target.exists() and not force:
        try:
            verify_md5(target, remote.md5, name=name)
            log.info("%s already present and verified", target)
            return target
        except ChecksumError:
            log.warning("%s exists but fails its checksum; fetching it again", target)

    with atomic_path(target) as tmp:
        if mirror_dir is not None:
            src = mirror_dir / remote.relpath
            if not src.is_file():
                raise DataError(
                    f"{name} is not in the data mirror: expected {src}. Copy the upstream file "
                    "there (same relative path as upstream), or unset the mirror to download it."
                )
            log.info("copying %s from mirror %s", name, mirror_dir)
            _copy_from_mirror(src, tmp)
            name = str(src)
        else:
            if not remote.url:
                raise DataError(f"{name} has no public download URL; provide it through a mirror.")
            log.info("downloading %s from %s", remote.relpath, remote.url)
            _download(remote.url, tmp, name=remote.relpath)
        verify_md5(tmp, remote.md5, name=name)
    return target


def fetch_files(
    remotes: Iterable[RemoteFile],
    dest_dir: str | os.PathLike[str],
    *,
    mirror: str | os.PathLike[str] | None = None,
    mirror_subdir: str = "",
    force: bool = False,
) -> list[Path]:
    """Fetch several files of one dataset into ``dest_dir``; see :func:`fetch_file`.

    ``mirror`` (or ``$MEDPIPE_DATA_MIRROR``) is the mirror's root; this dataset's files sit in
    its ``mirror_subdir`` folder, at the same relative paths as upstream.
    """
    dest = Path(dest_dir)
    mirror_root = resolve_mirror(mirror)
    mirror_dir = None if mirror_root is None else mirror_root / mirror_subdir
    if mirror_dir is not None and not mirror_dir.is_dir():
        raise DataError(
            f"the data mirror has no {mirror_subdir!r} folder ({mirror_dir}); lay it out like "
            "upstream or unset the mirror to download."
        )
    return [fetch_file(r, dest, mirror_dir=mirror_dir, force=force) for r in remotes]
