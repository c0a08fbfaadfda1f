"""The whole search machinery (the driver, OptunaSearch on the journal study, ASHA, the MLflow
logger, progress, results, faults) on real Ray, Optuna and MLflow, with the curve trial
standing in for Keras: seconds, not minutes."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import trial_results, write_curve_space
from mlflow.tracking import MlflowClient

from search import growth, tuning
from search.curve_trial import FAULT_EPOCH, curve_trial
from search.driver import Options, run_search
from search.folder import SearchFolder
from search.searcher import UNBUILDABLE
from search.snapshots import TrialResultLogger
from search.space import load_space
from search.tuning import SearchStopped

# faults come at epoch 2, ASHA's first rung; the baselines run first. `dies` has a curve
# (a hash of its params) near the top at that rung (0.92; the median trial's is 0.54, and
# fewer than 1% pass 0.92), so ASHA lets it go on after it resumes, whatever order results
# arrive in
ASHA = "{max_epochs: 8, grace_period: 2, reduction_factor: 2}"
BASELINES = """baselines:
  dies: {conv_filters: [8], dense_units: [8], learning_rate: 0.002}
  diverges: {conv_filters: [4], dense_units: [32], learning_rate: 0.05}"""


def test_a_search_of_curve_trials_with_faults_runs_through_every_part(
        ray_local, tmp_path: Path, monkeypatch) -> None:
    """16 trials, 4 at a time: ASHA stops some early (Optuna sees them PRUNED); the baseline
    `dies` has its worker killed at epoch 2 and goes on from its checkpoint in the same
    MLflow run; the baseline `diverges` fails alone."""
    monkeypatch.chdir(tmp_path)
    space = load_space(write_curve_space(tmp_path, epochs=8, num_samples=16, max_concurrent=4,
                                         asha=ASHA, baselines=BASELINES))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trial = curve_trial(epoch_s=0.05, nan_if=lambda p: p.get("baseline") == "diverges",
                        die_if=lambda p: p.get("baseline") == "dies")
    with contextlib.redirect_stdout(None):
        outcome = run_search(space, Options(uri, tmp_path / "ray"), trial, register=None)

    table = outcome.table.set_index("trial_id")
    assert len(table) == 16 and outcome.model_uri is None
    dies, diverges = table["baseline"] == "dies", table["baseline"] == "diverges"
    assert set(table.index[table["status"] == "failed"]) == set(table.index[diverges])
    assert (table["status"] == "stopped").any() and (table["status"] == "completed").any()
    assert dies.sum() == 1 and diverges.sum() == 1
    assert (table.loc[~diverges & (table["status"] == "completed"), "epochs_run"] == 8).all()

    client = MlflowClient(uri)
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name("curves").experiment_id], "tags.kind = 'trial'")}
    assert set(runs) == set(table.index)  # one run per trial, killed ones included
    for trial_id, run in runs.items():
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        if diverges[trial_id]:
            assert run.info.status == "FAILED" and "not finite" in run.data.tags["error"]
            assert sorted(epochs) == list(range(1, FAULT_EPOCH))
            continue
        assert run.info.status == "FINISHED"
        assert sorted(set(epochs)) == list(range(1, table.loc[trial_id, "epochs_run"] + 1))
        if dies[trial_id]:  # at most the epoch reported as it died is logged twice
            assert run.data.tags["restarts"] == "1" and len(epochs) <= len(set(epochs)) + 1
            assert table.loc[trial_id, "epochs_run"] > FAULT_EPOCH

    study = SearchFolder.load(next((tmp_path / "ray").glob("*/search.json")).parent) \
        .load_study()
    states = pd.Series([t.state.name for t in study.trials]).value_counts()
    assert states.get("PRUNED", 0) == (table["status"] == "stopped").sum()
    assert states.get("FAIL", 0) == diverges.sum()


def test_draws_of_models_that_cannot_be_built_are_drawn_again_not_run(
        ray_local, tmp_path: Path, monkeypatch) -> None:
    """8-px images under 1 to 3 conv blocks with valid padding: 2 or more leave nothing to
    pool. Every trial the search runs has 1 block; the draws of more are PRUNED in the
    study, and the terminal says how many."""
    monkeypatch.chdir(tmp_path)
    space = load_space(write_curve_space(
        tmp_path, epochs=2, num_samples=8, max_concurrent=4, asha=ASHA,
        conv_blocks="{type: int, low: 1, high: 3}"))
    terminal = io.StringIO()
    with contextlib.redirect_stdout(terminal):
        outcome = run_search(space, Options(f"sqlite:///{tmp_path / 'mlflow.db'}",
                                            tmp_path / "ray"), curve_trial(epoch_s=0.01),
                             register=None)
    table = outcome.table
    assert len(table) == 8 and (table["status"] == "completed").all()
    study = SearchFolder.load(next((tmp_path / "ray").glob("*/search.json")).parent) \
        .load_study()
    redrawn = [t for t in study.trials if UNBUILDABLE in t.user_attrs]
    assert redrawn and all(t.state.name == "PRUNED" and t.params["conv_blocks"] > 1
                           for t in redrawn)
    ran = [t for t in study.trials if UNBUILDABLE not in t.user_attrs]
    assert len(ran) == 8 and all(t.params["conv_blocks"] == 1 for t in ran)
    assert f"{len(redrawn)} draw(s) of models that cannot be built were drawn again" \
        in terminal.getvalue()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["draws_not_built"] == len(redrawn)


def test_cpu_auto_gives_each_trial_its_share_of_the_machine(ray_local, tmp_path: Path,
                                                           monkeypatch) -> None:
    """`cpu: auto`, one trial at a time on the test's 2-CPU Ray: each trial asks Ray for, and
    sizes itself to, both CPUs."""
    monkeypatch.chdir(tmp_path)
    path = write_curve_space(tmp_path, epochs=2, num_samples=2, max_concurrent=1,
                             asha="{max_epochs: 2, grace_period: 2, reduction_factor: 2}")
    path.write_text(path.read_text().replace("resources: {cpu: 0.5}", "resources: {cpu: auto}"))
    with contextlib.redirect_stdout(None):
        outcome = run_search(load_space(path), Options(f"sqlite:///{tmp_path / 'mlflow.db'}",
                                                       tmp_path / "ray"),
                             curve_trial(), register=None)

    assert (outcome.table["status"] == "completed").all()
    results = trial_results(tmp_path / "ray")
    assert len(results) == 2
    assert {result["cpus"] for rows in results.values() for result in rows} == {2}


def test_the_last_trial_goes_on_with_the_cpus_the_ended_ones_left_idle(
        ray_local, tmp_path: Path, monkeypatch) -> None:
    """Two trials on half a CPU each of the test's 2: once the 2-epoch one ends, the 12-epoch
    one is paused at a checkpointed epoch and goes on from it with both CPUs, in the same
    MLflow run, every epoch there once. (`WORTH_S` at 0: the curve trial's epochs take a
    fraction of a second, where a real one's restart would not pay.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(growth, "WORTH_S", 0.0)
    path = write_curve_space(
        tmp_path, epochs="{type: choice, choices: [2, 12]}", num_samples=2, max_concurrent=2,
        asha="{max_epochs: 12, grace_period: 12, reduction_factor: 2}",
        baselines="baselines:\n" + "".join(
            f"  {name}: {{conv_filters: [8], dense_units: [8], learning_rate: 0.01, "
            f"epochs: {epochs}}}\n" for name, epochs in (("short", 2), ("long", 12))))
    path.write_text(path.read_text().replace("  max_failures:", "  checkpoint_every_s: 0\n"
                                                                "  max_failures:"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    terminal = io.StringIO()
    with contextlib.redirect_stdout(terminal):
        outcome = run_search(load_space(path), Options(uri, tmp_path / "ray"),
                             curve_trial(epoch_s=0.3), register=None)

    table = outcome.table.set_index("baseline")
    assert (table["status"] == "completed").all()
    assert table.loc["long", "epochs_run"] == 12
    long_id = table.loc["long", "trial_id"]
    assert f"trial {long_id} goes on with 2 CPUs" in terminal.getvalue()
    results = [json.loads(line) for line in
               next((tmp_path / "ray").glob(f"*/part-1/{long_id}/result.json")).open()]
    assert [result["training_iteration"] for result in results] == list(range(1, 13))
    cpus = [result["cpus"] for result in results]
    assert cpus[0] == 0.5 and cpus[-1] == 2 and cpus == sorted(cpus)
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("curves").experiment_id],
                             f"tags.trial_id = '{long_id}'")[0]
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert sorted(epochs) == list(range(1, 13)) and run.info.status == "FINISHED"


class StopsOnce(TrialResultLogger):
    """Tune's result logger that stops the driver as Ctrl-C does (SIGINT: Tune's handler)
    as it logs the first result `when` takes (the result, and how many it has logged), once
    in the test's process, whichever copy of it Tune unpickled."""

    when: Callable[[dict[str, Any], int], bool] = staticmethod(lambda result, logged: False)
    stopped: str | None = None  # the trial whose result it stopped at
    logged = 0

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        super().on_trial_result(iteration, trials, trial, result, **info)
        cls = type(self)
        cls.logged += 1
        if cls.stopped is None and cls.when(result, cls.logged):
            cls.stopped = trial.trial_id
            signal.raise_signal(signal.SIGINT)


def stop_once(monkeypatch, when: Callable[[dict[str, Any], int], bool]) -> None:
    """The search's result logger is `StopsOnce`, stopping at `when`."""
    monkeypatch.setattr(tuning, "TrialResultLogger", StopsOnce)
    monkeypatch.setattr(StopsOnce, "when", staticmethod(when))
    monkeypatch.setattr(StopsOnce, "stopped", None)
    monkeypatch.setattr(StopsOnce, "logged", 0)


def test_a_search_stopped_as_asha_stops_a_trial_resumes_to_its_end(
        ray_local, tmp_path: Path, monkeypatch) -> None:
    """Stopped as Tune decides to stop a trial early, while the trial saves that epoch's
    checkpoint: Tune keeps the decision until the save lands, and saves it in its state with
    the trial still running. Resumed, Tune runs that trial again from its checkpoint before;
    ASHA, which starts anew, lets it go on, and Tune stops it by the decision it kept, its
    last result then not `done`: every resume said the search had been stopped again, and
    it never ended. One trial at a time: that trial is the one ASHA sees first when the
    search resumes."""
    monkeypatch.chdir(tmp_path)
    epochs = 8
    stop_once(monkeypatch, lambda result, logged: bool(
        result.get("done") and result["training_iteration"] < epochs
        and result.get("should_checkpoint")))
    space = load_space(write_curve_space(tmp_path, epochs=epochs, num_samples=6,
                                         max_concurrent=1, asha=ASHA))
    space = dataclasses.replace(space, search=dataclasses.replace(space.search,
                                                                  checkpoint_every_s=0))
    options = Options(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray")
    trial = curve_trial(epoch_s=0.05)
    with contextlib.redirect_stdout(None):
        with contextlib.suppress(SearchStopped):
            run_search(space, options, trial, register=None)
        stopped = StopsOnce.stopped
        assert stopped is not None
        outcome = run_search(space, dataclasses.replace(options, resume=True), trial,
                             register=None)
    table = outcome.table.set_index("trial_id")
    assert len(table) == 6 and set(table["status"]) <= {"completed", "stopped"}
    # the case this is about: that trial's last result, after its stop, is not `done`; it
    # reported its epoch 2 again, and reached 2 (ASHA's rung)
    rows = trial_results(tmp_path / "ray")[stopped]
    assert not rows[-1]["done"] and [row["epoch"] for row in rows] == [1, 2, 2]
    assert table.loc[stopped, ["epochs_run", "status"]].tolist() == [2, "stopped"]


def test_a_budgeted_search_stopped_and_resumed_trains_its_budget_in_all(
        ray_local, tmp_path: Path, monkeypatch) -> None:
    """The budget's count was unpickled as the part was made, at 0: resumed after 15 epochs,
    a search of 40 trained 40 more (and a new part for its trials not drawn, 40 more). Its
    budget spent, it resumes with a larger one."""
    monkeypatch.chdir(tmp_path)
    stop_once(monkeypatch, lambda result, logged: logged == 15)
    space = load_space(write_curve_space(tmp_path, epochs=8, num_samples=40,
                                         max_concurrent=2, asha=ASHA))
    options = Options(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray",
                      epoch_budget=40)
    trial = curve_trial(epoch_s=0.05)
    with contextlib.redirect_stdout(None):
        with pytest.raises(SearchStopped):
            run_search(space, options, trial, register=None)
        run_search(space, dataclasses.replace(options, resume=True), trial, register=None)
    reported = sum(len(rows) for rows in trial_results(tmp_path / "ray").values())
    assert 40 <= reported <= 40 + 2  # the reports of the trials running as the budget ended
    # resumed again, the budget spent: nothing runs, and the search says why
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        outcome = run_search(space, dataclasses.replace(options, resume=True), trial,
                             register=None)
    assert f"the epoch budget (40) is spent: the {40 - len(outcome.table)} trial(s) still " \
           f"to run are not run" in out.getvalue()
    assert sum(len(rows) for rows in trial_results(tmp_path / "ray").values()) == reported
    # resumed with a larger budget: the trials not made yet run in a new part, up to it (the
    # part the budget ended, restored with its old budget, had stopped at once, and every
    # resume said the search was stopped)
    with contextlib.redirect_stdout(None):
        more = run_search(space, dataclasses.replace(options, resume=True, epoch_budget=60),
                          trial, register=None)
    assert 60 <= sum(len(rows) for rows in trial_results(tmp_path / "ray").values()) <= 60 + 2
    assert len(more.table) > len(outcome.table)
