"""The training loop of one trial. It knows nothing of Ray: it calls the `report` function it
is given after every epoch, with the epoch's metrics and the trained part of the model (what
training changes, to checkpoint; the whole model when nothing is frozen).

A trial with a frozen part whose images are not augmented trains its trained part on the
frozen part's cached output (`trainables.features`); any other trains the whole model on
pixels. Both give the same model: the frozen part runs in inference mode either way. One
whose training images are augmented still validates its trained part on the cached output
of the validation images, which are not augmented: the frozen part does not see them again
every epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from trainables.augment import augmentation
from trainables.config import TrialConfig
from trainables.features import features, frozen_key
from trainables.images import Arrays
from trainables.metrics import METRICS, ON_FEATURES, ON_PIXELS, TRAINED_ON
from trainables.models import Parts, augmented, build_parts, compile_model, frozen_part, join
from trainables.pipeline import make_dataset

Report = Callable[[dict[str, float | str], keras.Model], None]


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

    def __init__(self, report: Report, trained: keras.Model, trained_on: str):
        super().__init__()
        self.report = report
        self.trained, self.trained_on = trained, trained_on
        self._step_s = self._trace_s = 0.0
        self._began = 0.0
        self._traced: set[str] = set()

    def _begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._began = time.perf_counter()

    def _took(self, kind: str) -> None:
        seconds = time.perf_counter() - self._began
        if kind in self._traced:
            self._step_s += seconds
        else:
            self._traced.add(kind)
            self._trace_s += seconds

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._took("train")

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._took("test")

    on_train_batch_begin = on_test_batch_begin = _begin

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {name: float((logs or {})[name]) for name in METRICS}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise TrialFailed(f"metrics not finite at epoch {epoch + 1}: {metrics}")
        timings = {"step_s": self._step_s, "trace_s": self._trace_s}
        self._step_s = self._trace_s = 0.0
        self.report({**metrics, "epoch": epoch + 1, **timings, TRAINED_ON: self.trained_on},
                    self.trained)


class _ValidateOnFeatures(keras.callbacks.Callback):
    """Puts the trained part's loss and accuracy on the validation images' cached features
    into each epoch's logs, the numbers `fit`'s own validation of the whole model on pixels
    would put there. Listed first, so the callbacks after it (early stopping, the report)
    read them; `timers` time its steps as they time `fit`'s."""

    def __init__(self, trained: keras.Model, validation: tf.data.Dataset,
                 timers: list[keras.callbacks.Callback]):
        super().__init__()
        self.trained, self.validation, self.timers = trained, validation, timers

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        scores = self.trained.evaluate(self.validation, verbose=0, return_dict=True,
                                       callbacks=self.timers)
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in scores.items()})


def training_dataset(config: TrialConfig, train: Arrays, *, augment_in_model: bool = False
                     ) -> tf.data.Dataset:
    """The trial's training pipeline: shuffled, augmented unless the model augments,
    `steps_per_epoch` long."""
    return make_dataset(train.images, train.labels, config.batch_size, training=True,
                        seed=config.seed, steps=config.steps_per_epoch,
                        augment=None if augment_in_model else augmentation(config),
                        binary=config.head == "sigmoid")


def validation_dataset(config: TrialConfig, validation: Arrays) -> tf.data.Dataset:
    """The trial's validation pipeline: in order, `validation_steps` long."""
    return make_dataset(validation.images, validation.labels, config.batch_size,
                        training=False, seed=config.seed, steps=config.validation_steps,
                        binary=config.head == "sigmoid")


def train(config: TrialConfig, data: TrialData, report: Report, *, epochs: int,
          trained: keras.Model | None = None, initial_epoch: int = 0,
          feature_cache: bool = True, augment_in_model: bool | None = None) -> Parts:
    """Train for `epochs` epochs in all (so a model resumed at `initial_epoch` trains the rest)
    and return the model's parts.

    Pass `trained` (a checkpointed trained part, compiled, with its optimizer state) to go
    on from it; otherwise a new model is built and compiled. `feature_cache=False` trains the
    whole model on pixels whatever the trial. `augment_in_model` runs the augmentation in the
    training step instead of the input pipeline; by default it does where TensorFlow sees a
    GPU, since the pipeline runs on the trial's CPUs: about 500 images/s per core at 224 px
    here, a tenth of what an H100 trains a frozen VGG16 at (README, "On a GPU").
    """
    keras.utils.set_random_seed(config.seed)
    channels = data.train.images.shape[-1]
    if trained is None:
        parts = build_parts(config, data.n_classes, channels)
        compile_model(parts.trained, config)
    else:
        parts = Parts(frozen_part(config, channels), trained)
    augment = augmentation(config)
    if augment_in_model is None:
        augment_in_model = bool(tf.config.list_logical_devices("GPU"))
    validated_on: Arrays | None = None  # the validation images' features, where cached
    if feature_cache and parts.frozen is not None:
        key = frozen_key(config, parts.frozen)
        validated_on = features(parts.frozen, data.validation, key)
        if augment is None:  # and the training images': the trained part alone trains
            data = TrialData(features(parts.frozen, data.train, key), validated_on,
                             data.n_classes)
    on_features = validated_on is not None and augment is None
    if on_features:
        model, trained_on = parts.trained, ON_FEATURES
    else:
        model, trained_on = join(parts), ON_PIXELS
        if augment is not None and augment_in_model:
            model = augmented(model, augment)
        if model is not parts.trained:  # the whole model trains the trained part's weights
            compile_model(model, config, parts.trained.optimizer)
    reporter = _ReportEachEpoch(report, parts.trained, trained_on)
    callbacks: list[keras.callbacks.Callback] = []
    val_ds: tf.data.Dataset | None = None
    if validated_on is not None and not on_features:  # trains on augmented pixels
        callbacks.append(_ValidateOnFeatures(
            parts.trained, validation_dataset(config, validated_on), [reporter]))
    else:
        val_ds = validation_dataset(config, data.validation)
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            "val_loss", patience=config.early_stopping_patience, restore_best_weights=True))
    callbacks.append(reporter)
    model.fit(training_dataset(config, data.train, augment_in_model=augment_in_model),
              validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
              steps_per_epoch=config.steps_per_epoch, callbacks=callbacks, verbose=0,
              shuffle=False)  # the tf.data pipeline shuffles
    return parts
