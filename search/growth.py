"""The last trials of a search given the CPUs that the trials before them left idle.

A trial trains on its share of a node (`search.resources`), TensorFlow's thread pools sized to
it as its worker process starts. Once every trial of a part has started, each trial that ends
leaves its share idle: in a search of `spaces/cats_dogs.yaml` on 2 cores, the last trial
trained alone on one core for 10 of the search's 15 minutes, while a step of its model ran 1.9x
faster on two. So, as Ray Tune's `ResourceChangingScheduler` does, such a trial is paused at
an epoch it checkpointed and restarted from that checkpoint with its even share of its node's
CPUs (that scheduler itself refuses the reused worker processes that short trials need:
`search.searcher.RecordingASHA` does it). A restart costs a new worker process (TensorFlow
imported, the model built and traced again, a few seconds), so only a trial with at least
`WORTH_S` of training left at its pace is restarted; a search of short trials never is.
"""

from __future__ import annotations

import math

WORTH_S = 60.0  # a trial restarted with more CPUs has at least this much training left


def grown_cpus(cpus: float, node_cpus: float, trials_on_node: int, epoch_s: float,
               epochs_left: int) -> int | None:
    """The CPUs to restart a trial with, holding `cpus` on a node of `node_cpus` where
    `trials_on_node` trials (it included) still train, its last epoch taking `epoch_s` and
    `epochs_left` still to come; None to leave it as it is."""
    share = math.floor(node_cpus / max(1, trials_on_node))
    if share <= cpus or epoch_s * epochs_left < WORTH_S:
        return None
    return share
