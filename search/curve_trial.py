"""A stand-in for the Keras trial where the subject is the orchestration: the driver, Optuna,
ASHA, MLflow, checkpoints, resume and faults, run in seconds instead of minutes.

Like Ray's own mock trainables it follows a learning curve: `val_accuracy = ceiling *
tanh(speed * epoch)`, with the ceiling and the speed fixed by the sampled params (a hash of
them), so a trial's curve is the same however often it runs and ASHA has slow and fast
starters to tell apart. As on a real validation set of n images it takes the values k/n, so
a curve that has flattened repeats its best, as a real trial's does. Each epoch it waits
`epoch_s`, then reports what the Keras trial reports (the four metrics, the epoch, the
node and the CPUs it holds there), with a checkpoint of a few bytes when the Keras trial's
rule (`Cadence`) has one due, and resumes from its checkpoint when Tune restarts it. It can
be told, by predicates on its params, to fail, to report a loss that is not finite, or to
die (its worker process killed, once: the retry resumes from its checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune

from search.cadence import Cadence
from search.space import Space
from trainables.data import Listing
from trainables.metrics import ON_PIXELS, TRAINED_ON

Params = dict[str, Any]
STATE = "curve.json"  # the checkpoint: the epoch the trial reached
FAULT_EPOCH = 2  # the epoch at which a trial told to fail, diverge or die does so


def curve_trial(epoch_s: float = 0.0, fail_if: Callable[[Params], bool] | None = None,
                nan_if: Callable[[Params], bool] | None = None,
                die_if: Callable[[Params], bool] | None = None) -> Callable[..., None]:
    """A Tune function trainable with `search.tuning`'s signature (the search folder is given
    and unused), whose epochs take `epoch_s` seconds."""

    def curve(params: Params, *, space: Space, listing: Listing, search_folder: Path) -> None:
        ceiling, speed = shape(params)
        done = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                done = json.loads((Path(folder) / STATE).read_text())["epoch"]
        resumed = checkpoint is not None
        node = ray.get_runtime_context().get_node_id()
        cpus = tune.get_context().get_trial_resources().required_resources["CPU"]
        images = max(len(listing.splits["validation"].files), 1)
        cadence = Cadence(space.search.checkpoint_every_s)
        for epoch in range(done + 1, space.search.asha.epochs_for(params["epochs"]) + 1):
            time.sleep(epoch_s)
            if epoch == FAULT_EPOCH:
                if fail_if and fail_if(params):
                    raise ValueError("the model cannot be built (told to fail)")
                if nan_if and nan_if(params):
                    raise FloatingPointError("the loss is not finite (told to diverge)")
                if die_if and die_if(params) and not resumed:
                    os._exit(1)  # as a killed worker does: no exception, no cleanup
            accuracy = round(ceiling * math.tanh(speed * epoch) * images) / images
            metrics = {"epoch": epoch, "val_accuracy": accuracy, "accuracy": accuracy,
                       "val_loss": 1 - accuracy, "loss": 1 - accuracy, TRAINED_ON: ON_PIXELS,
                       "node_id": node, "cpus": cpus}
            if not cadence.due(accuracy, time.monotonic()):
                tune.report(metrics)
                continue
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / STATE).write_text(json.dumps({"epoch": epoch}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    return curve


def shape(params: Params) -> tuple[float, float]:
    """The curve's ceiling in [0.5, 0.99] and speed in [0.1, 1], fixed by the params."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).digest()
    a, b = (int.from_bytes(digest[i:i + 4], "big") / 2**32 for i in (0, 4))
    return 0.5 + 0.49 * a, 0.1 + 0.9 * b
