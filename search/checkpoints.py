"""Which of a trial's checkpoints a search keeps: its best by `val_accuracy` (the model the
search registers) and its latest (where a resumed trial continues).

Tune resumes a killed driver's experiment from its last snapshot, which names each trial's
latest checkpoint as it was then; any checkpoint deleted after that snapshot makes the trial
impossible to resume. Tune's own pruning (`CheckpointConfig(num_to_keep=…)`) deletes an
older checkpoint as soon as a newer one is registered, before the next snapshot; pruning
when a trial ends has the same flaw for a trial that ended after the last snapshot. So Tune
keeps every checkpoint while its experiment runs, and `prune` runs once `fit` has returned,
when Tune's final snapshot names each trial's end."""

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


def prune(grid: tune.ResultGrid) -> None:
    """Delete each trial's checkpoints but its best and its latest."""
    for result in grid:
        kept = (best_checkpoint(result.best_checkpoints), result.checkpoint)
        keep = {checkpoint.path for checkpoint in kept if checkpoint}
        # the folder, not Tune's list: a killed driver's snapshot may miss its last ones
        for info in result.filesystem.get_file_info(FileSelector(result.path)):
            if info.base_name.startswith(CHECKPOINT_PREFIX) and info.path not in keep:
                result.filesystem.delete_dir(info.path)
