"""The search's product: the best trial's model evaluated on held-out data, logged on its
MLflow run and registered as a new version of the space's model, once per trial however often
a killed search is resumed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.tracking import MlflowClient

from search.checkpoints import kept_checkpoint
from search.evaluation import confusion_figure, evaluate, predicted_classes
from search.space import Space
from search.tracking import (
    BEST_TRIAL_ID,
    REGISTERED_MODEL,
    class_metric_names,
    log_figure,
    trial_run,
)
from search.trainable import whole_model
from trainables.config import TrialConfig
from trainables.data import Listing
from trainables.images import Arrays, load_arrays
from trainables.pipeline import make_dataset

# what registers a search's best model: (space, listing, the best trial's Tune result, its
# trial id, the parent run's id) -> (held-out accuracy, the split it was measured on, model URI)
Register = Callable[[Space, Listing, Any, str, str], tuple[float, str, str]]


def predict_split(model: keras.Model, space: Space, listing: Listing, split: str,
                  image_size: int) -> tuple[Arrays, np.ndarray]:
    """The split's images at `image_size` and the class `model` predicts for each."""
    arrays = load_arrays(listing.splits[split], image_size, space.data.color_mode,
                         space.data.cache_dir)
    data = make_dataset(arrays.images, arrays.labels, 64, training=False, seed=space.seed)
    return arrays, predicted_classes(model.predict(data, verbose=0))


def evaluate_and_register(space: Space, listing: Listing, result: Any, trial_id: str,
                          parent: str) -> tuple[float, str, str]:
    """Evaluate the best trial's best checkpoint on the test split (validation if the space
    has none), log it as an MLflow model on the trial's run and register a new version.
    A resumed search whose best trial has not changed keeps the version it registered, even
    one a driver killed before recording it on the parent run registered."""
    client = MlflowClient()
    split = "test" if "test" in listing.splits else "validation"
    earlier = client.get_run(parent).data
    if earlier.tags.get(BEST_TRIAL_ID) == trial_id and REGISTERED_MODEL in earlier.tags:
        return earlier.metrics[f"{split}_accuracy"], split, earlier.tags[REGISTERED_MODEL]
    run_id = trial_run(client, parent, trial_id)
    checkpoint = kept_checkpoint(result)
    # the driver has written every trial's run (mend_trial_runs) and registers only a trial
    # that kept a checkpoint
    assert run_id is not None and checkpoint is not None
    config = TrialConfig.from_params(result.config)
    with checkpoint.as_directory() as folder:
        model = whole_model(Path(folder), config, space.data.channels)
    arrays, predicted = predict_split(model, space, listing, split, config.image_size)
    test = evaluate(arrays.labels, predicted, listing.classes)
    for target in (run_id, parent):
        client.log_metric(target, f"{split}_accuracy", test["accuracy"])
        client.log_dict(target, test["report"], f"{split}_classification_report.json")
    log_figure(client, confusion_figure(arrays.labels, predicted, listing.classes,
                                        f"{space.name}: {split} split"),
               f"{split}_confusion_matrix.png", run_id, parent)
    names = class_metric_names(f"{split}_f1_", listing.classes)
    for name, cls in zip(names, listing.classes, strict=True):
        client.log_metric(run_id, name, test["report"][cls]["f1-score"])
    # a driver killed after registering, before tagging the parent, left this run's version
    registered = client.search_model_versions(f"name='{space.name}' and run_id='{run_id}'")
    version = max((int(v.version) for v in registered), default=None)
    if version is None:
        version = _log_model(client, run_id, model, space, listing, config, result,
                             arrays.images[:2].astype("float32"))
    client.set_tag(parent, REGISTERED_MODEL, f"models:/{space.name}/{version}")
    client.set_tag(parent, BEST_TRIAL_ID, trial_id)
    return test["accuracy"], split, f"models:/{space.name}/{version}"


def _log_model(client: MlflowClient, run_id: str, model: keras.Model, space: Space,
               listing: Listing, config: TrialConfig, result: Any, example: Any) -> int:
    """Log `model` on the trial's run and register it as a new version of the space's model.
    The run keeps its own status and end, whatever happens here."""
    trial_end = client.get_run(run_id).info
    # MLflow predicts on the input example without verbose=0: no progress bars in our output
    was_interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.tensorflow.log_model(
                model, name="model", registered_model_name=space.name, input_example=example,
                # stated, not inferred: inference reloads the model in a subprocess (6 s of a
                # 25-s search) and lists this unpublished package
                pip_requirements=[f"tensorflow=={tf.__version__}",
                                  f"keras=={keras.__version__}"],
                metadata={"classes": list(listing.classes), "image_size": config.image_size,
                          "color_mode": space.data.color_mode, "space": space.name,
                          "trial_config": json.dumps(result.config, default=str)})
    finally:
        if was_interactive:
            keras.config.enable_interactive_logging()
        # leaving start_run() stamps the run as ending now (FAILED, if logging failed): keep
        # the trial's own status and end (its duration)
        client.set_terminated(run_id, trial_end.status, end_time=trial_end.end_time)
    return int(info.registered_model_version)
