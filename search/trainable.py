"""The one adapter between Ray Tune and the Keras trial code in `trainables/`.

It turns Ray's flat config into a `TrialConfig`, sizes TensorFlow to the trial's resources,
resumes from the trial's last checkpoint if Ray restarted it, and reports every epoch through
`ray.tune.report`, with what training changed as a checkpoint when one is due
(`search.cadence.Cadence`; `trainables.checkpoint`: the trained part of the model and its
optimizer's state, never a frozen backbone again);
`whole_model` joins it to the frozen part the config rebuilds. A trial that runs out of
memory fails with a `TrialOutOfMemory` that says so; the search goes on. Only `ray.tune` is
imported: the `ray.train` reporting functions raise inside Tune. Tune runs `run_trial` through
`search.worker`, which imports this module on a worker's first trial.

Tune retries every failed trial (`max_failures`), but only a dead worker is worth it: an
error a retry cannot fix (out of memory, a loss that is not finite, a model that cannot be
built) is written to `<search folder>/fatal_errors/<trial id>` (shared storage on a cluster,
as Tune's is), and a retry that finds it fails at once, naming it.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import ray
import tensorflow as tf
from ray import tune

from search.cadence import Cadence
from search.console import LOG_FILE, first_line, to_log
from search.objective import METRIC
from search.space import Space
from trainables import checkpoint as saved
from trainables.config import TrialConfig
from trainables.data import Listing
from trainables.images import load_arrays
from trainables.models import Parts, frozen_part, join
from trainables.resources import configure_tensorflow, freeze_imports, fresh_session
from trainables.train import TrialData, TrialFailed, train


class TrialOutOfMemory(RuntimeError):
    """The trial's model or batches did not fit in the memory it had."""


FATAL_ERRORS = "fatal_errors"  # in the search's folder: why a trial failed, by trial id


def load_trial_data(space: Space, listing: Listing, config: TrialConfig) -> TrialData:
    """Train and validation arrays at the trial's image size, from the node's shared cache."""
    def split(name: str) -> Any:
        return load_arrays(listing.splits[name], config.image_size, space.data.color_mode,
                           space.data.cache_dir)
    return TrialData(split("train"), split("validation"), len(listing.classes))


def whole_model(folder: Path, config: TrialConfig, channels: int) -> keras.Model:
    """The whole classifier on raw pixels from a trial's checkpoint folder: its trained part
    joined to the frozen part that `config` rebuilds."""
    return join(Parts(frozen_part(config, channels), saved.load_trained(folder)))


def run_trial(params: dict[str, Any], *, space: Space, listing: Listing,
              search_folder: Path, started_at: float) -> None:
    """Train one trial (`_run`), what it prints and logs going to the search's log, not the
    terminal. `started_at`: when Tune began it (wall clock), before `search.worker` imported
    this module."""
    with to_log(search_folder / LOG_FILE):
        _run(params, space, listing, search_folder, started_at)


def _run(params: dict[str, Any], space: Space, listing: Listing, search_folder: Path,
         started_at: float) -> None:
    """Train one trial, reporting every epoch and checkpointing when one is due.

    Besides the epoch's metrics each report carries what the benchmarks account with:
    `started_at` (wall clock when Tune began the trial), `checkpoint_s` (saving the model; 0
    when the epoch was not checkpointed) and `peak_rss_mb` (of this worker process, which may
    have run trials before); and the Ray node it ran on (`node_id`) with the CPUs it held
    there (`cpus`)."""
    fatal = search_folder / FATAL_ERRORS / tune.get_context().get_trial_id()
    if fatal.exists():
        raise TrialFailed(f"not retried, as a retry cannot fix it: {fatal.read_text()}")
    freeze_imports()
    node_id = ray.get_runtime_context().get_node_id()
    # the trial's own CPUs: more than the space's share once ended trials left them idle
    # (search.growth)
    cpus = tune.get_context().get_trial_resources().required_resources["CPU"]
    configure_tensorflow(cpus, space.search.resources.gpu)
    fresh_session()  # a reused worker must not carry the last trial's graphs
    config = TrialConfig.from_params(params)
    trained, initial_epoch = None, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trained, initial_epoch = saved.resume(Path(folder), config)

    cadence = Cadence(space.search.checkpoint_every_s)

    def report(metrics: dict[str, float | str], trained: keras.Model) -> None:
        timings = {"started_at": started_at, "node_id": node_id, "cpus": cpus,
                   "checkpoint_s": 0.0,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if not cadence.due(float(metrics[METRIC]), time.monotonic()):
            tune.report({**metrics, **timings})
            return
        with tempfile.TemporaryDirectory() as folder:
            saving = time.perf_counter()
            saved.save(trained, Path(folder), int(metrics["epoch"]))
            timings["checkpoint_s"] = time.perf_counter() - saving
            tune.report({**metrics, **timings},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        train(config, load_trial_data(space, listing, config), report,
              epochs=space.search.asha.epochs_for(config.epochs), trained=trained,
              initial_epoch=initial_epoch,
              feature_cache=space.search.feature_cache)
    except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
        error = TrialOutOfMemory(
            f"out of memory (batch_size {config.batch_size}, image_size {config.image_size}): "
            f"{first_line(exc)}")
        _record(fatal, str(error))
        raise error from exc
    except (TrialFailed, ValueError) as exc:  # a diverged loss; a model that cannot be built
        _record(fatal, str(exc).strip()[:1000])
        raise


def _record(fatal: Path, error: str) -> None:
    fatal.parent.mkdir(exist_ok=True)
    fatal.write_text(error)
