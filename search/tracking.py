"""MLflow, written from the driver only: one experiment per space, a parent run per search,
a child run per trial (through Ray's own `MLflowLoggerCallback`, which runs in the driver).

A trial keeps one run however often it starts: retried after its worker died, or resumed
after the driver was killed, it finds its run by the `trial_id` tag and continues it."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback

from search.objective import METRIC
from search.results import TrialRecord
from trainables.train import METRICS, TRAINED_ON

TRIAL_ID = "trial_id"  # the tag that ties a child run to its Ray trial


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


def epoch_metrics(row: Mapping[str, Any]) -> list[Metric]:
    """An epoch's metrics as MLflow writes them: `step=training_iteration` (the epoch)."""
    at = int(row.get("timestamp") or time.time()) * 1000
    return [Metric(name, float(row[name]), at, int(row["training_iteration"]))
            for name in METRICS if name in row and pd.notna(row[name])]


def mend_trial_runs(client: MlflowClient, parent_run_id: str, records: list[TrialRecord]) -> int:
    """Make MLflow hold what Ray holds: one run per trial, every epoch's metrics, its end;
    a run of a trial Ray does not hold is KILLED. Writes only what is missing (the tracking
    server was down, or the driver was killed between a result and its logging) and returns
    how many runs it mended."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    runs = trial_runs(client, parent_run_id)
    mended = 0
    for record in records:
        run = runs.get(record.trial_id)
        run_id, status = (run.info.run_id, run.info.status) if run else (None, None)
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=f"run_trial_{record.trial_id}", tags={
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
        mended += bool(status in (None, "RUNNING") or missing)
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
    # the kind tag makes the MLflow UI open the experiment on its runs table, not its
    # "what kind of experiment is this?" prompt
    experiment_id = found.experiment_id if found else client.create_experiment(
        experiment, tags={"mlflow.experimentKind": "custom_model_development"})
    run = client.create_run(experiment_id, run_name=run_name, tags={"kind": "search"})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return str(run.info.run_id)


class TrialRunLogger(MLflowLoggerCallback):
    """Ray's MLflow callback with each trial a child of the parent run: epoch metrics with
    `step=epoch`, a `stopped_early` tag and metric for trials ASHA stopped, the node a trial
    runs on, what it trained on (`trained_on`: cached backbone features or pixels), and a
    `restarts` tag when Tune retries it in the same run."""

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str,
                 stopped: set[str]):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment,
                         tags={"mlflow.parentRunId": parent_run_id, "kind": "trial"})
        self.parent_run_id = parent_run_id
        self.stopped = stopped
        self._ended: set[str] = set()  # run ids whose trial ended
        self._node: dict[str, str] = {}  # trial id -> the node last tagged on its run
        self._tagged: set[str] = set()  # trial ids whose run has its trained_on tag

    def setup(self, *args: Any, **kwargs: Any) -> None:
        # log where the driver logs: a search resumed with another --tracking-uri (the server
        # came back elsewhere) restores this callback as pickled, with the old address
        self.tracking_uri = mlflow.get_tracking_uri()
        self._lost: MlflowException | None = None  # MLflow's failure at a trial's end
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial: Any) -> None:
        if trial not in self._trial_runs:
            client = MlflowClient(self.tracking_uri)
            run_id = trial_run(client, self.parent_run_id, trial.trial_id)
            if run_id is None:
                run_id = self.mlflow_util.start_run(
                    run_name=str(trial), tags={**self.tags, "trial_name": str(trial),
                                               TRIAL_ID: trial.trial_id}).info.run_id
            else:  # resumed after the driver was killed: continue the trial's run
                client.update_run(run_id, status="RUNNING")
            self._trial_runs[trial] = run_id
        super().log_trial_start(trial)  # logs the params

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial whose worker died: Tune retries it from its last checkpoint, in this run."""
        run_id = self._trial_runs.get(trial)
        if run_id is not None:
            client = MlflowClient(self.tracking_uri)
            client.set_tag(run_id, "restarts", str(trial.num_failures))
            if trial.error_file:
                client.set_tag(run_id, "last_failure", _last_line(trial.error_file))

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        # one request, to this run or an error: Ray's own helper logs to a new run when it
        # cannot see this one (the server being down, for one)
        run_id = self._trial_runs[trial]
        client = MlflowClient(self.tracking_uri)
        client.log_batch(run_id, metrics=epoch_metrics(result))
        if result.get(TRAINED_ON) and trial.trial_id not in self._tagged:
            client.set_tag(run_id, TRAINED_ON, result[TRAINED_ON])
            self._tagged.add(trial.trial_id)
        node = result.get("node_id")
        if node and self._node.get(trial.trial_id) != node:  # where it runs (a retry may move)
            client.set_tag(run_id, "ray_node_id", node)
            client.set_tag(run_id, "node_ip", result.get("node_ip", ""))
            self._node[trial.trial_id] = node

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        try:
            self._log_trial_end(trial, failed)
        except MlflowException as exc:
            # Tune catches what this raises, prints its traceback and fails the trial;
            # raised at the next step it stops the search, as a failed epoch log does
            self._lost = exc

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._lost is not None:
            raise self._lost

    def _log_trial_end(self, trial: Any, failed: bool) -> None:
        run_id = self._trial_runs[trial]
        stopped = trial.trial_id in self.stopped
        client = MlflowClient(self.tracking_uri)
        client.set_tag(run_id, "stopped_early", str(stopped).lower())
        client.log_metric(run_id, "stopped_early", float(stopped))
        if failed and trial.error_file:
            client.set_tag(run_id, "error", _last_line(trial.error_file))
        super().log_trial_end(trial, failed)
        self._ended.add(run_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Trials the search ended before they did (an epoch budget spent) are KILLED, not
        left RUNNING forever."""
        for run_id in set(self._trial_runs.values()) - self._ended:
            MlflowClient(self.tracking_uri).set_terminated(run_id, "KILLED")
        super().on_experiment_end(trials, **info)


def _last_line(path: str) -> str:
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError:
        return "unknown error"
    return lines[-1][:500] if lines else "unknown error"


def log_figure(client: MlflowClient, run_id: str, figure: plt.Figure, name: str) -> None:
    """Log a matplotlib figure on a run and free it."""
    client.log_figure(run_id, figure, name, save_kwargs={"bbox_inches": "tight"})
    plt.close(figure)  # pyplot keeps every figure alive until closed
