"""The MLflow callback of a running search, the one part of tracking that knows Ray: Ray's
own `MLflowLoggerCallback`, in the driver, with each trial a child run of the search's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback

from search.tracking import TRIAL_ID, epoch_metrics, trial_run
from trainables.metrics import TRAINED_ON


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
