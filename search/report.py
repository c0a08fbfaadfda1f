"""`python -m search.report SPACE.yaml | EXPERIMENT`: a finished search, read back from MLflow.

Prints the trials table (the params that differ between trials), the best trial against the
baselines, and where each artifact is. Reads the newest search of the experiment unless
`--run` names a parent run. Needs nothing but the tracking store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.cli import EXIT_BAD_INPUT, add_tracking_uri
from search.results import best_trial
from search.server import TrackingError, check_server
from search.space import SpaceError, load_space
from search.summary import Outcome, print_summary
from search.tracking import REGISTERED_MODEL, RESULTS_PATH, open_store

SHOWN = ["trial_id", "baseline", "status", "epochs_run", "best_val_accuracy", "val_loss",
         "wall_s"]


class ReportError(Exception):
    """The search to report on is not in the tracking store."""


def experiment_name(target: str) -> str:
    """The experiment a command-line target names: a space file's `name`, or the name itself."""
    return load_space(target).name if target.endswith((".yaml", ".yml")) else target


def find_search(client: MlflowClient, experiment: str, run_id: str | None) -> mlflow.entities.Run:
    """The parent run `run_id`, or the newest search of `experiment`."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"no experiment named {experiment!r}: has this space been searched "
                          f"with this tracking URI?")
    if run_id:
        try:
            return client.get_run(run_id)
        except MlflowException as exc:
            raise ReportError(f"no run {run_id!r} at this tracking URI") from exc
    runs = client.search_runs([found.experiment_id], "tags.kind = 'search'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ReportError(f"experiment {experiment!r} holds no search")
    return runs[0]


def load_outcome(client: MlflowClient, parent: mlflow.entities.Run) -> Outcome:
    """The search's `Outcome`, from its parent run's tags, metrics and `results.parquet`."""
    run_id = parent.info.run_id
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, "results.parquet", folder)
        except (MlflowException, OSError) as exc:
            raise ReportError(f"search {run_id} has no results table (status "
                              f"{parent.info.status}): it did not finish") from exc
        table = pd.read_parquet(path)
    metrics, tags = parent.data.metrics, parent.data.tags
    split = next((s for s in ("test", "validation") if f"{s}_accuracy" in metrics), "")
    return Outcome(
        name=client.get_experiment(parent.info.experiment_id).name, table=table,
        results_path=tags.get(RESULTS_PATH, f"{parent.info.artifact_uri}/results.parquet"),
        parent_run_id=run_id, best=best_trial(table),
        held_out_accuracy=metrics.get(f"{split}_accuracy"), evaluated_on=split,
        model_uri=tags.get(REGISTERED_MODEL))


def trials_text(table: pd.DataFrame) -> str:
    """The table as text: the fixed columns, then only the params that differ between trials."""
    params = [c for c in table.columns if c not in SHOWN and c not in
              ("stopped_early", "val_accuracy", "accuracy", "error")]
    varying = [c for c in params if table[c].astype(str).nunique() > 1]
    return str(table[SHOWN + varying].to_string(index=False, float_format=lambda v: f"{v:.4g}",
                                                na_rep="-"))


def artifacts_text(client: MlflowClient, parent: mlflow.entities.Run, outcome: Outcome) -> str:
    """The parent run's artifacts and the best trial's (its model among them), with their
    folders."""
    runs = [("search (parent run)", parent)]
    if outcome.model_uri:
        name, number = outcome.model_uri.removeprefix("models:/").split("/")
        version = client.get_model_version(name, number)
        assert version.run_id is not None  # registered from a trial's run
        best = client.get_run(version.run_id)
        runs.append((f"best trial ({outcome.model_uri})", best))
    lines = []
    for label, run in runs:
        lines.append(f"{label} {run.info.run_id}: {run.info.artifact_uri}")
        lines += [f"  {a.path}" for a in client.list_artifacts(run.info.run_id)]
    if outcome.model_uri:
        lines.append(f"  the model: {outcome.model_uri} -> {version.source}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.report",
                                description=__doc__.splitlines()[0])
    p.add_argument("target", help="a space file (its name is the experiment) or an experiment")
    p.add_argument("--run", help="a search's parent run id (default: the newest search)")
    add_tracking_uri(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        check_server(args.tracking_uri)  # MLflow's client retries a dead one for minutes
        client = open_store(args.tracking_uri)
        parent = find_search(client, experiment_name(args.target), args.run)
        outcome = load_outcome(client, parent)
    except (ReportError, SpaceError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"search {parent.info.run_name} ({parent.info.status.lower()}), "
          f"started {pd.Timestamp(parent.info.start_time, unit='ms'):%Y-%m-%d %H:%M} UTC\n")
    print(trials_text(outcome.table))
    print_summary(outcome, args.tracking_uri)
    print("\nartifacts")
    print(artifacts_text(client, parent, outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
