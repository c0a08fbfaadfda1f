"""The results table and summary from hand-made trial records (no Ray, no training)."""

from __future__ import annotations

import re

import pandas as pd
from ray.tune import Result

from search.results import (
    TrialRecord,
    all_failed,
    best_trial,
    commonest_failure,
    records_from_grid,
    results_table,
)
from search.summary import Outcome, print_summary


def record(trial_id: str, trained_on: str | None, accuracies: list[float]) -> TrialRecord:
    history = pd.DataFrame({"epoch": range(1, len(accuracies) + 1), "val_accuracy": accuracies,
                            "val_loss": 0.5, "accuracy": 0.9, "loss": 0.4})
    if trained_on:
        history["trained_on"] = trained_on
    return TrialRecord(trial_id, {"backbone": "vgg16"}, history, wall_s=1.0)


def test_the_summary_counts_trials_trained_on_cached_features(capsys) -> None:
    table = results_table([record("a", "features", [0.5, 0.7]), record("b", "pixels", [0.6]),
                           record("c", "features", [0.4]), record("d", None, [])])
    assert table.set_index("trial_id")["trained_on"].to_dict() == \
        {"a": "features", "b": "pixels", "c": "features", "d": ""}
    print_summary(Outcome("gems", table, "r.parquet", "p", table.iloc[0], None, "", None),
                  "sqlite:///m.db")
    assert "2 trained on the frozen backbone's output computed once, 2 on pixels" in \
        capsys.readouterr().out


def table_of(*records: TrialRecord):
    return results_table(list(records))


def test_status_is_failed_then_stopped_then_cut_then_completed() -> None:
    table = table_of(
        TrialRecord("a", {}, curve([0.5, 0.6]), 1.0),
        TrialRecord("b", {}, curve([0.4]), 1.0, stopped_early=True),
        TrialRecord("c", {}, curve([0.3]), 1.0, error="out of memory", stopped_early=True),
        TrialRecord("d", {}, pd.DataFrame(), 1.0, error="could not build the model"),
        TrialRecord("e", {}, curve([0.2]), 1.0, cut_short=True))
    assert table.set_index("trial_id")["status"].to_dict() == \
        {"a": "completed", "b": "stopped", "c": "failed", "d": "failed", "e": "cut"}
    assert all_failed(table) is False
    assert commonest_failure(table)[1] == 1
    assert all_failed(table[table["status"] == "failed"])
    assert all_failed(table_of()) is False  # no trial ran: not "every trial failed"


def test_failures_that_differ_only_in_numbers_are_counted_as_one() -> None:
    def failed(trial_id: str, error: str) -> TrialRecord:
        return TrialRecord(trial_id, {}, pd.DataFrame(), 1.0, error=error)

    table = table_of(
        failed("a", "metrics not finite at epoch 1: {'loss': nan, 'accuracy': 0.375}"),
        failed("b", "out of memory"),
        failed("c", "metrics not finite at epoch 3: {'loss': nan, 'accuracy': 3.1e-05}"))
    assert commonest_failure(table) == \
        ("metrics not finite at epoch 1: {'loss': nan, 'accuracy': 0.375}", 2)


def test_rows_go_best_first_by_best_epoch_ties_kept_in_order_failed_last() -> None:
    table = table_of(
        TrialRecord("late", {}, curve([0.5, 0.9, 0.6]), 1.0),  # final 0.6, best 0.9
        TrialRecord("failed", {}, pd.DataFrame(), 1.0, error="boom"),
        TrialRecord("steady", {}, curve([0.7, 0.8]), 1.0),
        TrialRecord("tie", {}, curve([0.8]), 1.0))
    assert list(table["trial_id"]) == ["late", "steady", "tie", "failed"]
    assert list(table["val_accuracy"][:3]) == [0.6, 0.8, 0.8]
    assert list(table["epochs_run"]) == [3, 2, 1, 0]


def test_the_best_trial_is_the_best_at_any_epoch_among_those_with_a_checkpoint() -> None:
    table = table_of(TrialRecord("a", {}, curve([0.5, 0.9, 0.6]), 1.0),
                     TrialRecord("b", {}, curve([0.7, 0.8]), 1.0),
                     TrialRecord("c", {}, pd.DataFrame(), 1.0, error="boom"))
    assert best_trial(table)["trial_id"] == "a"
    assert best_trial(table, among={"b", "c"})["trial_id"] == "b"
    assert best_trial(table, among={"c"}) is None
    assert best_trial(table_of(TrialRecord("c", {}, pd.DataFrame(), 1.0, error="x"))) is None
    assert best_trial(table_of()) is None


def test_records_take_the_trial_id_from_its_results_or_its_folder() -> None:
    reported = Result(metrics={"trial_id": "abc123", "config": {"lr": 0.01},
                               "time_total_s": 3.5},
                      checkpoint=None, error=None, path="/r/part-1/abc123",
                      metrics_dataframe=curve([0.5]))
    # failed before its first report: no metrics; its folder is named by its id
    silent = Result(metrics={}, checkpoint=None, error=RuntimeError("boom\nout of memory"),
                    path="/r/part-1/def456_with_underscores")
    first, second = records_from_grid([reported, silent], stopped={"abc123"})
    assert (first.trial_id, first.config, first.wall_s, first.stopped_early) == \
        ("abc123", {"lr": 0.01}, 3.5, True)
    assert second.trial_id == "def456_with_underscores"
    assert second.error == "out of memory" and second.history.empty


def curve(accuracies: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"epoch": range(1, len(accuracies) + 1), "val_accuracy": accuracies,
                         "val_loss": 0.5, "accuracy": 0.9, "loss": 0.4})


def test_the_summary_says_why_baselines_and_some_trials_failed(capsys) -> None:
    table = table_of(
        TrialRecord("a", {"baseline": "good"}, curve([0.5, 0.6]), 1.0),
        TrialRecord("b", {"baseline": "diverges"}, curve([]), 1.0,
                    error="TrialFailed: metrics not finite at epoch 1"),
        TrialRecord("c", {"baseline": "cut"}, curve([]), 1.0),  # ended before its first epoch
        TrialRecord("d", {}, curve([]), 1.0, error="TrialFailed: metrics not finite at epoch 2"))
    print_summary(Outcome("t", table, "r.parquet", "p", table.iloc[0], None, "", None),
                  "sqlite:///m.db")
    out = capsys.readouterr().out
    assert "the commonest failure (2 of 2): TrialFailed: metrics not finite at epoch 1" in out
    assert re.search(r"baseline diverges +failed: TrialFailed: metrics not finite", out), out
    assert re.search(r"baseline cut +no epoch ended \(completed\)", out), out
    assert "nan" not in out
