"""Tune's saved experiment state, read as Tune's restore reads it: the newest state file in a
folder, read again only when it changes, and what it keeps of each trial's checkpoints.

Tune rewrites the whole state (about 22 KB a trial) at every save, so a read is what grows
with the study: a folder is listed only until it holds the running Tune's own file, a file
is read only when its stamp changes, and only the trials whose saved entry changed are
parsed and decoded.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Callable
from typing import Literal

from pyarrow.fs import FileSystem, LocalFileSystem
from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
from ray.tune.execution.tune_controller import TuneController
from ray.tune.trainable.metadata import _TrainingRunMetadata
from ray.tune.utils.serialization import _loads_with_cloudpickle

from search.checkpoints import FINAL, Kept, view

Keeps = dict[str, Kept]  # what a saved state keeps, by trial id
ENDED = (FINAL, "ERROR")  # a trial's statuses in a saved state once it runs no more


def unended(folder: str) -> set[str] | None:
    """The trials that Tune's newest saved state in the local `folder` has not ended
    (neither TERMINATED nor ERROR): those a resume of it runs. Read whole, once. None if it
    cannot be read whole (Tune's save failed: a disk full, say)."""
    path = NewestStateFile(folder, None, lambda path: True).path()
    if path is None:
        return set()
    try:
        with open(path, "rb") as file:
            saved = json.loads(file.read())
        trials = [json.loads(trial_json) for trial_json, _ in saved["trial_data"]]
        return {trial["trial_id"] for trial in trials if trial["status"] not in ENDED}
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
        remote = _remote(self._fs)
        if remote is not None:
            return _find_newest_experiment_checkpoint(self.folder, remote)
        try:
            names = fnmatch.filter(os.listdir(self.folder),
                                   TuneController.CKPT_FILE_TMPL.format("*"))
        except FileNotFoundError:
            return None
        return f"{self.folder}/{max(names)}" if names else None


class SavedState:
    """One folder's newest saved experiment state (`fs` None: a local folder; `is_own` as
    `NewestStateFile`'s), read through `views`: states that are copies of one another (the
    staging folder's and the storage path's) share theirs, which then parse an entry once."""

    def __init__(self, folder: str, fs: FileSystem | None,
                 is_own: Callable[[str], bool], views: SavedViews) -> None:
        self.file = NewestStateFile(folder, fs, is_own)
        self._fs = fs
        self._stamp: tuple[str, int, int] | None = None  # of the file read last
        self._views = views

    def read(self) -> Keeps | None | Literal[False]:
        """What the newest state file keeps, if it changed since the last read; None if it
        did not (or there is none yet); False if it cannot be read whole."""
        path = self.file.path()
        if path is None:
            return None
        try:
            read = self._read(path)
            if read is None:
                return None  # not changed since it was read last
            stamp, text = read
            keeps = self._views(text)
        except (OSError, ValueError):
            return False
        self._stamp = stamp
        return keeps

    def _read(self, path: str) -> tuple[tuple[str, int, int], bytes] | None:
        """The file's stamp and bytes, or None if its stamp is the one read last. A local
        file is stamped before it is opened (the driver's loop asks at every step, and the
        file seldom changes) and read through Python's own: pyarrow's stream took two to
        three times as long on a state of tens of MB."""
        remote = _remote(self._fs)
        if remote is None:
            status = os.stat(path)
            stamp = (path, status.st_mtime_ns, status.st_size)
            if stamp == self._stamp:
                return None
            with open(path, "rb") as file:
                return stamp, file.read()
        info = remote.get_file_info(path)
        stamp = (path, info.mtime_ns, info.size)
        if stamp == self._stamp:
            return None
        with remote.open_input_stream(path) as stream:
            return stamp, stream.readall()

    def forget(self) -> None:
        """Read the newest file at the next `read` even if its stamp has not changed (a
        final save may keep it)."""
        self._stamp = None


class SavedViews:
    """Reads what each trial needs as Tune's saved experiment state has it, by trial id,
    parsing and decoding only the trials whose saved entry changed.

    Tune saves its trials in the order they were added, each as the same text until the
    trial changes, and a study's ended trials stay in every state it saves: parsing them all
    each time made the pruner's cost per trial grow with the study. So each entry is
    compared, as bytes, with the ones at its place in the last two states read (a memory
    compare; the staging folder's reads and the storage path's alternate, and a copy that
    lands is of a state staged shortly before), and only one that matches neither is
    decoded and parsed, alone: decoding the whole file (46 MB at 2,000 trials) took as
    long as the rest of the read (README, "Scale"). The entries are kept for the next
    read: about as much memory as the state file's size."""

    def __init__(self) -> None:
        self._recent: tuple[list[_Entry], ...] = ()  # the last two states read, newest first

    def __call__(self, text: bytes) -> Keeps:
        start = _TRIALS.match(text)
        if start is None:
            raise ValueError("not Tune's experiment state: it does not begin with its trials")
        pos, read = start.end(), list[_Entry]()
        while not text.startswith(b"]", pos):
            known = [entries[len(read)] for entries in self._recent if len(read) < len(entries)]
            entry = next((each for each in known if text.startswith(each[0], pos)), None)
            if entry is None:
                entry = _parse(text, pos, max((len(each[0]) for each in known), default=0))
            read.append(entry)
            pos = _SEPARATOR.match(text, pos + len(entry[0])).end()  # type: ignore[union-attr]
        # the rest is parsed too: a file cut short (a copy under way) is not read as whole
        json.loads(b'{"trial_data": []' + text[pos + 1:])
        self._recent = (read, *self._recent[:1])
        return {trial_id: kept for _, trial_id, kept in read}


_Entry = tuple[bytes, str, Kept]  # a trial's entry in a saved state: its bytes, id and view
_TRIALS = re.compile(rb'\s*\{\s*"trial_data"\s*:\s*\[\s*')  # Tune's state opens with its trials
_SEPARATOR = re.compile(rb"\s*,?\s*")  # between two entries, or after the last
_DECODER = json.JSONDecoder()


def _parse(text: bytes, pos: int, hint: int) -> _Entry:
    """The entry at `pos` of a saved state, decoded from a window of its bytes twice the
    `hint` (the length of an entry at its place before), doubled until the entry fits: a
    window that cuts the entry (or a character) fails to parse."""
    size = max(2 * hint, 1 << 16)
    while True:
        try:
            chars = text[pos:pos + size].decode()
            value, end = _DECODER.raw_decode(chars)
            break
        except ValueError:  # json's errors and a cut character both are ValueErrors
            if pos + size >= len(text):
                raise
            size *= 2
    trial_json, metadata_json = value
    return (chars[:end].encode(), *_decode(trial_json, metadata_json))


def _remote(fs: FileSystem | None) -> FileSystem | None:
    """`fs`, unless its paths are this machine's own files (None: a local folder), which
    are read and listed through Python's own calls."""
    return None if fs is None or isinstance(fs, LocalFileSystem) else fs


def _decode(trial_json: str, metadata_json: str) -> tuple[str, Kept]:
    trial = _loads_with_cloudpickle(trial_json)
    manager = _TrainingRunMetadata.from_json_state(metadata_json).checkpoint_manager
    return trial["trial_id"], view(trial["status"] == FINAL, manager)
