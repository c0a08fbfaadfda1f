"""The search's Ray Tune experiments, its "parts": each assembled (OptunaSearch on the search's
study, ASHA, the MLflow, progress, checkpoint and snapshot callbacks), run to its end, and
read back. The first part of a search runs its trials; a resumed one finishes the last part,
and an extended one adds a part. The trial is an argument: the Keras trial
(`search.worker.run_trial`) in a real search, a cheap stand-in where the subject is the
orchestration."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import optuna
from ray import tune

from search.budget import EpochBudget, spent
from search.checkpoints import prune
from search.console import say
from search.folder import STUDY_NAME, SearchFolder
from search.progress import ProgressCallback
from search.pruner import CheckpointPruner
from search.ray_start import node_cpus
from search.sampling import DefineByRun, cannot_build
from search.saved_state import unended
from search.searcher import PruningOptunaSearch, RecordingASHA
from search.snapshots import SnapshotKeeper, TrialResultLogger, mend
from search.space import Space, TrialResources
from search.tpe import RanTrialsTPE, tpe_startup_trials
from search.trial_logger import TrialRunLogger
from trainables.data import Listing

# a trial: `trainable(config, space=..., listing=..., search_folder=...)`, reporting each
# epoch with `tune.report`
Trainable = Callable[..., None]


class SearchStopped(KeyboardInterrupt):
    """The search was told to stop (Ctrl-C, SIGTERM, SIGHUP) before its trials ended: Tune
    saved its state, and `--resume` finishes it."""


def run_parts(space: Space, listing: Listing, folder: SearchFolder, trainable: Trainable,
              tracking_uri: str, epoch_budget: int | None,
              written: set[str]) -> list[tune.ResultGrid]:
    """Every part's `ResultGrid`: earlier parts read back, the last one finished if the driver
    was killed during it, then a new part with the trials still to run (all of them, for a
    new search; the difference, when --num-samples raises a finished search's count). Each
    trial is `trainable(config, space=, listing=, search_folder=)` on its share of a node.
    `written` gets the trials of the new part whose MLflow runs were written whole."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # its reporter prints a banner at verbose=0
    # Tune's own loggers would write each result three times, in the driver's loop: as JSON
    # (which its results are read back from: kept, in _new_part), CSV and TensorBoard
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    resources = space.search.trial_resources(node_cpus())  # `cpu: auto` on this Ray
    trial = tune.with_resources(tune.with_parameters(
        trainable, space=space, listing=listing, search_folder=folder.path),
        {"cpu": resources.cpu, "gpu": resources.gpu})
    grids = []
    for part in folder.parts:
        path = str(folder.path / part)
        mended = mend(folder.path / part)
        if mended:
            say(mended)
        if not tune.Tuner.can_restore(path):
            continue  # killed before Tune wrote its first state: no trial ran
        tuner = tune.Tuner.restore(path, trial, resume_unfinished=True)
        # a part an epoch budget ended runs no more (Tune ended its searcher): a larger
        # budget runs the trials it did not make in a new part
        grids.append(_fit(tuner, folder, part, epoch_budget)
                     if part == folder.parts[-1] and part not in folder.budget_ended
                     else tuner.get_results())
    todo = space.search.num_samples - sum(len(grid) for grid in grids)
    if todo > 0 and spent(folder.path, epoch_budget):
        say(f"the epoch budget ({epoch_budget}) is spent: the {todo} trial(s) still to run "
            f"are not run; a larger --epoch-budget runs them")
    elif todo > 0:
        tuner = _new_part(space, folder, trial, resources, todo, not grids, tracking_uri,
                          written)
        grids.append(_fit(tuner, folder, folder.parts[-1], epoch_budget))
    return grids


def _fit(tuner: tune.Tuner, folder: SearchFolder, part: str,
         epoch_budget: int | None) -> tune.ResultGrid:
    """Run the Tune part `part` of `folder` to its end, then keep each trial's best checkpoint
    alone. A part the epoch budget ended before all its trials is recorded so
    (`SearchFolder.budget_ended`)."""
    grid = tuner.fit()
    trials = folder.part_trials.get(part)  # None: a part made before the count was kept
    # told to stop (its SIGINT handler), Tune saves its state, stops the running trials and
    # returns: the state it saved has trials it left to run, or the part has fewer trials
    # than it was to make. (Their last results had told it before, not being `done`; but a
    # trial Tune had decided to stop as the stop came has a `done` result and runs again
    # when resumed, and that run may end without one: ASHA's decision kept in Tune's state
    # stops it. Either way the search took a stop for no stop, or the reverse.) So does a
    # spent epoch budget (one report per epoch), which is no stop.
    results = list(grid)  # type: ignore[call-overload]  # iterates by __getitem__
    left = unended(grid.experiment_path)  # None: unreadable, for resume to mend
    cut = (trials is not None and len(results) < trials) or left is None or bool(left)
    if cut and not spent(folder.path, epoch_budget):
        raise SearchStopped("the search was stopped before its trials ended")
    if cut:
        folder.budget_ended.append(part)
        folder.save()
    prune(grid)
    return grid


def _new_part(space: Space, folder: SearchFolder, trainable: Any, resources: TrialResources,
              num_samples: int, first: bool, tracking_uri: str,
              written: set[str]) -> tune.Tuner:
    """A Tune experiment of `num_samples` trials in the search's folder, its searcher on the
    search's Optuna study. The first part runs the baselines first."""
    s = space.search
    part = folder.add_part(num_samples)
    seed = space.seed + len(folder.parts) - 1  # an extension must not redraw the same points
    scheduler = RecordingASHA(s.asha, num_samples)
    startup = s.startup_trials or tpe_startup_trials(s.num_samples)
    sampler = (RanTrialsTPE(seed=seed, n_startup_trials=startup)
               if s.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed))
    searcher = PruningOptunaSearch(
        scheduler, cannot_build, space=DefineByRun(space), sampler=sampler,
        points_to_evaluate=(space.baseline_points() or None) if first else None,
        storage=folder.study_storage(), study_name=STUDY_NAME)
    logger = TrialRunLogger(tracking_uri, space.name, folder.parent_run_id,
                            scheduler.stopped, written)
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
            stop=EpochBudget(folder.path),
            # our progress line replaces Tune's status tables; the pruner keeps checkpoints
            # down to what resuming and registering need (search/checkpoints.py); the keeper
            # keeps a whole copy of Tune's snapshot, and each trial's results whole across
            # its restarts (search/snapshots.py)
            callbacks=[logger, ProgressCallback(num_samples, scheduler.stopped, s.asha,
                                                folder.path, str(resources)),
                       CheckpointPruner(), SnapshotKeeper(),
                       TrialResultLogger()],  # type: ignore[no-untyped-call]
            verbose=0,
            # a trial whose worker died is retried from its latest checkpoint
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
        ),
    )


def trial_folder_name(trial: Any) -> str:
    """A trial's folder is its id: Tune's default name spells out its config (200
    characters), in every path Tune prints and Ray writes."""
    return str(trial.trial_id)
