"""The MLflow callback of a running search, the one part of tracking that knows Ray: Ray's
own `MLflowLoggerCallback`, in the driver, with each trial a child run of the search's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback

from search.run_writer import RunWriter
from search.tracking import TRIAL_ID, epoch_metrics, trial_runs
from trainables.metrics import TRAINED_ON


class TrialRunLogger(MLflowLoggerCallback):
    """Ray's MLflow callback with each trial a child of the parent run: epoch metrics with
    `step=epoch`, a `stopped_early` tag and metric for trials ASHA stopped, the node a trial
    runs on, what it trained on (`trained_on`: cached backbone features or pixels), and a
    `restarts` tag when Tune retries it in the same run.

    Ray's own methods send one request per param and look the run up before each write, from
    the driver's loop; here the driver only queues the writes, and `RunWriter` sends them from
    threads of its own, each run's since its last request in one batch. The trials' runs are
    looked up once, when the driver starts (a resumed search finds its trials' runs there).
    (MLflow's asynchronous `log_batch` was tried and was slower: its futures each hold one of
    ten status threads until written, so waiting on a trial's writes at its end took a
    second.)"""

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str,
                 stopped: set[str], written: set[str]):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment,
                         tags={"mlflow.parentRunId": parent_run_id, "kind": "trial"})
        self.parent_run_id = parent_run_id
        self.stopped = stopped
        # filled as the part ends: the trials whose run was made, written whole and ended
        # here, which the driver need not check against Ray (`mend_trial_runs`)
        self.written = written
        self._started: set[str] = set()  # trial ids whose run was made or reopened
        self._ended: set[str] = set()  # trial ids whose run was ended
        self._node: dict[str, str] = {}  # trial id -> the node last tagged on its run
        self._tagged: set[str] = set()  # trial ids whose run has its trained_on tag

    def setup(self, *args: Any, **kwargs: Any) -> None:
        # log where the driver logs: a search resumed with another --tracking-uri (the server
        # came back elsewhere) restores this callback as pickled, with the old address
        self.tracking_uri = mlflow.get_tracking_uri()
        super().setup(*args, **kwargs)  # type: ignore[no-untyped-call]  # Ray's
        client = MlflowClient(self.tracking_uri)
        experiment_id = self.mlflow_util.experiment_id
        assert experiment_id is not None  # found or made by Ray's setup
        self._writer = RunWriter(client, experiment_id, {
            trial_id: run.info.run_id
            for trial_id, run in trial_runs(client, self.parent_run_id).items()})

    def log_trial_start(self, trial: Any) -> None:
        if trial.trial_id in self._started:
            return  # a retry after its worker died: the same run, its params logged
        self._started.add(trial.trial_id)
        self._writer.start(
            trial.trial_id, str(trial),
            tags={**(self.tags or {}), "trial_name": str(trial), TRIAL_ID: trial.trial_id},
            params={key: str(value) for key, value in trial.config.items()})

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial whose worker died: Tune retries it from its last checkpoint, in this run."""
        if trial.trial_id in self._started:
            tags = {"restarts": str(trial.num_failures)}
            if trial.error_file:
                tags["last_failure"] = _last_line(trial.error_file)
            self._writer.log(trial.trial_id, tags=tags)

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        tags = {}
        if result.get(TRAINED_ON) and trial.trial_id not in self._tagged:
            tags[TRAINED_ON] = result[TRAINED_ON]
            self._tagged.add(trial.trial_id)
        node = result.get("node_id")
        if node and self._node.get(trial.trial_id) != node:  # where it runs (a retry may move)
            tags.update({"ray_node_id": node, "node_ip": result.get("node_ip", "")})
            self._node[trial.trial_id] = node
        self._writer.log(trial.trial_id, epoch_metrics(result),
                         {k: str(v) for k, v in tags.items()})

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        stopped = trial.trial_id in self.stopped
        tags = {"stopped_early": str(stopped).lower()}
        if failed and trial.error_file:
            tags["error"] = _last_line(trial.error_file)
        self._writer.log(
            trial.trial_id, [Metric("stopped_early", float(stopped), int(time.time() * 1000), 0)],
            tags)
        self._writer.end(trial.trial_id, "FAILED" if failed else "FINISHED")
        self._ended.add(trial.trial_id)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        # a write that failed after MLflow's retries (the server is gone) stops the search,
        # raised here, where Tune lets it out, not in a trial's logging, which would fail it
        if self._writer.error is not None:
            raise self._writer.error

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Trials the search ended before they did (an epoch budget spent) are KILLED, not
        left RUNNING forever; then everything queued is written."""
        for trial_id in self._started - self._ended:
            self._writer.end(trial_id, "KILLED")
        self._writer.close()
        self.written |= self._writer.whole
        super().on_experiment_end(trials, **info)


def _last_line(path: str) -> str:
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError:
        return "unknown error"
    return lines[-1][:500] if lines else "unknown error"
