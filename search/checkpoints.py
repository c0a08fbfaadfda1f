"""Which of a trial's checkpoints a search keeps, while it runs and once it ends (which
epochs it checkpoints is `search.cadence`).

A running trial needs its latest checkpoint, with the optimizer's state, to go on after its
worker dies, and its best by `val_accuracy` (the model the search may register). A driver
killed at any moment resumes each trial from the latest checkpoint that Tune's last saved
experiment state names, which may be older than the latest Tune holds in memory. So the
pruner (`search.pruner`) reads that saved state (`search.saved_state`) whenever it changes,
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
import math
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from pyarrow.fs import FileSelector, FileSystem, FileType
from ray import tune
from ray.tune.experiment import Trial

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
    return Kept(frozenset([folder_name(latest)] if latest and not final else []),
                frozenset([folder_name(best)] if best else []), final)


def view(final: bool, manager: Any) -> Kept:
    """What a trial needs as one of Tune's checkpoint managers (in memory or as saved) has it."""
    latest = manager.latest_checkpoint_result
    return kept(final, latest.checkpoint if latest else None, pairs(manager))


def pairs(manager: Any) -> Checkpoints:
    """The (checkpoint, metrics) pairs one of Tune's checkpoint managers holds."""
    return [(r.checkpoint, r.metrics) for r in manager.best_checkpoint_results]


def thin(fs: FileSystem, trial_path: str, registered: list[str], views: list[Kept],
         done: Container[str] = ()) -> set[str]:
    """Delete the `registered` checkpoints of a trial that no view keeps (all of them, given
    no view), and the optimizer's state of those kept only to register; return the paths
    deleted. Paths in `done` were deleted before and are not asked of the storage again.
    Folders Tune has not registered are left alone: one may be being written."""
    resumable = frozenset().union(*(each.resumable for each in views))
    registrable = frozenset().union(*(each.registrable for each in views))
    deleted = set()
    for name in registered:
        folder = f"{trial_path}/{name}"
        if name not in resumable | registrable:
            if folder not in done:
                _delete(fs.delete_dir, folder)
                deleted.add(folder)
        elif name not in resumable:
            optimizer = f"{folder}/{OPTIMIZER_FILE}"
            if optimizer not in done:
                _delete(fs.delete_file, optimizer)
                deleted.add(optimizer)
    return deleted


def _delete(delete: Any, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # gone already (an earlier part's prune)
        delete(path)


def folder_name(checkpoint: Any) -> str:
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
             [Kept(frozenset(), frozenset([folder_name(best)] if best else []))])
