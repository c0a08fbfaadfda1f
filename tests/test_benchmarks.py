"""The benchmarks' accounting of a finished search, on Tune result files written here: no
search is run (the benchmarks themselves take minutes and are not part of the suite)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.trials import SearchTrials, core_time, epoch_rows

STARTED_AT = 1_796_000_000.0  # seconds since the epoch, as the trial writes it


def test_a_search_s_core_time_is_split_from_the_trials_own_timings(tmp_path: Path) -> None:
    trial = tmp_path / "part-1" / "t1"
    trial.mkdir(parents=True)
    epochs = [{"trial_id": "t1", "timestamp": int(STARTED_AT) + n, "started_at": STARTED_AT,
               "time_total_s": 2.0 * n, "step_s": 1.0, "trace_s": 0.5 if n == 1 else 0.0,
               "checkpoint_s": 0.1} for n in (1, 2)]
    (trial / "result.json").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    rows = epoch_rows(str(tmp_path / "results.parquet"))
    # pandas reads columns named like `started_at` and `timestamp` as dates unless told not to
    assert rows["started_at"].tolist() == [STARTED_AT, STARTED_AT]
    lifetimes = pd.DataFrame([{"trial_id": "t1", "start": STARTED_AT - 3.0,
                               "end": STARTED_AT + 4.5}])
    parts = core_time(SearchTrials(rows, lifetimes), wall_s=10.0, cpus=2.0, cpus_per_trial=1.0)
    assert parts == pytest.approx({
        "training and evaluation steps": 2.0,
        "graph tracing (each trial's first training and validation step)": 0.5,
        "checkpoints (saving the model)": 0.2,
        "in the trial, between steps (data, model build, tf.data, Keras, its import)": 1.3,
        "trial start (Ray handing it to its worker)": 3.0,
        "trial end (after its last epoch)": 0.5,
        "outside trials (Ray start, data prep, idle slots, MLflow, evaluation)":
            20.0 - (2.0 + 0.5 + 0.2 + 1.3 + 3.0 + 0.5),
    })
