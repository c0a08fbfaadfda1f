"""The results of a search as a table: one row per trial, built from Ray's results.

Kept apart from Ray's `ResultGrid` by `TrialRecord`, so the table, the curves and the choice
of the best trial can be tested from hand-made records.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from search.objective import METRIC
from trainables.config import BASELINE_KEY
from trainables.metrics import TRAINED_ON

NUMBER = r"\d+(?:\.\d+)?(?:e[-+]?\d+)?"  # an epoch, a metric's value, a size


@dataclass(frozen=True)
class TrialRecord:
    """What one trial did: its config, its per-epoch metrics, how it ended."""

    trial_id: str
    config: dict[str, Any]
    history: pd.DataFrame  # one row per epoch: epoch, loss, accuracy, val_loss, val_accuracy
    wall_s: float
    error: str | None = None
    stopped_early: bool = False  # by ASHA
    cut_short: bool = False  # by the search's end (an epoch budget spent)
    path: str = ""

    @property
    def trained_on(self) -> str:
        """"features" (cached backbone output), "pixels", or "" before its first epoch."""
        h = self.history
        return str(h[TRAINED_ON].iloc[-1]) if TRAINED_ON in h and len(h) else ""


def trial_id_of(result: Any) -> str:
    """A Tune result's trial id: a trial that failed before its first report has no metrics;
    its folder is its id."""
    return str((result.metrics or {}).get("trial_id") or Path(result.path).name)


def records_from_grid(grid: Any, stopped: set[str],
                      cut: Collection[str] = ()) -> list[TrialRecord]:
    """One `TrialRecord` per trial of a Ray Tune `ResultGrid`: those in `stopped` ASHA
    stopped, those in `cut` the search's end cut short."""
    records = []
    for result in grid:
        metrics = result.metrics or {}
        history = result.metrics_dataframe if result.metrics_dataframe is not None \
            else pd.DataFrame()
        trial_id = trial_id_of(result)
        records.append(TrialRecord(
            trial_id=trial_id, config=dict(result.config or {}), history=history,
            wall_s=float(metrics.get("time_total_s", 0.0)),
            error=str(result.error).strip().splitlines()[-1][:300] if result.error else None,
            stopped_early=trial_id in stopped, cut_short=trial_id in cut, path=result.path,
        ))
    return records


def results_table(records: list[TrialRecord]) -> pd.DataFrame:
    """One row per trial: id, baseline name, status, epochs run, final and best metrics, wall
    seconds, then every config param. Sorted best first (failed trials last)."""
    rows = []
    for r in records:
        h = r.history
        has = METRIC in h and len(h) > 0
        status = "failed" if r.error else "stopped" if r.stopped_early else \
            "cut" if r.cut_short else "completed"
        rows.append({
            "trial_id": r.trial_id,
            "baseline": r.config.get(BASELINE_KEY, ""),
            "status": status,
            "stopped_early": r.stopped_early,
            # the epoch reached: a resumed trial reports again the epochs it trains again
            "epochs_run": int(h["epoch"].max()) if has else 0,
            "val_accuracy": float(h[METRIC].iloc[-1]) if has else float("nan"),
            "best_val_accuracy": float(h[METRIC].max()) if has else float("nan"),
            "val_loss": float(h["val_loss"].iloc[-1]) if has else float("nan"),
            "accuracy": float(h["accuracy"].iloc[-1]) if has else float("nan"),
            "wall_s": r.wall_s,
            TRAINED_ON: r.trained_on,
            "error": r.error or "",
            **{k: v for k, v in r.config.items() if k != BASELINE_KEY},
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("best_val_accuracy", ascending=False, na_position="last",
                             kind="stable").reset_index(drop=True)


def best_trial(table: pd.DataFrame, among: Collection[str] | None = None) -> pd.Series | None:
    """The trial with the highest validation accuracy at any epoch (its best checkpoint is the
    model kept), of those whose id is `among` if given (those with a checkpoint); None if no
    such trial reported one."""
    if table.empty:
        return None
    ok = table[table["best_val_accuracy"].notna()]
    if among is not None:
        ok = ok[ok["trial_id"].isin(among)]
    return None if ok.empty else ok.loc[ok["best_val_accuracy"].idxmax()]


def all_failed(table: pd.DataFrame) -> bool:
    """Whether the search ran trials and every one failed."""
    return len(table) > 0 and bool((table["status"] == "failed").all())


def commonest_failure(table: pd.DataFrame) -> tuple[str, int]:
    """The error most failed trials ended with, and how many did. Errors that differ only in
    their numbers are one failure (a loss that diverged at epoch 1 or 3, at whatever values),
    shown by the first trial's message."""
    errors = table.loc[table["status"] == "failed", "error"].astype(str)
    kinds = errors.str.replace(NUMBER, "#", regex=True)
    commonest = kinds.value_counts().index[0]
    return str(errors[kinds == commonest].iloc[0]), int((kinds == commonest).sum())
