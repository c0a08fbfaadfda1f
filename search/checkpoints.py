"""Which of a trial's checkpoints a search keeps, while it runs and once it ends.

A running trial needs its latest checkpoint, with the optimizer's state, to go on after its
worker dies, and its best by `val_accuracy` (the model the search may register). A driver
killed at any moment resumes each trial from the latest checkpoint that Tune's last saved
experiment state names, which may be older than the latest Tune holds in memory. So
`CheckpointPruner` reads that saved state, as Tune's restore reads it, whenever it changes,
and deletes each trial's checkpoints but its best and latest, in memory and as saved, as
soon as either changes. A finished trial (as saved too) is never resumed: it keeps its best
alone, without the optimizer's state, and only while no other finished trial beats it (the
search registers one model, its best trial's; equals all keep theirs). Tune's own
`CheckpointConfig(num_to_keep=…)` deletes an older checkpoint as soon as a newer one is
registered, before any saved state names the newer one: a driver killed then leaves a trial
that cannot resume.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from pyarrow.fs import FileSelector, FileSystem, FileType, LocalFileSystem
from ray import tune
from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
from ray.tune.execution.tune_controller import TuneController
from ray.tune.experiment import Trial
from ray.tune.trainable.metadata import _TrainingRunMetadata
from ray.tune.utils.serialization import _loads_with_cloudpickle

from search.objective import METRIC
from trainables.checkpoint import OPTIMIZER_FILE

CHECKPOINT_PREFIX = "checkpoint_"  # how Tune names a trial's checkpoint folders
# a trial that ended: a resumed search does not run it again (an errored one waits for the
# part's end: a trial retried after its worker died passes through no final status)
FINAL = Trial.TERMINATED


Checkpoints = list[tuple[tune.Checkpoint, dict[str, Any]]]  # (checkpoint, its metrics)


def _scored(checkpoints: Checkpoints) -> list[tuple[tune.Checkpoint, float]]:
    """(checkpoint, its METRIC) of the pairs that have it, in order."""
    return [(checkpoint, metrics[METRIC]) for checkpoint, metrics in checkpoints
            if METRIC in metrics]


def best_checkpoint(checkpoints: Checkpoints) -> tune.Checkpoint | None:
    """Of (checkpoint, metrics) pairs, the checkpoint with the best METRIC, the first of
    equals; None if none has it."""
    scored = _scored(checkpoints)
    return max(scored, key=lambda pair: pair[1])[0] if scored else None


def best_score(checkpoints: Checkpoints) -> float:
    """The best METRIC of (checkpoint, metrics) pairs; -inf if none has it."""
    return max((score for _, score in _scored(checkpoints)), default=-math.inf)


def beaten(scores: dict[str, float]) -> set[str]:
    """Of finished trials' best scores by trial id, the trials whose checkpoints no search
    will register: those below the best (equals all stay)."""
    top = max(scores.values(), default=-math.inf)
    return {trial_id for trial_id, score in scores.items() if score < top}


@dataclass(frozen=True)
class Kept:
    """A trial's checkpoints (folder names) that must stay: `resumable` with the optimizer's
    state, `registrable` at least with the model; and whether the trial had `ended`."""
    resumable: frozenset[str]
    registrable: frozenset[str]
    ended: bool = False


def kept(final: bool, latest: tune.Checkpoint | None, checkpoints: Checkpoints) -> Kept:
    """What one view of a trial (Tune's, in memory or as saved) needs: its best, and its
    latest unless the trial is `final`."""
    best = best_checkpoint(checkpoints)
    return Kept(frozenset([_name(latest)] if latest and not final else []),
                frozenset([_name(best)] if best else []), final)


def _view(final: bool, manager: Any) -> Kept:
    """What a trial needs as one of Tune's checkpoint managers (in memory or as saved) has it."""
    latest = manager.latest_checkpoint_result
    return kept(final, latest.checkpoint if latest else None, _pairs(manager))


def _pairs(manager: Any) -> Checkpoints:
    """The (checkpoint, metrics) pairs one of Tune's checkpoint managers holds."""
    return [(r.checkpoint, r.metrics) for r in manager.best_checkpoint_results]


def thin(fs: FileSystem, trial_path: str, registered: list[str], views: list[Kept]) -> set[str]:
    """Delete the `registered` checkpoints of a trial that no view keeps (all of them, given
    no view), and the optimizer's state of those kept only to register; return the paths
    deleted. Folders Tune has not registered are left alone: one may be being written."""
    resumable = frozenset().union(*(view.resumable for view in views))
    registrable = frozenset().union(*(view.registrable for view in views))
    deleted = set()
    for name in registered:
        path = f"{trial_path}/{name}"
        if name not in resumable | registrable:
            _delete(fs.delete_dir, path)
            deleted.add(path)
        elif name not in resumable:
            _delete(fs.delete_file, f"{path}/{OPTIMIZER_FILE}")
            deleted.add(f"{path}/{OPTIMIZER_FILE}")
    return deleted


def _delete(delete: Any, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # gone already (an earlier part's prune)
        delete(path)


class CheckpointPruner(tune.Callback):
    """Keeps each trial's checkpoints down to what resuming and registering need (the module
    docstring says what), acting whenever a trial checkpoints or ends and whenever Tune saves
    its experiment state.

    Tune saves the state in two steps: the driver writes it to a staging folder, then a
    background thread copies it to the storage path, where a resumed search reads it. A copy
    under way may carry any state staged since the last one that landed, so the pruner keeps
    what each of those names too, until the storage path holds a later one."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[Any, ...]] = {}  # stamp of each state file last read
        self._landed: dict[str, Kept] = {}  # what the state on the storage path keeps
        self._staged: list[tuple[bytes, dict[str, Kept]]] = []  # (digest, keeps), oldest first
        self._changed: set[Trial] = set()  # trials that checkpointed or ended since
        self._deleted: set[str] = set()  # paths deleted already, not to ask the storage again
        self._views: dict[str, SavedViews] = {}  # by the folder the state is read from
        self._listed: dict[str, tuple[int, str | None]] = {}  # folder -> (mtime, newest)

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial,
                      checkpoint: tune.Checkpoint, **info: Any) -> None:
        self._changed.add(trial)  # Tune registers the checkpoint after this call

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        self._changed.add(trial)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if trials:
            self._prune(trials)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        if trials:
            self._files.clear()  # the final state may keep a file's stamp: read it anyway
            self._prune(trials)

    def _prune(self, trials: list[Trial]) -> None:
        storage = trials[0].storage
        assert storage is not None  # Tune gives every trial its storage before it starts
        staged = self._read(storage.experiment_driver_staging_path, None)
        landed = self._read(storage.experiment_fs_path, storage.storage_filesystem)
        if staged is False or landed is False:
            return  # a state file half-written: act once it can be read
        if staged and (not self._staged or staged[0] != self._staged[-1][0]):
            self._staged.append(staged)
        if landed:
            self._landed = landed[1]
            digests = [digest for digest, _ in self._staged]
            if landed[0] in digests:  # copies land in order: the earlier will not land
                self._staged = self._staged[digests.index(landed[0]):]
        changed = trials if staged or landed else list(self._changed)
        self._changed.clear()
        saved = [self._landed] + [keeps for _, keeps in self._staged]
        dropped = self._beaten(trials) if staged or landed else set()
        for trial in changed:
            manager = trial.run_metadata.checkpoint_manager
            results = manager.best_checkpoint_results if manager else None
            if not results or trial.storage is None:
                continue
            in_memory = _view(trial.status == FINAL, manager)
            trial_path = trial.storage.trial_fs_path
            names = [_name(r.checkpoint) for r in results]
            self._deleted |= thin(
                trial.storage.storage_filesystem, trial_path,
                [name for name in names if f"{trial_path}/{name}" not in self._deleted],
                [] if trial.trial_id in dropped else
                [in_memory] + [keeps[trial.trial_id] for keeps in saved
                               if trial.trial_id in keeps])

    def _beaten(self, trials: list[Trial]) -> set[str]:
        """The finished trials another beats, of those that ended in memory and in the state
        on the storage path (a resumed search runs neither again, and later states keep them
        ended): their checkpoints go. The state that lands later can only add to them."""
        scores = {}
        for trial in trials:
            saved = self._landed.get(trial.trial_id)
            manager = trial.run_metadata.checkpoint_manager
            if trial.status == FINAL and saved is not None and saved.ended and manager:
                scores[trial.trial_id] = best_score(_pairs(manager))
        return beaten(scores)

    def _read(self, folder: str, fs: FileSystem | None
              ) -> tuple[bytes, dict[str, Kept]] | None | Literal[False]:
        """The digest of Tune's newest state file in `folder` and what it keeps, if it
        changed since the last read; None if it did not (or there is none yet); False if it
        cannot be read whole."""
        path = self._newest_state(folder, fs)
        if path is None:
            return None
        fs = fs or LocalFileSystem()
        info = fs.get_file_info(path)
        stamp = (path, info.mtime_ns, info.size)
        if self._files.get(folder) == stamp:
            return None
        try:
            with fs.open_input_stream(path) as stream:
                text = stream.readall()
            digest = hashlib.blake2b(text).digest()
            # the storage path's state is a copy of one staged before, read then: parsing
            # it again is what grows with the study (Tune's state is 22 KB a trial)
            keeps = dict(self._staged).get(digest) or \
                self._views.setdefault(folder, SavedViews())(text)
        except (OSError, ValueError):
            return False
        self._files[folder] = stamp
        return digest, keeps

    def _newest_state(self, folder: str, fs: FileSystem | None) -> str | None:
        """The path of Tune's newest experiment state file in `folder`, as Tune's restore
        finds it. A local folder is listed by name alone (pyarrow's listing, which Tune's own
        lookup uses, reads every entry's metadata, and the folder holds every trial's), and
        listed again only once its modification time changes: a new state file changes it,
        and the folder holds a folder per trial (0.2 ms a listing at 600 trials, two folders
        at every step of the driver's loop)."""
        if fs is not None and not isinstance(fs, LocalFileSystem):
            return _find_newest_experiment_checkpoint(folder, fs)
        try:
            mtime = os.stat(folder).st_mtime_ns
            listed = self._listed.get(folder)
            # two changes within the file system's clock tick share a time: trust a time
            # only once it is a second old
            if listed and listed[0] == mtime and time.time_ns() - mtime > 1_000_000_000:
                return listed[1]
            names = fnmatch.filter(os.listdir(folder), TuneController.CKPT_FILE_TMPL.format("*"))
        except FileNotFoundError:
            return None
        newest = f"{folder}/{max(names)}" if names else None
        self._listed[folder] = (mtime, newest)
        return newest


class SavedViews:
    """Reads what each trial needs as Tune's saved experiment state has it, by trial id,
    decoding only the trials whose saved entry changed since the last read: a study's ended
    trials stay in every state Tune saves, and decoding them all each time made the pruner's
    cost per trial grow with the study."""

    def __init__(self) -> None:
        self._last: dict[bytes, tuple[str, Kept]] = {}  # by a digest of the trial's entry

    def __call__(self, text: bytes) -> dict[str, Kept]:
        views, read = {}, {}
        for trial_json, metadata_json in json.loads(text)["trial_data"]:
            key = hashlib.blake2b(f"{trial_json}\n{metadata_json}".encode(),
                                  digest_size=16).digest()
            trial_id, view = read[key] = self._last.get(key) or _decode(trial_json,
                                                                        metadata_json)
            views[trial_id] = view
        self._last = read
        return views


def _decode(trial_json: str, metadata_json: str) -> tuple[str, Kept]:
    trial = _loads_with_cloudpickle(trial_json)
    manager = _TrainingRunMetadata.from_json_state(metadata_json).checkpoint_manager
    return trial["trial_id"], _view(trial["status"] == FINAL, manager)


def _name(checkpoint: Any) -> str:
    """A checkpoint's folder name (Tune's own and `tune.Checkpoint` are typed apart)."""
    return str(checkpoint.path).rstrip("/").rsplit("/", 1)[-1]


def kept_checkpoint(result: tune.Result) -> tune.Checkpoint | None:
    """The checkpoint an ended trial keeps: its best-`val_accuracy` one, else its latest;
    None if it has none, or no longer (another trial beat it)."""
    checkpoint = best_checkpoint(result.best_checkpoints or []) or result.checkpoint
    if checkpoint is None or \
            result.filesystem.get_file_info(checkpoint.path).type == FileType.NotFound:
        return None
    return checkpoint


def prune(grid: tune.ResultGrid) -> None:
    """Once a Tune part has ended: delete the checkpoints of each trial another beats, and of
    the others all but their best, and the best's optimizer state. Any folder goes, not only
    those Tune lists: a killed driver's trials may have written some after its last saved
    state."""
    results = list(grid)  # type: ignore[call-overload]  # iterates by __getitem__
    dropped = beaten({result.path: best_score(result.best_checkpoints or [])
                      for result in results})
    for result in results:
        best = None if result.path in dropped else kept_checkpoint(result)
        folders = [info.base_name
                   for info in result.filesystem.get_file_info(FileSelector(result.path))
                   if info.type == FileType.Directory
                   and info.base_name.startswith(CHECKPOINT_PREFIX)]
        thin(result.filesystem, result.path, folders,
             [Kept(frozenset(), frozenset([_name(best)] if best else []))])
