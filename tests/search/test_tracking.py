"""The search's MLflow records on a real SQLite store, without Ray: the parent run, each trial's
child run found by its id, and MLflow mended to hold what Ray holds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import run_at_once
from mlflow.tracking import MlflowClient

from search.cli import without_credentials
from search.results import TrialRecord
from search.server import TrackingError
from search.tracking import (
    TRIAL_ID,
    class_metric_names,
    mend_trial_runs,
    open_store,
    start_parent_run,
    trial_run,
    trial_runs,
)


@pytest.fixture
def client(tmp_path: Path, monkeypatch) -> MlflowClient:
    monkeypatch.chdir(tmp_path)  # a SQLite store's artifacts go under ./mlruns
    return open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.parametrize(("uri", "why"), [
    ("foo://bar", "unsupported URI 'foo://bar'"),
    ("postgresql://127.0.0.1:1/db", ""),  # no PostgreSQL driver here, or no database at 1
    ("file:///tmp/mlruns", "filesystem tracking backend"),  # MLflow 3 writes none
    ("sqlite://", "an in-memory database forgets each run"),  # the search failed midway
    ("sqlite:///:memory:", "an in-memory database forgets each run"),
])
def test_a_store_mlflow_cannot_use_is_a_tracking_error(uri: str, why: str) -> None:
    with pytest.raises(TrackingError, match=f"^MLflow cannot use the tracking store {uri}: "
                                            f".*{why}.*; pass another --tracking-uri$"):
        open_store(uri)


def test_a_new_store_is_a_copy_of_one_made_once_and_gets_its_own_default_experiment(
        tmp_path: Path, monkeypatch) -> None:
    """SQLite running MLflow's migrations took 0.8 to 1.7 s of every new store; the copy is
    the same tables, and MLflow makes the default experiment in it where this store's
    artifacts go (not where the first store's went)."""
    monkeypatch.setattr("search.tracking.DEFAULT_CACHE", tmp_path / "cache")
    stores = {}
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        stores[name] = open_store(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == \
        [f"mlflow-{mlflow.__version__}-store.db"]
    assert [p.name for p in tmp_path.glob("*/*") if p.parent.name != "cache"] == \
        ["mlflow.db"] * 2  # no part files left
    for name, client in stores.items():
        assert client.get_experiment("0").artifact_location == str(tmp_path / name / "mlruns/0")
        run = start_parent_run(client, "gems", "gems-1", {"seed": 0})
        client.log_metric(run, "val_accuracy", 0.5)
        client.create_registered_model("gems")
        assert client.get_run(run).data.metrics == {"val_accuracy": 0.5}


def test_a_new_store_is_made_by_mlflow_where_the_cache_cannot_be_written(
        tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setattr("search.tracking.DEFAULT_CACHE", tmp_path / "file" / "cache")
    client = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.log_metric(start_parent_run(client, "gems", "gems-1", {}), "val_accuracy", 0.5)


def test_credentials_leave_a_servers_uri_but_stay_in_a_databases(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    database = "postgresql://alice:s3cret@db.example:5432/mlflow"
    assert without_credentials(database) == database  # SQLAlchemy reads them there only
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    assert without_credentials("https://alice:s3cret@mlflow.example") == "https://mlflow.example"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cret"


def history(accuracies: list[float]) -> pd.DataFrame:
    n = len(accuracies)
    return pd.DataFrame({"training_iteration": range(1, n + 1), "epoch": range(1, n + 1),
                         "val_accuracy": accuracies, "val_loss": [0.5] * n,
                         "accuracy": [0.9] * n, "loss": [0.4] * n,
                         "timestamp": [1_700_000_000] * n})


def child(client: MlflowClient, parent: str, trial_id: str) -> str:
    """A child run as Ray's callback opens it while the trial runs."""
    experiment = client.get_run(parent).info.experiment_id
    return client.create_run(experiment, tags={"mlflow.parentRunId": parent, "kind": "trial",
                                               TRIAL_ID: trial_id}).info.run_id


def steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val_accuracy"))


def test_the_parent_run_opens_in_the_spaces_experiment_once(client: MlflowClient) -> None:
    first = start_parent_run(client, "gems", "gems-1", {"seed": 0, "sampler": "tpe"})
    second = start_parent_run(client, "gems", "gems-2", {"seed": 1})
    runs = [client.get_run(first), client.get_run(second)]
    assert runs[0].info.experiment_id == runs[1].info.experiment_id
    assert runs[0].data.params == {"seed": "0", "sampler": "tpe"}
    assert all(r.data.tags["kind"] == "search" for r in runs)


FIRST_EVENT = """
import sys, threading
started = []
start = threading.Thread.start
threading.Thread.start = lambda thread: (started.append(thread.name), start(thread))[1]
from search.tracking import open_store
open_store(f"sqlite:///{sys.argv[1]}.db").create_experiment("x")  # MLflow's first event
print(started)
"""


def test_mlflow_fetches_no_telemetry_config_unless_the_user_asks(tmp_path: Path) -> None:
    """MLflow's telemetry thread, failing to reach its servers, removed an environment
    variable while the driver's HTTP client read the environment: a request failed with
    KeyError '_MLFLOW_TELEMETRY_SESSION_ID'. Run as a user runs it: MLflow turns its
    telemetry off itself under pytest or a CI."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY")}

    def started(store: str, extra: dict[str, str]) -> str:
        return subprocess.run([sys.executable, "-c", FIRST_EVENT, store], cwd=tmp_path,
                              check=True, env={**env, **extra}, capture_output=True,
                              text=True).stdout

    assert "GetTelemetryConfig" not in started("a", {})
    assert "GetTelemetryConfig" in started("b", {"MLFLOW_DISABLE_TELEMETRY": "false"})  # asked


OPEN_AT_ONCE = """
from search.tracking import open_store, start_parent_run
step("imported")
client = open_store("sqlite:///mlflow.db")
step("opened")
start_parent_run(client, "digits", sys.argv[1], {})
"""


def test_searches_started_at_once_in_a_new_folder_share_its_store(tmp_path: Path) -> None:
    """Three drivers opening a store that does not exist yet at the same instant (a script
    that starts a search per seed), then the space's experiment in it: each gets its parent
    run in the one experiment. Two at once failed one: both made the store's tables ("table
    experiments already exists"), or both the experiment."""
    run_at_once(OPEN_AT_ONCE, 3, tmp_path, ["imported", "opened"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    made = client.get_experiment_by_name("digits")
    assert made is not None
    assert sorted(r.info.run_name for r in client.search_runs([made.experiment_id])) == \
        ["0", "1", "2"]


def test_a_trials_run_is_found_by_its_id_among_the_searchs_children(
        client: MlflowClient) -> None:
    parent = start_parent_run(client, "gems", "gems-1", {})
    other = start_parent_run(client, "gems", "gems-2", {})
    run_a = child(client, parent, "a")
    child(client, other, "a")  # the same trial id in another search
    child(client, parent, "b_with_underscores")
    assert trial_run(client, parent, "a") == run_a
    assert trial_run(client, parent, "c") is None
    assert sorted(trial_runs(client, parent)) == ["a", "b_with_underscores"]


def test_mending_writes_only_what_mlflow_missed_and_ends_every_run(
        client: MlflowClient, monkeypatch) -> None:
    """Trial a: logged up to epoch 2 of 3, still RUNNING (the driver was killed); b: no run
    at all (the server was down when it started), failed; c: complete and ended; d: a run Ray
    never recorded (started after Tune's last snapshot)."""
    parent = start_parent_run(client, "gems", "gems-1", {})
    run_a, run_c, run_d = (child(client, parent, t) for t in ("a", "c", "d"))
    for step in (1, 2):
        client.log_metric(run_a, "val_accuracy", 0.5, step=step)
    for step in (1, 2):
        client.log_metric(run_c, "val_accuracy", 0.6, step=step)
    client.set_terminated(run_c, "FINISHED")
    records = [
        TrialRecord("a", {"lr": 0.01}, history([0.5, 0.5, 0.7]), 1.0, stopped_early=True),
        TrialRecord("b", {"lr": 0.1}, history([0.2]), 1.0, error="out of memory"),
        TrialRecord("c", {"lr": 0.001}, history([0.6, 0.6]), 1.0),
    ]
    assert mend_trial_runs(client, parent, records) == 3  # a, b and d; c held everything
    runs = trial_runs(client, parent)
    assert steps(client, runs["a"].info.run_id) == [1, 2, 3]  # epoch 3 only was added
    assert runs["a"].info.status == "FINISHED" and runs["a"].data.tags["stopped_early"] == "true"
    assert runs["b"].info.status == "FAILED" and runs["b"].data.tags["error"] == "out of memory"
    assert runs["b"].data.params == {"lr": "0.1"} and steps(client, runs["b"].info.run_id) == [1]
    assert steps(client, run_c) == [1, 2] and runs["c"].info.status == "FINISHED"
    assert runs["d"].info.status == "KILLED" and "--resume" in runs["d"].data.tags["error"]
    assert mend_trial_runs(client, parent, records) == 0  # nothing is left to mend
    # a run this driver wrote whole is not read back
    records.append(TrialRecord("e", {"lr": 0.2}, history([0.3, 0.4]), 1.0))
    run_e = child(client, parent, "e")
    histories = []
    read = client.get_metric_history
    monkeypatch.setattr(client, "get_metric_history",
                        lambda run_id, key: histories.append(run_id) or read(run_id, key))
    assert mend_trial_runs(client, parent, records, written={"e"}) == 0
    assert run_e not in histories and len(histories) == 3
    # a search not resumed that wrote every run whole asks MLflow nothing
    asked = []
    monkeypatch.setattr(client, "search_runs", lambda *args, **kw: asked.append(args) or [])
    monkeypatch.setattr(client, "get_run", lambda *args: asked.append(args))
    assert mend_trial_runs(client, parent, records, written={r.trial_id for r in records},
                           resumed=False) == 0
    assert not asked


def test_class_names_become_valid_metric_names_that_never_clash(client: MlflowClient) -> None:
    names = class_metric_names("test_f1_", ("Tiger's Eye", "C++", "C--", "C__"))
    assert names[0] == "test_f1_Tiger_s Eye" and len(set(names)) == 4
    run = start_parent_run(client, "gems", "gems-1", {})
    for name in names:  # MLflow accepts every one
        client.log_metric(run, name, 1.0)


