"""MLflow, written from the driver only: one experiment per space, a parent run per search,
a child run per trial (logged while trials run by `search/trial_logger.py`, Ray's callback).

A trial keeps one run however often it starts: retried after its worker died, or resumed
after the driver was killed, it finds its run by the `trial_id` tag and continues it. No Ray
here: this is tested on a SQLite store alone."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD
from mlflow.tracking import MlflowClient

from search.console import first_line, silenced
from search.objective import METRIC
from search.results import TrialRecord
from search.server import TrackingError
from trainables.images import DEFAULT_CACHE
from trainables.metrics import METRICS, TRAINED_ON

TRIAL_ID = "trial_id"  # the tag that ties a child run to its Ray trial
# the parent run's tags: written by the driver and registration, read back by search.report
RESULTS_PATH, SEARCH_FOLDER, STOPPED = "results_path", "search_folder", "stopped"
REGISTERED_MODEL, BEST_TRIAL_ID = "registered_model", "best_trial_id"
# requests sent at once where many runs are written or read: a tracking server on this
# machine answers about 7x the requests to 8 threads that it answers to one
PARALLEL_REQUESTS = 8


def open_store(uri: str) -> MlflowClient:
    """A client of the tracking store at `uri`, the store made now if it is new (SQLite). A
    URI MLflow cannot use (a scheme it does not know, a database whose driver is not
    installed, a file store, which MLflow 3 no longer writes) is a `TrackingError`, before
    the search starts anything.

    MLflow's usage telemetry is turned off unless the user set `MLFLOW_DISABLE_TELEMETRY`:
    on its first event MLflow fetches a config from its servers in a thread, and where that
    fails (a cluster without internet) or declines, the thread removes an environment
    variable while this process's HTTP client may be reading the environment (requests'
    proxy lookup): that request failed with KeyError '_MLFLOW_TELEMETRY_SESSION_ID', and a
    search with it. Nor should a search call out to the internet of its own accord."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        # MLflow's lines as it makes a new store
        with silenced(told=(Exception,)), _made_by_one(uri):
            return MlflowClient(uri)
    except Exception as exc:  # MLflow's own errors, and a database driver's ImportError
        raise TrackingError(f"MLflow cannot use the tracking store {uri}: {first_line(exc)}; "
                            f"pass another --tracking-uri") from None


@contextlib.contextmanager
def _made_by_one(uri: str) -> Iterator[None]:
    """A lock on the folder of a SQLite store (made if absent, as MLflow would), between the
    processes of a machine, for the length of a `with`: two searches started at once in a
    new folder both made the store's tables, and the second failed ("table experiments
    already exists"). A store not there yet is copied in under the lock, its tables made
    (`_copy_empty_store`). Other stores (a server, a database server) make their tables once,
    themselves. An in-memory SQLite store is refused: each connection MLflow opens to it is
    a new, empty database, and the search failed midway."""
    if not uri.startswith("sqlite:"):
        yield
        return
    # here, not at the top: the driver imports this module while Ray starts, and only a
    # SQLite store needs SQLAlchemy before MLflow opens it
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        raise ValueError("an in-memory database forgets each run as it is written "
                         "(sqlite:///mlflow.db is a file)")
    folder = Path(database).absolute().parent
    folder.mkdir(parents=True, exist_ok=True)
    # the folder itself, not a lock file (`trainables.images.locked`): none left beside the
    # user's database
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not os.path.exists(database):
            _copy_empty_store(Path(database))
        yield
    finally:
        os.close(handle)  # which lets the lock go


def _copy_empty_store(database: Path) -> None:
    """Put at `database` a copy of an empty store, its tables made once per MLflow version in
    the machine's default cache folder (a space's `data.cache_dir` is the space's own): making
    them is SQLite running MLflow's schema migrations one by one, 0.8 to 1.7 s of every new
    store here, where the copy takes about 25 ms. The copy has no experiment, so MLflow makes
    its default one as in any new store, with this store's artifact root. Where the cache
    folder cannot be written, MLflow makes the store itself."""
    # SQLAlchemy and MLflow's own table maker, both imported only for a new SQLite store
    import mlflow
    from mlflow.store.db.utils import _initialize_tables
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    template = DEFAULT_CACHE / f"mlflow-{mlflow.__version__}-store.db"
    try:
        if not template.exists():
            DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
            with _new_file_for(template) as made:
                engine = create_engine(f"sqlite:///{made}")
                _initialize_tables(engine)  # type: ignore[no-untyped-call]  # MLflow's
                engine.dispose()
        with _new_file_for(database) as copy:
            shutil.copyfile(template, copy)
    except (OSError, SQLAlchemyError):
        pass  # MLflow makes the store's tables when it opens it


@contextlib.contextmanager
def _new_file_for(path: Path) -> Iterator[Path]:
    """A new file in `path`'s folder, moved to `path` once the `with` ends, removed if it
    fails: a store or template is at its place whole or not at all. Named, not made, here:
    SQLite and the copy make it with the permissions MLflow's own store gets."""
    name = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        yield name
        os.replace(name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)


def class_metric_names(prefix: str, classes: tuple[str, ...]) -> list[str]:
    """One MLflow metric name per class, `prefix` + the class name with each character MLflow
    refuses (`Tiger's Eye`, `C++`) made `_`, and the class's index added where two would
    clash; the class names themselves live in the model's metadata."""
    names = [prefix + re.sub(r"[^\w\-. ]", "_", cls, flags=re.ASCII) for cls in classes]
    return [f"{name}_{i}" if names.count(name) > 1 else name for i, name in enumerate(names)]


def trial_runs(client: MlflowClient, parent_run_id: str,
               trial_id: str | None = None) -> dict[str, Run]:
    """The child runs of `parent_run_id` by the Ray trial each records (only `trial_id`'s,
    if given), in one query."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    if trial_id is not None:
        query += f" and tags.{TRIAL_ID} = '{trial_id}'"
    runs = client.search_runs([experiment_id], query, max_results=SEARCH_MAX_RESULTS_THRESHOLD)
    return {run.data.tags[TRIAL_ID]: run for run in runs if TRIAL_ID in run.data.tags}


def trial_run(client: MlflowClient, parent_run_id: str, trial_id: str) -> str | None:
    """The id of the child run of `parent_run_id` that records trial `trial_id`, if any."""
    run = trial_runs(client, parent_run_id, trial_id).get(trial_id)
    return run.info.run_id if run else None


def tag_cut_runs(client: MlflowClient, parent_run_id: str, trial_ids: Collection[str]) -> None:
    """Say why the runs of trials the search ended before they did (an epoch budget spent)
    are KILLED: a `cut_short` tag. A query each: they are at most the trials run at once."""
    for trial_id in trial_ids:
        run_id = trial_run(client, parent_run_id, trial_id)
        if run_id is not None:
            client.set_tag(run_id, "cut_short", "true")


def epoch_metrics(row: Mapping[str, Any]) -> list[Metric]:
    """An epoch's metrics as MLflow writes them: `step=training_iteration` (the epoch)."""
    at = int(row.get("timestamp") or time.time()) * 1000
    return [Metric(name, float(row[name]), at, int(row["training_iteration"]))
            for name in METRICS if name in row and pd.notna(row[name])]


def mend_trial_runs(client: MlflowClient, parent_run_id: str, records: list[TrialRecord],
                    written: Collection[str] = (), resumed: bool = True) -> int:
    """Make MLflow hold what Ray holds: one run per trial, every epoch's metrics, its end;
    a run of a trial Ray does not hold is KILLED. Writes only what is missing (the tracking
    server was down, or the driver was killed between a result and its logging) and returns
    how many runs it mended. It reads each trial's history, `PARALLEL_REQUESTS` at once, but
    for the trials in `written`, whose runs this driver made, wrote whole and ended. A search
    not `resumed` whose every run is in `written` has nothing to mend: no driver before this
    one made a run of it, so it is not read at all (listing the search's runs took 3.7 s of
    the end of 2,000 trials)."""
    if not resumed and all(record.trial_id in written for record in records):
        return 0
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = trial_runs(client, parent_run_id)

    def mend(record: TrialRecord) -> bool:
        run = runs.get(record.trial_id)
        run_id, status = (run.info.run_id, run.info.status) if run else (None, None)
        if run_id is None:
            run_id = client.create_run(
                experiment_id, run_name=f"run_trial_{record.trial_id}", tags={
                "mlflow.parentRunId": parent_run_id, "kind": "trial",
                TRIAL_ID: record.trial_id}).info.run_id
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in record.config.items()])
        logged = {m.step for m in client.get_metric_history(run_id, METRIC)}
        missing = [metric for _, row in record.history.iterrows()
                   if int(row["training_iteration"]) not in logged
                   for metric in epoch_metrics(row)]
        for start in range(0, len(missing), 1000):  # MLflow's limit per batch
            client.log_batch(run_id, metrics=missing[start:start + 1000])
        if status in (None, "RUNNING"):
            if record.trained_on:
                client.set_tag(run_id, TRAINED_ON, record.trained_on)
            client.set_tag(run_id, "stopped_early", str(record.stopped_early).lower())
            if record.error:
                client.set_tag(run_id, "error", record.error)
            client.set_terminated(run_id, "FAILED" if record.error else "FINISHED")
        return bool(status in (None, "RUNNING") or missing)

    with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        mended = sum(pool.map(mend, [r for r in records if r.trial_id not in written]))
    ran = {record.trial_id for record in records}
    for trial_id, run in runs.items():
        if trial_id not in ran and run.info.status == "RUNNING":
            # a trial the driver started after Tune's last snapshot: resume ran another
            client.set_tag(run.info.run_id, "error", "the driver was killed before Ray Tune "
                           "recorded this trial; --resume ran another in its place")
            client.set_terminated(run.info.run_id, "KILLED")
            mended += 1
    return mended


def start_parent_run(client: MlflowClient, experiment: str, run_name: str,
                     params: dict[str, Any]) -> str:
    """Create (if needed) the space's experiment and open the search's parent run."""
    found = client.get_experiment_by_name(experiment)
    try:
        # the kind tag makes the MLflow UI open the experiment on its runs table, not its
        # "what kind of experiment is this?" prompt
        experiment_id = found.experiment_id if found else client.create_experiment(
            experiment, tags={"mlflow.experimentKind": "custom_model_development"})
    except MlflowException as exc:  # another search of the space made it since
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        made = client.get_experiment_by_name(experiment)
        assert made is not None
        experiment_id = made.experiment_id
    run = client.create_run(experiment_id, run_name=run_name, tags={"kind": "search"})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return str(run.info.run_id)


def log_figure(client: MlflowClient, figure: Figure, name: str, *run_ids: str) -> None:
    """Log a matplotlib figure on each run, drawn once, and free it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        figure.savefig(path, bbox_inches="tight")
        for run_id in run_ids:
            client.log_artifact(run_id, str(path))
    plt.close(figure)  # pyplot keeps every figure alive until closed
