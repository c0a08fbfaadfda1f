"""The Tune callback that keeps each trial's checkpoints down to what resuming and registering
need while a search runs: what `search.checkpoints` says a trial keeps, as Tune holds it in
memory and as each experiment state it saved (`search.saved_state`) names it."""

from __future__ import annotations

import posixpath
import time
from typing import Any, NamedTuple

from ray import tune
from ray.tune.experiment import Trial

from search.checkpoints import FINAL, Kept, beaten, best_score, folder_name, pairs, thin, view
from search.saved_state import Keeps, SavedState, SavedViews, written_since


class CheckpointPruner(tune.Callback):
    """Keeps each trial's checkpoints down to what resuming and registering need (see
    `search.checkpoints`), acting whenever a trial checkpoints or ends and whenever Tune saves
    its experiment state.

    Tune saves the state in two steps: the driver writes it to a staging folder, then a
    background thread copies it to the storage path, where a resumed search reads it. A copy
    under way may carry any state staged since the last one that landed, so the pruner keeps
    what each of those names too, until the storage path holds a later one."""

    def __init__(self) -> None:
        self._since = time.time_ns()  # when this Tune began (`setup`)
        self._states: tuple[SavedState, SavedState] | None = None  # staging's, storage path's
        self._landed: Keeps = {}  # what the state on the storage path keeps
        self._staged: list[Keeps] = []  # what states staged since keep, oldest first
        self._changed: set[Trial] = set()  # trials that checkpointed or ended since
        self._deleted: set[str] = set()  # paths deleted already, not to ask the storage again
        self._seen: dict[str, Seen] = {}  # by trial id, until it checkpoints or ends again
        self._thinned: dict[str, tuple[Any, ...]] = {}  # by trial id: what it was thinned by

    def setup(self, *args: Any, **info: Any) -> None:
        """Tune begins (a resumed part too, with this callback unpickled): the state files
        written in its staging folder from now on are its own."""
        self._since = time.time_ns()
        self._states = None
        self._seen, self._thinned = {}, {}

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
            for state in self._states or ():
                state.forget()  # the final state may keep a file's stamp: read it anyway
            self._prune(trials)

    def _prune(self, trials: list[Trial]) -> None:
        storage = trials[0].storage
        assert storage is not None  # Tune gives every trial its storage before it starts
        if self._states is None:
            views = SavedViews()
            staging = SavedState(storage.experiment_driver_staging_path, None,
                                 written_since(self._since), views)
            # the storage path's own file is a copy of the staging folder's: known by its
            # name, whatever the storage's clock
            self._states = (staging, SavedState(
                storage.experiment_fs_path, storage.storage_filesystem,
                lambda path: staging.file.own is not None
                and posixpath.basename(path) == posixpath.basename(staging.file.own), views))
        staged, landed = (state.read() for state in self._states)
        if staged is False or landed is False:
            return  # a state file half-written: act once it can be read
        if staged is not None and (not self._staged or staged != self._staged[-1]):
            self._staged.append(staged)
        if landed is not None:
            self._landed = landed
            # the storage path's state is a copy of one staged before: copies land in order,
            # so those staged before it will not land (the first that keeps the same, to be
            # safe where two states keep the same)
            if landed in self._staged:
                self._staged = self._staged[self._staged.index(landed):]
        read = staged is not None or landed is not None
        for trial in self._changed:
            self._seen.pop(trial.trial_id, None)
        changed = trials if read else list(self._changed)
        self._changed.clear()
        saved = [self._landed, *self._staged]
        dropped = self._beaten(trials) if read else set()
        # a read goes over every trial, but thins only those whose checkpoints or views
        # differ from when they were thinned last: the rest would delete nothing new
        for trial in changed:
            seen = self._see(trial)
            if seen is None:
                continue
            needs = [] if trial.trial_id in dropped else \
                [seen.in_memory] + [keeps[trial.trial_id] for keeps in saved
                                    if trial.trial_id in keeps]
            thinned = (seen.registered, *needs)
            if self._thinned.get(trial.trial_id) == thinned:
                continue
            assert trial.storage is not None  # as `_see` found it
            self._deleted |= thin(trial.storage.storage_filesystem, trial.storage.trial_fs_path,
                                  list(seen.registered), needs, self._deleted)
            self._thinned[trial.trial_id] = thinned

    def _see(self, trial: Trial) -> Seen | None:
        """What Tune holds in memory of a trial's checkpoints, as last seen: seen again only
        after it checkpoints or ends; None while it has none."""
        seen = self._seen.get(trial.trial_id)
        if seen is None:
            manager = trial.run_metadata.checkpoint_manager
            if not manager or not manager.best_checkpoint_results or trial.storage is None:
                return None
            seen = self._seen[trial.trial_id] = Seen(
                tuple(folder_name(r.checkpoint) for r in manager.best_checkpoint_results),
                view(trial.status == FINAL, manager), best_score(pairs(manager)))
        return seen

    def _beaten(self, trials: list[Trial]) -> set[str]:
        """The finished trials another beats, of those that ended in memory and in the state
        on the storage path (a resumed search runs neither again, and later states keep them
        ended): their checkpoints go. The state that lands later can only add to them."""
        scores = {}
        for trial in trials:
            saved = self._landed.get(trial.trial_id)
            if trial.status == FINAL and saved is not None and saved.ended:
                seen = self._see(trial)
                if seen is not None:
                    scores[trial.trial_id] = seen.best
        return beaten(scores)


class Seen(NamedTuple):
    """A trial's checkpoints as Tune holds them in memory: their folders, what the trial
    needs of them, and its best score."""
    registered: tuple[str, ...]
    in_memory: Kept
    best: float
