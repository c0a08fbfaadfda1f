"""The results table and summary from hand-made trial records (no Ray, no training)."""

from __future__ import annotations

import pandas as pd

from search.results import TrialRecord, results_table
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
