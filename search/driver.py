"""One search, start to end: data ready, Ray Tune + Optuna + ASHA run the trials, MLflow gets
the parent run, the results table, and the best model evaluated on held-out data and
registered. Called by `search.run`; everything here happens in the driver process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
import ray
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray import tune

from search.checkpoints import CheckpointPruner, kept_checkpoint, prune
from search.console import LOG_FILE, say, silenced, to_log
from search.evaluation import curves_figure
from search.folder import STUDY_NAME, ResumeError, SearchFolder
from search.objective import METRIC
from search.progress import ProgressCallback
from search.registration import evaluate_and_register
from search.results import all_failed, best_trial, records_from_grid, results_table
from search.sampling import DefineByRun
from search.searcher import (
    EpochBudget,
    PruningOptunaSearch,
    RecordingASHA,
    fail_orphans,
    pruned_trial_ids,
    tpe_startup_trials,
)
from search.server import check_server
from search.snapshots import SnapshotKeeper, mend
from search.space import Choice, Fixed, Space, changes, describe
from search.study_views import param_importances, study_figures
from search.summary import Outcome
from search.tracking import (
    RESULTS_PATH,
    SEARCH_FOLDER,
    STOPPED,
    log_figure,
    mend_trial_runs,
    start_parent_run,
)
from search.trainable import run_trial
from search.trial_logger import TrialRunLogger
from trainables.data import DataError, Listing, list_images
from trainables.digits import write_digits
from trainables.files import shown
from trainables.images import load_arrays
from trainables.resources import freeze_imports


@dataclass(frozen=True)
class Options:
    tracking_uri: str
    storage_path: Path
    address: str | None = None
    epoch_budget: int | None = None  # end the search after this many epochs in all
    resume: bool = False  # go on with the newest search of the space under storage_path


def prepare_data(space: Space) -> Listing:
    """Write the bundled data if the space asks for it, list the splits, and decode every
    split once at each image size the space can draw (trials then read the shared cache).
    A class with no readable image in a split is a `DataError` naming it."""
    if space.data.generate == "digits":
        write_digits(space.data.root)
    listing = list_images(space.data, space.seed)
    param = space.params["image_size"]
    sizes = [param.value] if isinstance(param, Fixed) else \
        list(param.choices) if isinstance(param, Choice) else []  # ranges: decoded on demand
    skipped: set[str] = set()
    for size in sizes:
        for name, split in listing.splits.items():
            arrays = load_arrays(split, size, space.data.color_mode, space.data.cache_dir)
            skipped.update(arrays.skipped)
            for i, cls in enumerate(listing.classes):
                if not np.any(arrays.labels == i):
                    files = [f for f, label in zip(split.files, split.labels, strict=True)
                             if label == i]
                    raise DataError(f"class {cls!r} has no readable image in the {name} split: "
                                    f"none of its {len(files)} files could be decoded, such as "
                                    f"{shown(files[0])}")
    if skipped:
        say(f"skipped {len(skipped)} unreadable images, for example {shown(min(skipped))}")
    return listing


def _ray_init(address: str | None) -> None:
    """Start Ray, or connect to `address`, unless a Ray is already up; then SIGTERM and
    SIGHUP stop the search as Ctrl-C does. Workers' output stays out of the terminal: each
    trial writes to the search's log (`search.trainable`), the rest to Ray's session logs."""
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    if threading.current_thread() is threading.main_thread():
        # after ray.init, whose own SIGTERM handler exits at once
        for stop in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(stop, _stop_as_ctrl_c)


def _stop_as_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP (a scheduler's stop, a lost SSH session) stop the search as Ctrl-C
    does: Tune's SIGINT handler saves its state and ends the part (then `SearchStopped`);
    outside a part, Python raises KeyboardInterrupt."""
    signal.raise_signal(signal.SIGINT)


class SearchStopped(KeyboardInterrupt):
    """The search was told to stop (Ctrl-C, SIGTERM, SIGHUP) before its trials ended: Tune
    saved its state, and `--resume` finishes it."""


def run_search(space: Space, options: Options) -> Outcome:
    """Run the search `space` describes (or resume and extend the last one) and record it in
    MLflow. Trials that fail are recorded as failed; the search goes on without them (and
    its parent run ends FAILED if every trial failed). One driver runs a search at a time
    (`SearchFolder.lock`); a search stopped early raises `SearchStopped`, its runs KILLED."""
    freeze_imports()
    check_server(options.tracking_uri)
    listing = prepare_data(space)
    mlflow.set_tracking_uri(options.tracking_uri)
    with silenced():  # MLflow's lines as it makes a new store
        client = MlflowClient()
    storage = options.storage_path.resolve()
    folder = _resumed_folder(client, storage, space) if options.resume else \
        _new_folder(client, storage, space, listing, options.tracking_uri)
    parent = folder.parent_run_id
    try:
        with to_log(folder.path / LOG_FILE):
            return _search(space, listing, options, folder, client)
    except BaseException as exc:
        with contextlib.suppress(MlflowException):  # the server may be what failed
            if isinstance(exc, KeyboardInterrupt):  # SearchStopped included
                # its running trials' runs are KILLED by TrialRunLogger as the part ends
                client.set_tag(parent, STOPPED, "run the search again with --resume")
                client.set_terminated(parent, "KILLED")
            else:
                client.set_terminated(parent, "FAILED")
        raise
    finally:
        folder.unlock()


def _search(space: Space, listing: Listing, options: Options, folder: SearchFolder,
            client: MlflowClient) -> Outcome:
    """The search in its folder: run its parts, then record the results and register the
    best model."""
    parent = folder.parent_run_id
    _ray_init(options.address)
    done = _run_parts(space, listing, options, folder)
    study = folder.load_study()
    pruned = pruned_trial_ids(study)
    pairs = [(record, result) for grid in done
             for record, result in zip(records_from_grid(grid, pruned), grid, strict=True)]
    records = [record for record, _ in pairs]
    fail_orphans(study, {record.trial_id for record in records})
    mended = mend_trial_runs(client, parent, records)
    if mended:
        say(f"wrote what MLflow had missed of {mended} trial(s), from Ray's results")
    table = results_table(records)
    table.to_parquet(folder.results_path, index=False)
    client.set_tag(parent, RESULTS_PATH, str(folder.results_path))
    _log_overview(client, parent, table, records, folder.results_path)
    _log_study(client, parent, study)
    results = {record.trial_id: result for record, result in pairs}
    # a trial cut short by the epoch budget may have no checkpoint to evaluate
    best = best_trial(table, among={t for t, result in results.items()
                                    if kept_checkpoint(result) is not None})
    accuracy, evaluated_on, model_uri = None, "", None
    if best is not None:
        accuracy, evaluated_on, model_uri = evaluate_and_register(
            space, listing, results[best["trial_id"]], best["trial_id"], parent)
    client.set_terminated(parent, "FAILED" if all_failed(table) else "FINISHED")
    return Outcome(space.name, table, str(folder.results_path), parent, best, accuracy,
                   evaluated_on, model_uri)


def _new_folder(client: MlflowClient, storage: Path, space: Space, listing: Listing,
                tracking_uri: str) -> SearchFolder:
    """Make and lock a new search's folder, open its parent run, and write its index."""
    folder = SearchFolder.create(storage, space.name, describe(space))
    s = space.search
    try:
        parent = start_parent_run(client, space.name, folder.path.name, {
            "space_file": str(space.source), "seed": space.seed,
            "num_samples": s.num_samples, "sampler": s.sampler,
            "asha_max_epochs": s.asha.max_epochs, "asha_grace_period": s.asha.grace_period,
            "asha_reduction_factor": s.asha.reduction_factor,
            "cpu_per_trial": s.resources.cpu, "gpu_per_trial": s.resources.gpu,
            "classes": ",".join(listing.classes),
        })
    except BaseException:
        shutil.rmtree(folder.path)  # nothing half-made left behind
        raise
    client.log_artifact(parent, str(space.source))
    folder.parent_run_id, folder.tracking_uri = parent, tracking_uri
    folder.save()
    client.set_tag(parent, SEARCH_FOLDER, str(folder.path))
    return folder


def _resumed_folder(client: MlflowClient, storage: Path, space: Space) -> SearchFolder:
    """The newest search of the space, locked by this driver, its parent run reopened. A
    search whose space changed since it began is not resumed."""
    folder = SearchFolder.latest(storage, space.name)
    changed = changes(folder.space_values, describe(space)) if folder.space_values else []
    if changed:
        raise ResumeError(f"the space changed since the search in {folder.path} began, so it "
                          f"cannot be resumed (run without --resume for a new search): "
                          f"{'; '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}")
    folder.lock()
    folder.clear_stale_lock()  # only this driver resumes it
    try:
        client.update_run(folder.parent_run_id, status="RUNNING")
    except MlflowException:
        folder.unlock()
        raise ResumeError(f"the parent run {folder.parent_run_id} of {folder.path} is not in "
                          f"this tracking store; the search used --tracking-uri "
                          f"{folder.tracking_uri}") from None
    say(f"resuming {folder.path} ({len(folder.parts)} part(s) so far)")
    return folder


def _run_parts(space: Space, listing: Listing, options: Options,
               folder: SearchFolder) -> list[Any]:
    """Every part's `ResultGrid`: earlier parts read back, the last one finished if the driver
    was killed during it, then a new part with the trials still to run (all of them, for a
    new search; the difference, when --num-samples raises a finished search's count)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # its reporter prints a banner at verbose=0
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, space=space, listing=listing, search_folder=folder.path),
        {"cpu": space.search.resources.cpu, "gpu": space.search.resources.gpu})
    grids = []
    for part in folder.parts:
        path = str(folder.path / part)
        mended = mend(folder.path / part)
        if mended:
            say(mended)
        if not tune.Tuner.can_restore(path):
            continue  # killed before Tune wrote its first state: no trial ran
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True)
        grids.append(_fit(tuner, options.epoch_budget) if part == folder.parts[-1]
                     else tuner.get_results())
    todo = space.search.num_samples - sum(len(grid) for grid in grids)
    if todo > 0:
        grids.append(_fit(_new_part(space, options, folder, trainable, todo, first=not grids),
                          options.epoch_budget))
    return grids


def _fit(tuner: tune.Tuner, epoch_budget: int | None) -> tune.ResultGrid:
    """Run a Tune part to its end, then keep each trial's best checkpoint alone."""
    grid = tuner.fit()
    # told to stop (its SIGINT handler), Tune saves its state, stops the running trials and
    # returns: their last results, unlike an ended trial's, are not `done`. So does a spent
    # epoch budget (one report per epoch), which is no stop.
    cut = any(result.error is None and not result.metrics.get("done") for result in grid)
    spent = sum(int(result.metrics.get("training_iteration", 0)) for result in grid)
    if cut and not (epoch_budget and spent >= epoch_budget):
        raise SearchStopped("the search was stopped before its trials ended")
    prune(grid)
    return grid


def _new_part(space: Space, options: Options, folder: SearchFolder, trainable: Any,
              num_samples: int, first: bool) -> tune.Tuner:
    """A Tune experiment of `num_samples` trials in the search's folder, its searcher on the
    search's Optuna study. The first part runs the baselines first."""
    s = space.search
    part = folder.add_part()
    seed = space.seed + len(folder.parts) - 1  # an extension must not redraw the same points
    scheduler = RecordingASHA(s.asha)
    startup = s.startup_trials or tpe_startup_trials(s.num_samples)
    sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
               if s.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=seed))
    searcher = PruningOptunaSearch(
        scheduler, space=DefineByRun(space), sampler=sampler,
        points_to_evaluate=(space.baseline_points() or None) if first else None,
        storage=folder.study_storage(), study_name=STUDY_NAME)
    logger = TrialRunLogger(options.tracking_uri, space.name, folder.parent_run_id,
                            scheduler.stopped)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=num_samples,
                                    max_concurrent_trials=s.max_concurrent,
                                    trial_dirname_creator=trial_folder_name,
                                    # one worker process runs trial after trial: Python,
                                    # TensorFlow and the data are loaded once per worker
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=part, storage_path=str(folder.path),
            stop=EpochBudget(options.epoch_budget) if options.epoch_budget else None,
            # our progress line replaces Tune's status tables; the pruner keeps checkpoints
            # down to what resuming and registering need (search/checkpoints.py); the keeper
            # keeps a whole copy of Tune's snapshot (search/snapshots.py)
            callbacks=[logger, ProgressCallback(num_samples, scheduler.stopped),
                       CheckpointPruner(), SnapshotKeeper()], verbose=0,
            # a trial whose worker died is retried from its latest checkpoint
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
        ),
    )


def trial_folder_name(trial: Any) -> str:
    """A trial's folder is its id: Tune's default name spells out its config (200
    characters), in every path Tune prints and Ray writes."""
    return str(trial.trial_id)


def _log_overview(client: MlflowClient, parent: str, table: pd.DataFrame, records: list,
                  results_path: Path) -> None:
    client.log_artifact(parent, str(results_path))
    with tempfile.TemporaryDirectory() as folder:
        csv = Path(folder) / "results.csv"
        table.to_csv(csv, index=False)
        client.log_artifact(parent, str(csv))
    histories = {r.trial_id + (f" ({r.config['baseline']})" if r.config.get("baseline") else ""):
                 r.history for r in records}
    log_figure(client, parent, curves_figure(histories, METRIC), "val_accuracy_curves.png")
    counts = table["status"].value_counts()
    for status in ("completed", "stopped", "failed"):
        client.log_metric(parent, f"trials_{status}", float(counts.get(status, 0)))
    if best_trial(table) is not None:
        client.log_metric(parent, "best_val_accuracy", float(table["best_val_accuracy"].max()))


def _log_study(client: MlflowClient, parent: str, study: optuna.Study) -> None:
    """Optuna's importances (as JSON and a chart) and its views, on the parent run."""
    importances = param_importances(study)
    if importances:
        client.log_dict(parent, importances, "optuna_param_importances.json")
    for name, figure in study_figures(study).items():
        log_figure(client, parent, figure, name)
