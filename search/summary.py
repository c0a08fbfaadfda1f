"""What the CLI prints when a search ends: the best trial, the baselines, where to look."""

from __future__ import annotations

from search.driver import Outcome


def print_summary(outcome: Outcome, tracking_uri: str) -> None:
    table = outcome.table
    counts = table["status"].value_counts() if not table.empty else {}
    print(f"\nsearch {outcome.name}: {len(table)} trials "
          f"({counts.get('completed', 0)} completed, {counts.get('stopped', 0)} stopped early "
          f"by ASHA, {counts.get('failed', 0)} failed)")
    if outcome.best is None:
        print("no trial reported a validation accuracy")
    else:
        b = outcome.best
        label = f" = baseline {b['baseline']}" if b["baseline"] else ""
        held_out = (f"; {outcome.evaluated_on} accuracy {outcome.test['accuracy']:.4f}"
                    if outcome.test else "")
        print(f"best trial {b['trial_id']}{label}: val_accuracy {b['best_val_accuracy']:.4f} "
              f"after {b['epochs_run']} epochs{held_out}")
        baselines = table[table["baseline"] != ""]
        for _, row in baselines.iterrows():
            delta = b["best_val_accuracy"] - row["best_val_accuracy"]
            print(f"  baseline {row['baseline']:<20} val_accuracy "
                  f"{row['best_val_accuracy']:.4f} ({row['status']}); best is {delta:+.4f}")
    print(f"results table: {outcome.results_path}")
    print(f"MLflow: experiment {outcome.name!r}, parent run {outcome.parent_run_id} at "
          f"{tracking_uri}")
    if outcome.model_uri:
        print(f"registered model: {outcome.model_uri}")
    print(f"open the UI: mlflow ui --backend-store-uri {tracking_uri}")
