"""Which of a trial's checkpoints a search keeps: its best by `val_accuracy` (the model the
search registers), its latest (where Tune retries a trial whose worker died), and the one
Tune's saved experiment snapshot names (where a resumed search continues the trial).

Tune resumes a killed driver's experiment from its last snapshot on the storage path, which
names each trial's latest checkpoint as it was when the snapshot was taken. Tune's own
pruning (`CheckpointConfig(num_to_keep=…)`) deletes an older checkpoint as soon as a newer
one is registered, before a snapshot names the newer one: a driver killed in between
cannot resume the trial. `CheckpointPruner` deletes a checkpoint only once a snapshot that
names a newer one has reached the storage path, so a trial holds at most its best, its
latest, the one the saved snapshot names (usually the latest: snapshots come every 10 s or
more) and the one being written. `prune` runs once `fit` has returned, when Tune's final
snapshot names each trial's end, and keeps the best and the latest.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from pyarrow.fs import FileSelector, FileType
from ray import tune

from search.objective import METRIC, MODE

CHECKPOINT_PREFIX = "checkpoint_"  # how Tune names a trial's checkpoint folders
STATE_GLOB = "experiment_state-*.json"  # Tune's snapshot of the experiment
CHECK_EVERY_S = 1.0  # how often the pruner reads the snapshot on the storage path
MAX_STAGED = 20  # snapshots staged and awaited on the storage path


def best_checkpoint(checkpoints: list[tuple[tune.Checkpoint, dict[str, Any]]]
                    ) -> tune.Checkpoint | None:
    """Of (checkpoint, metrics) pairs, the checkpoint with the best METRIC, the first of
    equals; None if none has it."""
    scored = [(checkpoint, metrics[METRIC]) for checkpoint, metrics in checkpoints
              if METRIC in metrics]
    pick = max if MODE == "max" else min
    return pick(scored, key=lambda pair: pair[1])[0] if scored else None


def prune(grid: tune.ResultGrid) -> None:
    """Delete each trial's checkpoints but its best and its latest."""
    for result in grid:
        kept = (best_checkpoint(result.best_checkpoints), result.checkpoint)
        keep = {checkpoint.path for checkpoint in kept if checkpoint}
        # the folder, not Tune's list: a killed driver's snapshot may miss its last ones
        for info in result.filesystem.get_file_info(FileSelector(result.path)):
            if info.base_name.startswith(CHECKPOINT_PREFIX) and info.path not in keep:
                result.filesystem.delete_dir(info.path)


class CheckpointPruner(tune.Callback):
    """Deletes a trial's checkpoints while the search runs, keeping what a retry, a resume
    and the registration need (see the module's docstring)."""

    def __init__(self) -> None:
        self._held: dict[str, list[tuple[tune.Checkpoint, dict[str, Any]]]] = {}
        self._named: dict[str, str] = {}  # trial id -> checkpoint the saved snapshot names
        # snapshots staged by the driver and not yet seen on the storage path, oldest first:
        # (hash of the snapshot, trial id -> its latest checkpoint then)
        self._staged: list[tuple[str, dict[str, str]]] = []
        self._staged_mtime = self._stored_mtime = 0
        self._checked = 0.0

    def on_checkpoint(self, iteration: int, trials: list, trial: Any,
                      checkpoint: tune.Checkpoint, **info: Any) -> None:
        # Tune has just recorded the result this checkpoint was reported with
        self._held.setdefault(trial.trial_id, []).append((checkpoint, dict(trial.last_result)))
        self._prune(trial.trial_id)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not trials:
            return
        storage = trials[0].storage
        # the newest: a resumed experiment stages a new file beside the killed driver's
        state = _newest(Path(storage.experiment_driver_staging_path))
        if state is None:
            return
        # every step: Tune stages its snapshot in this step, after this step's checkpoints
        # were registered, so what is registered now is what that snapshot names (a later
        # look would credit it with checkpoints registered after it)
        mtime = state.stat().st_mtime_ns
        if mtime != self._staged_mtime:
            self._staged_mtime = mtime
            latest = {t: held[-1][0].path for t, held in self._held.items()}
            self._staged.append((_digest(state.read_bytes()), latest))
            del self._staged[:-MAX_STAGED]  # copies lost in Tune's syncer are never matched
        if not self._staged or time.monotonic() - self._checked < CHECK_EVERY_S:
            return
        self._checked = time.monotonic()
        fs = storage.storage_filesystem
        path = f"{storage.experiment_fs_path}/{state.name}"
        stored = fs.get_file_info(path)
        if stored.type != FileType.File or stored.mtime_ns == self._stored_mtime:
            return
        self._stored_mtime = stored.mtime_ns
        with fs.open_input_stream(path) as stream:
            digest = _digest(stream.readall())
        # the storage path holds a snapshot only when its bytes are one the driver staged
        # (a copy under way, or one that began before the last staging, holds older bytes)
        for i, (staged_digest, latest) in enumerate(self._staged):
            if staged_digest == digest:
                self._named.update(latest)
                del self._staged[:i + 1]
                for trial_id in latest:
                    self._prune(trial_id)
                break

    def _prune(self, trial_id: str) -> None:
        held = self._held[trial_id]
        keep = {id(best_checkpoint(held)), id(held[-1][0])}
        named = self._named.get(trial_id)
        kept = []
        for checkpoint, metrics in held:
            if id(checkpoint) in keep or checkpoint.path == named:
                kept.append((checkpoint, metrics))
            else:
                checkpoint.filesystem.delete_dir(checkpoint.path)
        self._held[trial_id] = kept


def _newest(folder: Path) -> Path | None:
    states = sorted(folder.glob(STATE_GLOB), key=lambda p: p.stat().st_mtime_ns)
    return states[-1] if states else None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
