"""KerasTuner's Hyperband on the same model space, for the efficiency benchmark.

The space's define-by-run function (`search.sampling.DefineByRun`) is reused as it is:
`HyperParametersTrial` gives KerasTuner's `HyperParameters` the few `suggest_*` methods of
an Optuna trial that it calls, so both searches draw from exactly the same conditional space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt

from search.registration import predict_split
from search.sampling import DefineByRun
from search.space import Space
from search.trainable import load_trial_data
from trainables.config import TrialConfig
from trainables.data import Listing
from trainables.models import build_model, compile_model
from trainables.train import training_dataset, validation_dataset


class HyperParametersTrial:
    """An Optuna-trial face on KerasTuner's `HyperParameters`."""

    def __init__(self, hp: kt.HyperParameters):
        self.hp = hp
        self.params: dict[str, Any] = {}

    def _keep(self, name: str, value: Any) -> Any:
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return self._keep(name, self.hp.Choice(name, choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1,
                    log: bool = False) -> int:
        return int(self._keep(name, self.hp.Int(name, low, high, step=step,
                                                sampling="log" if log else "linear")))

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return float(self._keep(name, self.hp.Float(name, low, high,
                                                    sampling="log" if log else "linear")))


class SpaceHyperModel(kt.HyperModel):
    """Builds and fits the model of a trial of `space`, with the search's own data pipeline."""

    def __init__(self, space: Space, listing: Listing):
        super().__init__()
        self.space, self.listing = space, listing
        self.define = DefineByRun(space)

    def config(self, hp: kt.HyperParameters) -> TrialConfig:
        trial = HyperParametersTrial(hp)
        # duck-typed: it has the suggest_* methods the space's define-by-run function calls
        drawn = self.define(trial)  # type: ignore[arg-type]
        return TrialConfig.from_params({**drawn, **trial.params})

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        config = self.config(hp)
        channels = 1 if self.space.data.color_mode == "grayscale" else 3
        model = build_model(config, len(self.listing.classes), channels)
        compile_model(model, config)
        return model

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args: Any,
            **kwargs: Any) -> keras.callbacks.History:
        config = self.config(hp)
        data = load_trial_data(self.space, self.listing, config)
        return model.fit(training_dataset(config, data.train),
                         validation_data=validation_dataset(config, data.validation),
                         steps_per_epoch=config.steps_per_epoch,
                         verbose=0, shuffle=False, **kwargs)


def run_hyperband(space: Space, listing: Listing, folder: Path) -> dict[str, Any]:
    """Hyperband with the space's ASHA `max_epochs` and reduction factor, one iteration.
    Returns each trial's (epochs trained, best val_accuracy) in the order they ran, and the
    best model's test accuracy."""
    asha = space.search.asha
    tuner = kt.Hyperband(SpaceHyperModel(space, listing), objective="val_accuracy",
                         max_epochs=asha.max_epochs, factor=asha.reduction_factor,
                         hyperband_iterations=1, seed=space.seed, directory=str(folder),
                         project_name=space.name, overwrite=True)
    tuner.search()
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id))
    curve = []
    for t in trials:
        if t.score is None:
            continue
        epochs = t.hyperparameters.values["tuner/epochs"] - \
            t.hyperparameters.values.get("tuner/initial_epoch", 0)
        curve.append((epochs, float(t.score)))
    best_hp = tuner.get_best_hyperparameters(1)[0]
    model = tuner.get_best_models(1)[0]
    config = SpaceHyperModel(space, listing).config(best_hp)
    test, predicted = predict_split(model, space, listing, "test", config.image_size)
    return {"curve": curve, "test_accuracy": float((predicted == test.labels).mean())}
