"""Which epochs a running trial checkpoints: at each new best `val_accuracy` (the model the
search may register), otherwise once `search.checkpoint_every_s` has passed since its last.
On a GPU a frozen VGG16's head trains an epoch on features in 0.02 s and writes its 74 MB
checkpoint in 0.18 s (README, "On a GPU"), so a checkpoint each epoch would be most of the
trial. Which of those checkpoints the search keeps is `search.checkpoints`.

A module of its own, free of Keras: the trials import it, the curve trial's workers among them,
which need no TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Cadence:
    """When a running trial checkpoints: at an epoch whose METRIC beats every earlier one
    (equals are not saved again: `best_checkpoint` keeps the first of equals), else once
    `every_s` seconds have passed since its last checkpoint: what a retry after its worker
    died trains again. `every_s` 0: every epoch. A resumed trial starts a new cadence, so its
    first epoch is saved."""
    every_s: float
    best: float = -math.inf
    saved_at: float = -math.inf

    def due(self, score: float, now: float) -> bool:
        """Whether the epoch that scored `score`, ending at `now` (seconds), is checkpointed."""
        due = score > self.best or now - self.saved_at >= self.every_s
        self.best = max(self.best, score)
        if due:
            self.saved_at = now
        return due
