"""The MLflow callback of a running search, the one part of tracking that knows Ray: Ray's
own `MLflowLoggerCallback`, in the driver, with each trial a child run of the search's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback

from search.tracking import TRIAL_ID, epoch_metrics, trial_runs
from trainables.metrics import TRAINED_ON

MAX_PARAMS_PER_BATCH = 100  # MLflow's limit on one log_batch


class TrialRunLogger(MLflowLoggerCallback):
    """Ray's MLflow callback with each trial a child of the parent run: epoch metrics with
    `step=epoch`, a `stopped_early` tag and metric for trials ASHA stopped, the node a trial
    runs on, what it trained on (`trained_on`: cached backbone features or pixels), and a
    `restarts` tag when Tune retries it in the same run.

    Ray's own methods send one request per param and look the run up before each write; here
    a trial start is two requests (the run, its params in one batch), a result one (its
    metrics and any new tags in one batch), an end two. The trials' runs are looked up once,
    when the driver starts (a resumed search finds its trials' runs there). (MLflow's
    asynchronous `log_batch` was tried and was slower: its futures each hold one of ten
    status threads until written, so waiting on a trial's writes at its end took a second.)"""

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
        super().setup(*args, **kwargs)  # type: ignore[no-untyped-call]  # Ray's
        self._client = MlflowClient(self.tracking_uri)
        self._runs = {trial_id: run.info.run_id
                      for trial_id, run in trial_runs(self._client, self.parent_run_id).items()}

    def log_trial_start(self, trial: Any) -> None:
        if trial in self._trial_runs:
            return  # a retry after its worker died: the same run, its params logged
        run_id = self._runs.get(trial.trial_id)
        if run_id is not None:  # resumed after the driver was killed: continue the trial's run
            self._client.update_run(run_id, status="RUNNING")
        else:
            experiment_id = self.mlflow_util.experiment_id
            assert experiment_id is not None  # found or made by setup()
            run_id = self._client.create_run(
                experiment_id, run_name=str(trial),
                tags={**(self.tags or {}), "trial_name": str(trial), TRIAL_ID: trial.trial_id}
            ).info.run_id
            self._runs[trial.trial_id] = run_id
            params = [Param(key, str(value)) for key, value in trial.config.items()]
            for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
                self._client.log_batch(run_id, params=params[start:start + MAX_PARAMS_PER_BATCH])
        self._trial_runs[trial] = run_id

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial whose worker died: Tune retries it from its last checkpoint, in this run."""
        run_id = self._trial_runs.get(trial)
        if run_id is not None:
            tags = {"restarts": str(trial.num_failures)}
            if trial.error_file:
                tags["last_failure"] = _last_line(trial.error_file)
            self._client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        run_id = self._trial_runs[trial]
        tags = {}
        if result.get(TRAINED_ON) and trial.trial_id not in self._tagged:
            tags[TRAINED_ON] = result[TRAINED_ON]
            self._tagged.add(trial.trial_id)
        node = result.get("node_id")
        if node and self._node.get(trial.trial_id) != node:  # where it runs (a retry may move)
            tags.update({"ray_node_id": node, "node_ip": result.get("node_ip", "")})
            self._node[trial.trial_id] = node
        self._client.log_batch(run_id, metrics=epoch_metrics(result),
                               tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        try:
            self._log_trial_end(trial, failed)
        except MlflowException as exc:
            # Tune catches what this raises, prints its traceback and fails the trial;
            # raised at the next step it stops the search, as a failed epoch log does
            self._lost = exc

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._lost is not None:
            raise self._lost

    def _log_trial_end(self, trial: Any, failed: bool) -> None:
        run_id = self._trial_runs[trial]
        stopped = trial.trial_id in self.stopped
        tags = {"stopped_early": str(stopped).lower()}
        if failed and trial.error_file:
            tags["error"] = _last_line(trial.error_file)
        self._client.log_batch(
            run_id, metrics=[Metric("stopped_early", float(stopped), int(time.time() * 1000), 0)],
            tags=[RunTag(k, v) for k, v in tags.items()])
        self._client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
        self._ended.add(run_id)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Trials the search ended before they did (an epoch budget spent) are KILLED, not
        left RUNNING forever."""
        for run_id in set(self._trial_runs.values()) - self._ended:
            self._client.set_terminated(run_id, "KILLED")
        super().on_experiment_end(trials, **info)


def _last_line(path: str) -> str:
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError:
        return "unknown error"
    return lines[-1][:500] if lines else "unknown error"
