"""One search, start to end: data ready, Ray Tune + Optuna + ASHA run the trials, MLflow gets
the parent run, the results table, and the best model evaluated on held-out data and
registered. Called by `search.run`; everything here happens in the driver process."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import matplotlib.pyplot as plt
import mlflow
import optuna
import pandas as pd
import ray
from mlflow.tracking import MlflowClient
from ray import tune

from search.evaluation import confusion_figure, curves_figure, evaluate, predicted_classes
from search.objective import METRIC, MODE
from search.progress import ProgressCallback
from search.results import best_trial, records_from_grid, results_table
from search.sampling import DefineByRun
from search.searcher import EpochBudget, PruningOptunaSearch, RecordingASHA
from search.space import Choice, Fixed, Space
from search.study_views import param_importances, study_figures
from search.summary import Outcome
from search.tracking import TrialRunLogger, start_parent_run
from search.trainable import MODEL_FILE, run_trial
from trainables.config import TrialConfig
from trainables.data import Listing, list_images
from trainables.digits import write_digits
from trainables.images import load_arrays
from trainables.pipeline import make_dataset


@dataclass(frozen=True)
class Options:
    tracking_uri: str
    storage_path: Path
    address: str | None = None
    epoch_budget: int | None = None  # end the search after this many epochs in all


def prepare_data(space: Space) -> Listing:
    """Write the bundled data if the space asks for it, list the splits, and decode every
    split once at each image size the space can draw (trials then read the shared cache)."""
    if space.data.generate == "digits":
        write_digits(space.data.root)
    listing = list_images(space.data, space.seed)
    param = space.params["image_size"]
    sizes = [param.value] if isinstance(param, Fixed) else \
        list(param.choices) if isinstance(param, Choice) else []  # ranges: decoded on demand
    skipped: set[str] = set()
    for size in sizes:
        for split in listing.splits.values():
            skipped.update(load_arrays(split, size, space.data.color_mode,
                                       space.data.cache_dir).skipped)
    if skipped:
        print(f"skipped {len(skipped)} unreadable images, for example {min(skipped)}")
    return listing


def _ray_init(address: str | None) -> None:
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})


def run_search(space: Space, options: Options) -> Outcome:
    """Run the search `space` describes and record it in MLflow. Trials that fail are recorded
    as failed; the search goes on without them."""
    listing = prepare_data(space)
    mlflow.set_tracking_uri(options.tracking_uri)
    client = MlflowClient()
    run_name = f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    s = space.search
    parent = start_parent_run(client, space.name, run_name, {
        "space_file": str(space.source), "seed": space.seed, "num_samples": s.num_samples,
        "sampler": s.sampler, "asha_max_epochs": s.asha.max_epochs,
        "asha_grace_period": s.asha.grace_period,
        "asha_reduction_factor": s.asha.reduction_factor,
        "cpu_per_trial": s.resources.cpu, "gpu_per_trial": s.resources.gpu,
        "classes": ",".join(listing.classes),
    })
    client.log_artifact(parent, str(space.source))
    try:
        grid, scheduler, searcher, logger = _tune(space, listing, options, run_name, parent)
        records = records_from_grid(grid, scheduler.stopped)
        table = results_table(records)
        results_path = options.storage_path.resolve() / run_name / "results.parquet"
        table.to_parquet(results_path, index=False)
        client.set_tag(parent, "results_path", str(results_path))
        _log_overview(client, parent, table, records, results_path)
        _log_study(client, parent, searcher.study)
        results = {rec.trial_id: res for rec, res in zip(records, grid)}
        # a trial cut short by the epoch budget may have no checkpoint to evaluate
        best = best_trial(table[[_checkpoint(results[t]) is not None
                                 for t in table["trial_id"]]] if len(table) else table)
        accuracy, evaluated_on, model_uri = None, "", None
        if best is not None:
            accuracy, evaluated_on, model_uri = _evaluate_and_register(
                space, listing, results[best["trial_id"]], logger.run_ids[best["trial_id"]],
                parent)
        client.set_terminated(parent, "FINISHED")
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    return Outcome(space.name, table, str(results_path), parent, best, accuracy, evaluated_on,
                   model_uri)


def _tune(space: Space, listing: Listing, options: Options, run_name: str,
          parent: str) -> tuple[Any, RecordingASHA, PruningOptunaSearch, TrialRunLogger]:
    s = space.search
    scheduler = RecordingASHA(max_t=s.asha.max_epochs, grace_period=s.asha.grace_period,
                              reduction_factor=s.asha.reduction_factor)
    sampler = (optuna.samplers.TPESampler(seed=space.seed) if s.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=space.seed))
    searcher = PruningOptunaSearch(scheduler, space=DefineByRun(space), sampler=sampler,
                                   points_to_evaluate=space.baseline_points() or None)
    logger = TrialRunLogger(options.tracking_uri, space.name, parent, scheduler.stopped)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, space=space, listing=listing),
        {"cpu": s.resources.cpu, "gpu": s.resources.gpu})
    _ray_init(options.address)
    # Tune snapshots its state at every checkpoint because we keep one per trial; on small
    # data that is every second or two, and it warns each time (the snapshot takes ~10 ms)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=s.num_samples,
                                    max_concurrent_trials=s.max_concurrent,
                                    # one worker process runs trial after trial: Python,
                                    # TensorFlow and the data are loaded once per worker
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=run_name, storage_path=str(options.storage_path.resolve()),
            stop=EpochBudget(options.epoch_budget) if options.epoch_budget else None,
            # our progress line replaces Tune's status tables
            callbacks=[logger, ProgressCallback(s.num_samples, scheduler.stopped)], verbose=0,
            # keep each trial's best epoch (the model we keep) and its latest (to resume)
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE),
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    return tuner.fit(), scheduler, searcher, logger


def _log_overview(client: MlflowClient, parent: str, table: pd.DataFrame, records: list,
                  results_path: Path) -> None:
    client.log_artifact(parent, str(results_path))
    with tempfile.TemporaryDirectory() as folder:
        csv = Path(folder) / "results.csv"
        table.to_csv(csv, index=False)
        client.log_artifact(parent, str(csv))
    histories = {r.trial_id + (f" ({r.config['baseline']})" if r.config.get("baseline") else ""):
                 r.history for r in records}
    _log_figure(client, parent, curves_figure(histories, METRIC), "val_accuracy_curves.png")
    counts = table["status"].value_counts()
    for status in ("completed", "stopped", "failed"):
        client.log_metric(parent, f"trials_{status}", float(counts.get(status, 0)))
    if best_trial(table) is not None:
        client.log_metric(parent, "best_val_accuracy", float(table["best_val_accuracy"].max()))


def _checkpoint(result: Any) -> tune.Checkpoint | None:
    """The trial's best-`val_accuracy` checkpoint, else its latest, else None."""
    best = result.get_best_checkpoint(METRIC, MODE) if result.best_checkpoints else None
    return best or result.checkpoint


def _log_study(client: MlflowClient, parent: str, study: optuna.Study) -> None:
    """Optuna's importances (as JSON and a chart) and its views, on the parent run."""
    importances = param_importances(study)
    if importances:
        client.log_dict(parent, importances, "optuna_param_importances.json")
    for name, figure in study_figures(study).items():
        _log_figure(client, parent, figure, name)


def _log_figure(client: MlflowClient, run_id: str, figure: plt.Figure, name: str) -> None:
    client.log_figure(run_id, figure, name, save_kwargs={"bbox_inches": "tight"})
    plt.close(figure)  # pyplot keeps every figure alive until closed


def _evaluate_and_register(space: Space, listing: Listing, result: Any, run_id: str,
                           parent: str) -> tuple[float, str, str]:
    """Evaluate the best trial's best checkpoint on the test split (validation if the space
    has none), log it as an MLflow model on the trial's run and register a new version."""
    config = TrialConfig.from_params(result.config)
    with _checkpoint(result).as_directory() as folder:
        model = keras.models.load_model(Path(folder) / MODEL_FILE)
    split = "test" if "test" in listing.splits else "validation"
    arrays = load_arrays(listing.splits[split], config.image_size, space.data.color_mode,
                         space.data.cache_dir)
    data = make_dataset(arrays.images, arrays.labels, 64, training=False, seed=space.seed)
    predicted = predicted_classes(model.predict(data, verbose=0))
    test = evaluate(arrays.labels, predicted, listing.classes)
    client = MlflowClient()
    for target in (run_id, parent):
        client.log_metric(target, f"{split}_accuracy", test["accuracy"])
        client.log_dict(target, test["report"], f"{split}_classification_report.json")
        _log_figure(client, target, confusion_figure(arrays.labels, predicted, listing.classes,
                                                     f"{space.name}: {split} split"),
                    f"{split}_confusion_matrix.png")
    for cls in listing.classes:
        client.log_metric(run_id, f"{split}_f1_{cls}", test["report"][cls]["f1-score"])
    with mlflow.start_run(run_id=run_id):
        info = mlflow.tensorflow.log_model(
            model, name="model", registered_model_name=space.name,
            input_example=arrays.images[:2].astype("float32"),
            metadata={"classes": list(listing.classes), "image_size": config.image_size,
                      "color_mode": space.data.color_mode, "space": space.name,
                      "trial_config": json.dumps(result.config, default=str)})
    version = info.registered_model_version
    client.set_tag(parent, "registered_model", f"models:/{space.name}/{version}")
    return test["accuracy"], split, f"models:/{space.name}/{version}"
