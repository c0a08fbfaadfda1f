"""The trial runs' writes sent from threads beside the driver's loop, on a real SQLite store:
everything queued lands, in order, in fewer requests than writes, and the runs it made and
ended are known whole; MLflow's limits per batch hold; a write that fails stops the writer
and is raised to the driver."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.run_writer import RunWriter
from search.tracking import TRIAL_ID, open_store, start_parent_run, trial_runs


@pytest.fixture
def client(tmp_path: Path, monkeypatch) -> MlflowClient:
    monkeypatch.chdir(tmp_path)  # a SQLite store's artifacts go under ./mlruns
    return open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")


def epoch(step: int) -> list[Metric]:
    return [Metric("val_accuracy", step / 100, 1_700_000_000_000 + step, step),
            Metric("loss", 1 - step / 100, 1_700_000_000_000 + step, step)]


def test_every_queued_write_lands_in_order_in_fewer_requests(client: MlflowClient,
                                                             monkeypatch) -> None:
    parent = start_parent_run(client, "gems", "gems-1", {})
    experiment = client.get_run(parent).info.experiment_id
    earlier = client.create_run(experiment, tags={"mlflow.parentRunId": parent,
                                                  TRIAL_ID: "old"}).info.run_id
    client.set_terminated(earlier, "KILLED")  # a resumed search's trial, reopened below
    batches = []
    log_batch = client.log_batch
    monkeypatch.setattr(client, "log_batch",
                        lambda *a, **k: (batches.append(a[0]), log_batch(*a, **k))[1])

    writer = RunWriter(client, experiment, {"old": earlier})
    tags = {"mlflow.parentRunId": parent, "kind": "trial"}
    before = int(time.time() * 1000)
    for trial_id in ("a", "b"):
        writer.start(trial_id, f"run_{trial_id}", {**tags, TRIAL_ID: trial_id},
                     {"lr": "0.01", "units": "64"})
    after = int(time.time() * 1000)
    writer.start("old", "run_old", {}, {})
    for step in range(1, 41):
        for trial_id in ("a", "b", "old"):
            writer.log(trial_id, epoch(step), {"node": f"n{step}"})
    writer.end("a", "FINISHED")
    writer.log("b", tags={"error": "boom"})
    writer.end("b", "FAILED")
    writer.close()

    runs = trial_runs(client, parent)
    assert set(runs) == {"a", "b", "old"} and runs["old"].info.run_id == earlier
    assert {trial_id: run.info.status for trial_id, run in runs.items()} == {
        "a": "FINISHED", "b": "FAILED", "old": "RUNNING"}
    for trial_id in ("a", "b"):
        assert runs[trial_id].data.params == {"lr": "0.01", "units": "64"}
        assert runs[trial_id].info.run_name == f"run_{trial_id}"
        assert before <= runs[trial_id].info.start_time <= after  # when the trial started
    for run in runs.values():
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 41))
        assert run.data.metrics["val_accuracy"] == 0.4  # the last step is the latest
        assert run.data.tags["node"] == "n40"  # the last tag written wins
    assert runs["b"].data.tags["error"] == "boom"
    assert len(batches) < 3 * 40  # writes queued while a request was out went together
    assert writer.whole == {"a", "b"}  # made and ended here: "old" was reopened, not ended


def test_a_batch_over_mlflows_limits_is_split(client: MlflowClient) -> None:
    parent = start_parent_run(client, "gems", "gems-1", {})
    writer = RunWriter(client, client.get_run(parent).info.experiment_id, {})
    writer.start("a", "run_a", {TRIAL_ID: "a", "mlflow.parentRunId": parent},
                 {f"p{i}": str(i) for i in range(250)})
    writer.log("a", [m for step in range(1, 801) for m in epoch(step)],
               {f"tag{i}": "x" for i in range(150)})
    writer.close()

    run = trial_runs(client, parent)["a"]
    assert len(run.data.params) == 250
    assert sum(key.startswith("tag") for key in run.data.tags) == 150
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 800


def test_a_failed_write_stops_the_writer_and_reaches_the_driver(client: MlflowClient) -> None:
    parent = start_parent_run(client, "gems", "gems-1", {})
    writer = RunWriter(client, client.get_run(parent).info.experiment_id,
                       {"gone": "0" * 32})  # a run the store does not hold
    writer.log("gone", epoch(1))
    with pytest.raises(MlflowException):
        writer.flush()
    assert isinstance(writer.error, MlflowException)
    writer.start("a", "run_a", {TRIAL_ID: "a", "mlflow.parentRunId": parent}, {})
    with pytest.raises(MlflowException):
        writer.close()
    assert trial_runs(client, parent) == {}  # nothing written after the failure
