"""The whole search machinery (the driver, OptunaSearch on the journal study, ASHA, the MLflow
logger, progress, results, faults) on real Ray, Optuna and MLflow, with the curve trial
standing in for Keras: seconds, not minutes."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd
from conftest import write_curve_space
from mlflow.tracking import MlflowClient

from search.curve_trial import FAULT_EPOCH, curve_trial
from search.driver import Options, run_search
from search.folder import SearchFolder
from search.searcher import UNBUILDABLE
from search.space import load_space

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
