"""The held-out evaluation of the best model: accuracy, per-class report, confusion matrix."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: the driver may run on a machine with no display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, classification_report


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """One probability per class and image: a one-unit sigmoid output p becomes [1 - p, p]."""
    if outputs.shape[-1] == 1:
        return np.concatenate([1 - outputs, outputs], axis=-1)
    return outputs


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """Class indices from a model's output: one sigmoid column or a softmax row per image."""
    if probabilities.shape[-1] == 1:
        return (probabilities[:, 0] >= 0.5).astype(np.int32)
    return np.asarray(probabilities.argmax(axis=-1), dtype=np.int32)


def evaluate(labels: np.ndarray, predicted: np.ndarray,
             classes: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy and per-class precision/recall/F1 (sklearn's report as a dict)."""
    report = classification_report(labels, predicted, labels=list(range(len(classes))),
                                   target_names=list(classes), output_dict=True,
                                   zero_division=0)
    return {"accuracy": float(np.mean(labels == predicted)), "report": report}


def confusion_figure(labels: np.ndarray, predicted: np.ndarray,
                     classes: tuple[str, ...], title: str) -> Figure:
    display = ConfusionMatrixDisplay.from_predictions(
        labels, predicted, labels=list(range(len(classes))), display_labels=list(classes),
        colorbar=False, xticks_rotation=45)
    display.ax_.set_title(title)
    figure: Figure = display.figure_  # scikit-learn's attribute is untyped
    figure.tight_layout()
    return figure


def curves_figure(histories: dict[str, Any], metric: str) -> Figure:
    """Every trial's per-epoch `metric` on one plot (the parent run's overview)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, history in histories.items():
        if metric in history and len(history):
            ax.plot(range(1, len(history) + 1), history[metric], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of every trial")
    if 0 < len(ax.lines) <= 20:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
