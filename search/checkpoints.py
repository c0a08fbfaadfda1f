"""Which of a trial's checkpoints a search keeps: its best by `val_accuracy` (the model the
search registers) and its latest (where a resumed trial continues).

Tune could prune them itself (`CheckpointConfig(num_to_keep=1)`), but it deletes a trial's
older checkpoint as soon as a newer one is registered, before its experiment snapshot names
the newer one: a driver killed in between leaves a snapshot that names a deleted checkpoint,
and `--resume` cannot restore that trial. So Tune keeps every checkpoint of a running trial,
and `PruneEndedTrials` deletes the others once the trial has ended and nothing resumes it."""

from __future__ import annotations

from typing import Any

from pyarrow.fs import FileSelector
from ray import tune

from search.objective import METRIC, MODE

CHECKPOINT_PREFIX = "checkpoint_"  # how Tune names a trial's checkpoint folders


def best_checkpoint(checkpoints: list[tuple[tune.Checkpoint, dict[str, Any]]]
                    ) -> tune.Checkpoint | None:
    """Of (checkpoint, metrics) pairs, the checkpoint with the best METRIC, the first of
    equals; None if none has it."""
    scored = [(checkpoint, metrics[METRIC]) for checkpoint, metrics in checkpoints
              if METRIC in metrics]
    pick = max if MODE == "max" else min
    return pick(scored, key=lambda pair: pair[1])[0] if scored else None


class PruneEndedTrials(tune.Callback):
    """Deletes an ended trial's checkpoints but its best and its latest."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _prune(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _prune(trial)


def _prune(trial: Any) -> None:
    results = trial.run_metadata.checkpoint_manager.best_checkpoint_results
    best = best_checkpoint([(r.checkpoint, r.metrics) for r in results])
    keep = {checkpoint.path for checkpoint in (best, trial.checkpoint) if checkpoint}
    # the folder, not Tune's list: a killed driver's snapshot may miss its last checkpoints
    filesystem = trial.storage.storage_filesystem
    for info in filesystem.get_file_info(FileSelector(trial.storage.trial_fs_path)):
        if info.base_name.startswith(CHECKPOINT_PREFIX) and info.path not in keep:
            filesystem.delete_dir(info.path)
