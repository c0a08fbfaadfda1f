"""One search, start to end, each step a call into the module named for it: the data made ready
(`prepare`), the search's folder opened or resumed (`folder`) with its MLflow parent run
(`parent_run`), Ray started or joined (`ray_start`), the Tune parts run (`tuning`), the
results recorded (`results`, `tracking`, `parent_run`), and the best model evaluated and
registered (`registration`). Called by `search.run`; everything here happens in the driver
process."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.checkpoints import kept_checkpoint
from search.console import LOG_FILE, first_line, say, to_log
from search.folder import ResumeError, SearchFolder, StoppedBeforeSearch
from search.parent_run import open_parent_run, record_results
from search.prepare import prepare_data
from search.ray_start import init_ray
from search.registration import Register, evaluate_and_register
from search.results import (
    all_failed,
    best_trial,
    records_from_grid,
    results_table,
    trial_id_of,
)
from search.searcher import cut_trial_ids, end_open_trials, pruned_trial_ids, unbuildable_draws
from search.server import TrackingError, check_server
from search.space import Space, changes, describe
from search.summary import Outcome
from search.tracking import STOPPED, mend_trial_runs, open_store, tag_cut_runs
from search.tuning import Trainable, run_parts
from search.weights_check import check_weights_files
from search.worker import run_trial
from trainables.data import Listing
from trainables.resources import freeze_imports


@dataclass(frozen=True)
class Options:
    tracking_uri: str
    storage_path: Path
    address: str | None = None
    epoch_budget: int | None = None  # end the search after this many epochs in all
    resume: bool = False  # go on with the newest search of the space under storage_path


def run_search(space: Space, options: Options, trainable: Trainable = run_trial,
               register: Register | None = evaluate_and_register) -> Outcome:
    """Run the search `space` describes (or resume and extend the last one) and record it in
    MLflow. Trials that fail are recorded as failed; the search goes on without them (and
    its parent run ends FAILED if every trial failed). One driver runs a search at a time
    (`SearchFolder.lock`); a search stopped early raises `SearchStopped`, its runs KILLED
    (`StoppedBeforeSearch` before a new search's folder was made).
    Each trial is `trainable` (the Keras trial); `register` evaluates and registers the best
    trial's model (None: a trainable with no model, such as `search.curve_trial`'s)."""
    freeze_imports()
    try:
        check_server(options.tracking_uri)
        check_weights_files(space)
        listing = prepare_data(space)
        mlflow.set_tracking_uri(options.tracking_uri)
        # MLflow's client reads each run it ends back from the server only to print the
        # run's address: a request per trial, of the costliest kind (the run with its data)
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        client = open_store(options.tracking_uri)
        storage = options.storage_path.resolve()
        folder = _resumed_folder(client, storage, space) if options.resume else \
            _new_folder(client, storage, space, listing, options.tracking_uri)
    except KeyboardInterrupt as exc:
        if options.resume:
            raise  # the search is still there to resume
        raise StoppedBeforeSearch from exc
    parent = folder.parent_run_id
    try:
        with to_log(folder.path / LOG_FILE):
            return _search(space, listing, options, folder, client, trainable, register)
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
            client: MlflowClient, trainable: Trainable, register: Register | None) -> Outcome:
    """The search in its folder: run its parts, then record the results and register the
    best model."""
    parent = folder.parent_run_id
    # the budget of this run, not of the one that made a part: read by each part's stopper
    # and progress line as Tune starts or resumes it
    folder.epoch_budget = options.epoch_budget
    folder.save()
    init_ray(options.address)
    written: set[str] = set()  # trials whose MLflow runs need no check against Ray
    done = run_parts(space, listing, folder, trainable, options.tracking_uri,
                     options.epoch_budget, written)
    study = folder.load_study()
    ran = {trial_id_of(result) for grid in done for result in grid}  # type: ignore[attr-defined]
    tag_cut_runs(client, parent, end_open_trials(study, ran))
    pruned, cut = pruned_trial_ids(study), cut_trial_ids(study)
    pairs = [(record, result) for grid in done
             for record, result in zip(records_from_grid(grid, pruned, cut),
                                       grid, strict=True)]  # type: ignore[call-overload]
    records = [record for record, _ in pairs]
    redrawn = unbuildable_draws(study)
    if redrawn:
        say(f"{len(redrawn)} draw(s) of models that cannot be built were drawn again, not run "
            f"(such as: {redrawn[0]})")
    mended = mend_trial_runs(client, parent, records, written, options.resume)
    if mended:
        say(f"wrote what MLflow had missed of {mended} trial(s), from Ray's results")
    table = results_table(records)
    record_results(client, parent, table, records, folder.results_path, study,
                   len(redrawn))
    results = {record.trial_id: result for record, result in pairs}
    # a trial cut short by the epoch budget may have no checkpoint to evaluate
    best = best_trial(table, among={t for t, result in results.items()
                                    if kept_checkpoint(result) is not None})
    accuracy, evaluated_on, model_uri = None, "", None
    if best is not None and register is not None:
        accuracy, evaluated_on, model_uri = register(
            space, listing, results[best["trial_id"]], best["trial_id"], parent)
    client.set_terminated(parent, "FAILED" if all_failed(table) else "FINISHED")
    return Outcome(space.name, table, str(folder.results_path), parent, best, accuracy,
                   evaluated_on, model_uri)


def _new_folder(client: MlflowClient, storage: Path, space: Space, listing: Listing,
                tracking_uri: str) -> SearchFolder:
    """Make and lock a new search's folder, open its parent run, and write its index."""
    made = not storage.exists()
    folder = SearchFolder.create(storage, space.name, describe(space))
    try:
        folder.parent_run_id = open_parent_run(client, space, listing, folder.path)
    except BaseException as exc:
        shutil.rmtree(folder.path)  # nothing half-made left behind
        if made:
            with contextlib.suppress(OSError):  # unless another search put something there
                storage.rmdir()
        if isinstance(exc, MlflowException | OSError | ImportError):
            # MLflow's errors; its artifact store's: a folder it cannot write, a client
            # library (boto3 for s3://) not installed. Nothing ran: no --resume to advise
            raise TrackingError(f"MLflow cannot record the search in experiment "
                                f"'{space.name}' at {tracking_uri}: {first_line(exc)}") from None
        raise
    folder.tracking_uri = tracking_uri
    folder.save()
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
    try:
        client.update_run(folder.parent_run_id, status="RUNNING")
    except MlflowException:
        folder.unlock()
        raise ResumeError(f"the parent run {folder.parent_run_id} of {folder.path} is not in "
                          f"this tracking store; the search used --tracking-uri "
                          f"{folder.tracking_uri}") from None
    say(f"resuming {folder.path} ({len(folder.parts)} part(s) so far)")
    return folder


