"""The training loop of one trial. It knows nothing of Ray: it calls the `report` function it
is given after every epoch, with the epoch's metrics and the model (to checkpoint).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf

from trainables.config import TrialConfig
from trainables.images import Arrays
from trainables.models import build_model, compile_model
from trainables.pipeline import augmentation, make_dataset

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
Report = Callable[[dict[str, float], keras.Model], None]


class TrialFailed(RuntimeError):
    """The trial cannot go on (its loss diverged); the search marks it failed and goes on."""


@dataclass(frozen=True)
class TrialData:
    train: Arrays
    validation: Arrays
    n_classes: int


class _ReportEachEpoch(keras.callbacks.Callback):
    """Reports each epoch's metrics, with `step_s`: the seconds spent inside training and
    validation steps that epoch (the work a search exists to do; the benchmarks compare
    everything else against it), and `trace_s`: the seconds of the first training and the
    first validation step, in which TensorFlow traces the model's graph (a cost of starting
    a trial, not training)."""

    def __init__(self, report: Report):
        super().__init__()
        self.report = report
        self._step_s = self._trace_s = 0.0
        self._began = 0.0
        self._traced: set[str] = set()

    def _begin(self, batch: int, logs: dict | None = None) -> None:
        self._began = time.perf_counter()

    def _took(self, kind: str) -> None:
        seconds = time.perf_counter() - self._began
        if kind in self._traced:
            self._step_s += seconds
        else:
            self._traced.add(kind)
            self._trace_s += seconds

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._took("train")

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._took("test")

    on_train_batch_begin = on_test_batch_begin = _begin

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {name: float((logs or {})[name]) for name in METRICS}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise TrialFailed(f"metrics not finite at epoch {epoch + 1}: {metrics}")
        timings = {"step_s": self._step_s, "trace_s": self._trace_s}
        self._step_s = self._trace_s = 0.0
        self.report({**metrics, "epoch": epoch + 1, **timings}, self.model)


def trial_datasets(config: TrialConfig, data: TrialData) -> tuple[tf.data.Dataset,
                                                                   tf.data.Dataset]:
    """The trial's training (shuffled, augmented, `steps_per_epoch`) and validation
    pipelines."""
    binary = config.head == "sigmoid"
    train_ds = make_dataset(data.train.images, data.train.labels, config.batch_size,
                            training=True, seed=config.seed, steps=config.steps_per_epoch,
                            augment=augmentation(config), binary=binary)
    val_ds = make_dataset(data.validation.images, data.validation.labels, config.batch_size,
                          training=False, seed=config.seed, steps=config.validation_steps,
                          binary=binary)
    return train_ds, val_ds


def train(config: TrialConfig, data: TrialData, report: Report, *, epochs: int,
          model: keras.Model | None = None, initial_epoch: int = 0) -> keras.Model:
    """Train for `epochs` epochs in all (so a model resumed at `initial_epoch` trains the rest).

    Pass `model` to continue a checkpointed model; otherwise a new one is built and compiled.
    """
    keras.utils.set_random_seed(config.seed)
    if model is None:
        model = build_model(config, data.n_classes, data.train.images.shape[-1])
        compile_model(model, config)
    train_ds, val_ds = trial_datasets(config, data)
    callbacks: list[keras.callbacks.Callback] = []
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            "val_loss", patience=config.early_stopping_patience, restore_best_weights=True))
    callbacks.append(_ReportEachEpoch(report))
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
              steps_per_epoch=config.steps_per_epoch, callbacks=callbacks, verbose=0,
              shuffle=False)  # the tf.data pipeline shuffles
    return model
