"""MLflow, written from the driver only: one experiment per space, a parent run per search,
a child run per trial (through Ray's own `MLflowLoggerCallback`, which runs in the driver)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback

from trainables.train import METRICS


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
    """Ray's MLflow callback with each trial a child of the parent run, epoch metrics logged
    with `step=epoch`, and a `stopped_early` tag and metric for trials ASHA stopped."""

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str,
                 stopped: set[str]):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment,
                         tags={"mlflow.parentRunId": parent_run_id, "kind": "trial"})
        self.stopped = stopped
        self.run_ids: dict[str, str] = {}  # trial id -> MLflow run id
        self._ended: set[str] = set()

    def log_trial_start(self, trial: Any) -> None:
        super().log_trial_start(trial)
        self.run_ids[trial.trial_id] = self._trial_runs[trial]

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        metrics = {name: result[name] for name in METRICS if name in result}
        self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=metrics,
                                     step=result["training_iteration"])

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        run_id = self._trial_runs[trial]
        stopped = trial.trial_id in self.stopped
        client = MlflowClient()
        client.set_tag(run_id, "stopped_early", str(stopped).lower())
        client.log_metric(run_id, "stopped_early", float(stopped))
        if failed and trial.error_file:
            client.set_tag(run_id, "error", _last_line(trial.error_file))
        super().log_trial_end(trial, failed)
        self._ended.add(run_id)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Trials the search ended before they did (an epoch budget spent) are KILLED, not
        left RUNNING forever."""
        for run_id in set(self.run_ids.values()) - self._ended:
            MlflowClient().set_terminated(run_id, "KILLED")
        super().on_experiment_end(trials, **info)


def _last_line(path: str) -> str:
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError:
        return "unknown error"
    return lines[-1][:500] if lines else "unknown error"

