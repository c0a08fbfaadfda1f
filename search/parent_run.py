"""The search's parent run in MLflow: opened with the search's settings, and at the end given
the overview a user compares searches by (the results table, the curves, the counts of trials
by how they ended, the best accuracy, Optuna's importances and views). The child runs are
`search/trial_logger.py`'s; the tag names, `search/tracking.py`'s."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import optuna
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.evaluation import curves_figure
from search.objective import METRIC
from search.results import TrialRecord, best_trial
from search.space import Space
from search.study_views import param_importances, study_figures
from search.tracking import RESULTS_PATH, SEARCH_FOLDER, log_figure, start_parent_run
from trainables.data import Listing


def open_parent_run(client: MlflowClient, space: Space, listing: Listing, folder: Path) -> str:
    """A new search's parent run, in the space's experiment: the search's settings as params,
    the space file as an artifact, the search's folder as a tag. Returns its id."""
    s = space.search
    parent = start_parent_run(client, space.name, folder.name, {
        "space_file": str(space.source), "seed": space.seed,
        "num_samples": s.num_samples, "sampler": s.sampler,
        "asha_max_epochs": s.asha.max_epochs, "asha_grace_period": s.asha.grace_period,
        "asha_reduction_factor": s.asha.reduction_factor,
        "cpu_per_trial": s.resources.cpu, "gpu_per_trial": s.resources.gpu,
        "classes": ",".join(listing.classes),
    })
    try:
        client.log_artifact(parent, str(space.source))
        client.set_tag(parent, SEARCH_FOLDER, str(folder))
    except BaseException:
        with contextlib.suppress(MlflowException):  # the store may be what failed
            client.delete_run(parent)  # no run left of a search that did not begin
        raise
    return parent


def record_results(client: MlflowClient, parent: str, table: pd.DataFrame,
                   records: list[TrialRecord], results_path: Path,
                   study: optuna.Study, draws_not_built: int) -> None:
    """The ended search's overview on its parent run (`table` is also written to
    `results_path`, which the run names); `draws_not_built`: the draws the search did not
    run because their model cannot be built."""
    table.to_parquet(results_path, index=False)
    client.set_tag(parent, RESULTS_PATH, str(results_path))
    _log_overview(client, parent, table, records, results_path)
    client.log_metric(parent, "draws_not_built", float(draws_not_built))
    _log_study(client, parent, study)


def _log_overview(client: MlflowClient, parent: str, table: pd.DataFrame,
                  records: list[TrialRecord], results_path: Path) -> None:
    client.log_artifact(parent, str(results_path))
    with tempfile.TemporaryDirectory() as folder:
        csv = Path(folder) / "results.csv"
        table.to_csv(csv, index=False)
        client.log_artifact(parent, str(csv))
    histories = {r.trial_id + (f" ({r.config['baseline']})" if r.config.get("baseline") else ""):
                 r.history for r in records}
    log_figure(client, curves_figure(histories, METRIC), "val_accuracy_curves.png", parent)
    counts = table["status"].value_counts()
    for status in ("completed", "stopped", "cut", "failed"):
        client.log_metric(parent, f"trials_{status}", float(counts.get(status, 0)))
    if best_trial(table) is not None:
        client.log_metric(parent, "best_val_accuracy", float(table["best_val_accuracy"].max()))


def _log_study(client: MlflowClient, parent: str, study: optuna.Study) -> None:
    """Optuna's importances (as JSON and a chart) and its views, on the parent run."""
    importances = param_importances(study)
    if importances:
        client.log_dict(parent, importances, "optuna_param_importances.json")
    for name, figure in study_figures(study).items():
        log_figure(client, figure, name, parent)
