"""Optuna's own views of a finished study, as figures for the search's parent run: which
parameters mattered, accuracy against each parameter, every trial's per-epoch curve (where
ASHA's stops show), and the best value as the search went on."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna
from matplotlib.figure import Figure
from optuna.visualization import matplotlib as views

# trials named in a view's legend, at most: Optuna names each trial's curve, and past a few
# dozen the legend is taller than the chart (drawing 2,000 names took 10 s and 3 MB)
LEGEND_MAX = 20


def param_importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's importances of the parameters every completed trial has (its default
    evaluator); empty with fewer than two completed trials."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < 2:
        return {}  # Optuna would rank the params equal: nothing was compared
    try:
        with warnings.catch_warnings():  # "few trials in a regime": true of every small search
            warnings.simplefilter("ignore", UserWarning)
            return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):
        return {}


def study_figures(study: optuna.Study) -> dict[str, Figure]:
    """Figures by artifact file name; views with too few trials to draw are left out."""
    if not study.trials:
        return {}
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "optuna_intermediate_values.png": views.plot_intermediate_values,
        "optuna_optimization_history.png": views.plot_optimization_history}
    if completed:
        plots["optuna_slice.png"] = views.plot_slice
    if param_importances(study):
        plots["optuna_param_importances.png"] = views.plot_param_importances
    figures: dict[str, Figure] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # "identical low and high xlims" etc.
        for name, plot in plots.items():
            axes = plot(study)
            first = axes.flat[0] if hasattr(axes, "flat") else axes  # slice: one per param
            legend = first.get_legend()
            if legend is not None and len(legend.get_texts()) > LEGEND_MAX:
                legend.remove()
            figure = first.get_figure()
            assert isinstance(figure, Figure)
            figures[name] = figure
    return figures
