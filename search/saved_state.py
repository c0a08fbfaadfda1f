"""Tune's saved experiment state, read as Tune's restore reads it: the newest state file in a
folder, read again only when it changes, and what it keeps of each trial's checkpoints.

Tune rewrites the whole state (about 22 KB a trial) at every save, so a read is what grows
with the study: a folder is listed only until it holds the running Tune's own file, a file
is read only when its stamp changes, and only the trials whose saved entry changed are
decoded.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Literal

from pyarrow.fs import FileSystem, LocalFileSystem
from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
from ray.tune.execution.tune_controller import TuneController
from ray.tune.trainable.metadata import _TrainingRunMetadata
from ray.tune.utils.serialization import _loads_with_cloudpickle

from search.checkpoints import FINAL, Kept, view

Keeps = dict[str, Kept]  # what a saved state keeps, by trial id


def written_since(ns: int) -> Callable[[str], bool]:
    """Whether a local file was last written at or after `ns` (the file system's clock ticks
    behind the real one, never ahead: a file written before is never taken for one since)."""
    return lambda path: os.stat(path).st_mtime_ns >= ns


class NewestStateFile:
    """The path of Tune's newest state file in a folder, as Tune's restore finds it (`fs`
    None: a local folder). Tune rewrites one file, named by its session, at every save, so
    once the folder holds the running Tune's own (`is_own`), that file is the newest for as
    long as it runs and the folder is not listed again: the folder holds a folder per trial,
    and listing it at every step of the driver's loop was what grew with the study."""

    def __init__(self, folder: str, fs: FileSystem | None, is_own: Callable[[str], bool]):
        self.folder, self._fs, self._is_own = folder, fs, is_own
        self.own: str | None = None

    def path(self) -> str | None:
        if self.own is None:
            newest = self._find()
            if newest is not None and self._is_own(newest):
                self.own = newest
            return newest
        return self.own

    def _find(self) -> str | None:
        """A local folder is listed by name alone: pyarrow's listing, which Tune's own lookup
        uses, reads every entry's metadata."""
        if self._fs is not None and not isinstance(self._fs, LocalFileSystem):
            return _find_newest_experiment_checkpoint(self.folder, self._fs)
        try:
            names = fnmatch.filter(os.listdir(self.folder),
                                   TuneController.CKPT_FILE_TMPL.format("*"))
        except FileNotFoundError:
            return None
        return f"{self.folder}/{max(names)}" if names else None


class SavedState:
    """One folder's newest saved experiment state (`fs` None: a local folder; `is_own` as
    `NewestStateFile`'s)."""

    def __init__(self, folder: str, fs: FileSystem | None,
                 is_own: Callable[[str], bool]) -> None:
        self.file = NewestStateFile(folder, fs, is_own)
        self._fs = fs
        self._stamp: tuple[str, int, int] | None = None  # of the file read last
        self._views = SavedViews()

    def read(self, known: Mapping[bytes, Keeps]
             ) -> tuple[bytes, Keeps] | None | Literal[False]:
        """The digest of the newest state file and what it keeps, if it changed since the last
        read; None if it did not (or there is none yet); False if it cannot be read whole.
        A state whose digest is in `known` (read before, from another folder) is not parsed
        again."""
        path = self.file.path()
        if path is None:
            return None
        fs = self._fs or LocalFileSystem()
        info = fs.get_file_info(path)
        stamp = (path, info.mtime_ns, info.size)
        if self._stamp == stamp:
            return None
        try:
            with fs.open_input_stream(path) as stream:
                text = stream.readall()
            digest = hashlib.blake2b(text).digest()
            keeps = known.get(digest) or self._views(text)
        except (OSError, ValueError):
            return False
        self._stamp = stamp
        return digest, keeps

    def forget(self) -> None:
        """Read the newest file at the next `read` even if its stamp has not changed (a
        final save may keep it)."""
        self._stamp = None


class SavedViews:
    """Reads what each trial needs as Tune's saved experiment state has it, by trial id,
    decoding only the trials whose saved entry changed since the last read: a study's ended
    trials stay in every state Tune saves, and decoding them all each time made the pruner's
    cost per trial grow with the study."""

    def __init__(self) -> None:
        self._last: dict[bytes, tuple[str, Kept]] = {}  # by a digest of the trial's entry

    def __call__(self, text: bytes) -> Keeps:
        views, read = {}, {}
        for trial_json, metadata_json in json.loads(text)["trial_data"]:
            key = hashlib.blake2b(f"{trial_json}\n{metadata_json}".encode(),
                                  digest_size=16).digest()
            trial_id, kept = read[key] = self._last.get(key) or _decode(trial_json,
                                                                        metadata_json)
            views[trial_id] = kept
        self._last = read
        return views


def _decode(trial_json: str, metadata_json: str) -> tuple[str, Kept]:
    trial = _loads_with_cloudpickle(trial_json)
    manager = _TrainingRunMetadata.from_json_state(metadata_json).checkpoint_manager
    return trial["trial_id"], view(trial["status"] == FINAL, manager)
