"""Backbones built with ImageNet weights that Keras downloads on first use: one process of a
node at a time, and never a file cut short taken as whole (`pretrained`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h5py

from trainables.images import DEFAULT_CACHE, locked

# held while a backbone with ImageNet weights is built (`pretrained`)
WEIGHTS_LOCK = DEFAULT_CACHE / "imagenet-weights.lock"
# where `keras.utils.get_file` keeps the weights it downloads ($KERAS_HOME, else ~/.keras,
# as Keras reads it at import; where that cannot be written Keras uses /tmp/.keras instead)
KERAS_DOWNLOADS = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"

Built = TypeVar("Built")


def pretrained(constructor: Callable[..., Built], weights: str | None,
               lock: Path = WEIGHTS_LOCK, downloads: Path = KERAS_DOWNLOADS,
               **kwargs: Any) -> Built:
    """`constructor(weights=weights, **kwargs)`, with ImageNet weights fetched by one
    process of the node at a time, and never a file cut short taken as whole.

    Keras downloads weights on first use straight into their file in `downloads`. Two trials
    building a backbone at once (the gemstones and blood cells baselines, both VGG16) both
    wrote it, and the one that finished first found it changed under it: a hash mismatch, a
    failed trial. Under the lock, the others wait, then find the file whole.

    A process killed mid-download (SIGKILL, or the `SystemExit` of a worker told to stop:
    Keras deletes its part file on an exception only) left part of a file, which Keras then
    loaded as it was where it has no hash to check (MobileNetV2's): every later trial with
    that backbone failed on a truncated file. So the lock's holder notes the files there
    before it builds; a holder that finds the note of one that died deletes what appeared
    after it, to be fetched again.

    A file cut short before any of this (a notebook stopped mid-download, a search run
    before the lock) is still there: a build that fails on a file there that HDF5 cannot
    open deletes it and builds again, fetching it anew."""
    if weights != "imagenet":
        return constructor(weights=weights, **kwargs)
    note = lock.with_suffix(".building")
    with locked(lock):
        if note.exists():
            for name in _files(downloads) - set(note.read_text().splitlines()):
                (downloads / name).unlink()
        note.write_text("\n".join(sorted(_files(downloads))))
        try:
            model = constructor(weights=weights, **kwargs)
        except OSError:  # what h5py raises on a file cut short
            broken = _unreadable(downloads)
            if not broken:
                raise
            for path in broken:
                path.unlink()
            model = constructor(weights=weights, **kwargs)
        note.unlink()
        return model


def hdf5_problem(path: Path) -> str | None:
    """What HDF5 says of `path` if it cannot open it (cut short, or not HDF5), else None."""
    try:
        h5py.File(path, "r").close()
    except OSError as exc:
        return str(exc)
    return None


def _unreadable(folder: Path) -> list[Path]:
    """The HDF5 files (Keras' `.h5` weights) in `folder` that HDF5 cannot open."""
    return [path for path in sorted(folder.glob("*.h5")) if hdf5_problem(path)]


def _files(folder: Path) -> set[str]:
    """The names of the files in `folder` (none if it does not exist)."""
    return {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
