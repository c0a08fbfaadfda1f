"""What a finished search produced, and the summary printed of it: by `search.run` when the
search ends, and by `search.report` later, from MLflow."""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from search.console import LOG_FILE
from search.results import commonest_failure
from trainables.metrics import ON_FEATURES, TRAINED_ON


@dataclass(frozen=True)
class Outcome:
    """A finished search: its table (one row per trial), where things are, the best trial."""

    name: str
    table: pd.DataFrame
    results_path: str
    parent_run_id: str
    best: pd.Series | None
    held_out_accuracy: float | None
    evaluated_on: str  # the split the best model was evaluated on: test, or validation
    model_uri: str | None


def print_summary(outcome: Outcome, tracking_uri: str) -> None:
    table = outcome.table
    counts = table["status"].value_counts() if not table.empty else {}
    cut = f"{counts['cut']} cut short by the epoch budget, " if counts.get("cut") else ""
    print(f"\nsearch {outcome.name}: {len(table)} trials "
          f"({counts.get('completed', 0)} completed, {counts.get('stopped', 0)} stopped early "
          f"by ASHA, {cut}{counts.get('failed', 0)} failed)")
    if 0 < counts.get("failed", 0) < len(table):  # all failed: search.run says so as an error
        error, count = commonest_failure(table)
        print(f"the commonest failure ({count} of {counts['failed']}): {error}")
    on_features = int((table[TRAINED_ON] == ON_FEATURES).sum()) if TRAINED_ON in table else 0
    if on_features:
        print(f"{on_features} trained on the frozen backbone's output computed once, "
              f"{len(table) - on_features} on pixels")
    if outcome.best is None:
        print("no trial reported a validation accuracy")
    else:
        b = outcome.best
        label = f" = baseline {b['baseline']}" if b["baseline"] else ""
        held_out = (f"; {outcome.evaluated_on} accuracy {outcome.held_out_accuracy:.4f}"
                    if outcome.held_out_accuracy is not None else "")
        print(f"best trial {b['trial_id']}{label}: val_accuracy {b['best_val_accuracy']:.4f} "
              f"after {b['epochs_run']} epochs{held_out}")
        baselines = table[table["baseline"] != ""]
        for _, row in baselines.iterrows():
            if math.isnan(row["best_val_accuracy"]):  # ended before its first epoch did
                why = (f"{row['status']}: {row['error']}" if row["error"] else
                       f"no epoch ended ({row['status']})")
                print(f"  baseline {row['baseline']:<20} {why}")
                continue
            delta = b["best_val_accuracy"] - row["best_val_accuracy"]
            print(f"  baseline {row['baseline']:<20} val_accuracy "
                  f"{row['best_val_accuracy']:.4f} ({row['status']}); best is {delta:+.4f}")
    print(f"results table: {outcome.results_path}")
    log = Path(outcome.results_path).parent / LOG_FILE
    if log.exists():
        print(f"log (Ray, Tune, TensorFlow, MLflow): {log}")
    print(f"MLflow: experiment {outcome.name!r}, parent run {outcome.parent_run_id} at "
          f"{tracking_uri}")
    if outcome.model_uri:
        print(f"registered model: {outcome.model_uri}")
    print("open the UI: " + (tracking_uri if tracking_uri.startswith("http") else
                             f"mlflow ui --backend-store-uri {tracking_uri}"))


def print_cache(folder: Path) -> None:
    """Where the decoded images and backbone features are kept on this machine, and their
    size: they outlive the search, for the next one, and each new file list, image size and
    backbone cut adds to them (a gigabyte or more for the reports' 150 to 224-px photos)."""
    size = 0
    for entry in os.scandir(folder) if folder.is_dir() else []:
        with contextlib.suppress(OSError):  # a file another search renames or deletes now
            size += entry.stat().st_size if entry.is_file() else 0
    shown = f"{size / 2**30:.1f} GB" if size >= 2**30 else f"{size / 2**20:.1f} MB"
    print(f"cache (decoded images, backbone features; later searches reuse it, delete it to "
          f"free the space): {folder}, {shown} on this machine")
