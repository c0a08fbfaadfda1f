"""The space as an Optuna define-by-run function: what a trial asks for, conditionally.

Keys are visited in `TrialConfig` order. A key whose condition fails for the values drawn so
far (block 4's filters in a 3-block trial, momentum for Adam, any conv key under a pretrained
backbone) is never suggested, so Optuna learns only from parameters that took effect. Fixed
keys are returned as constants, not suggested.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.space import Choice, Fixed, FloatRange, IntRange, Param, Space, searched_params
from trainables.config import BASELINE_KEY, KEYS, TrialConfig, block_key


def suggest(trial: optuna.Trial, name: str, param: Param) -> Any:
    """Draw `name` from `param` through the trial (or return it, if fixed)."""
    if isinstance(param, Fixed):
        return param.value
    if isinstance(param, Choice):
        return trial.suggest_categorical(name, list(param.choices))
    if isinstance(param, IntRange):
        return trial.suggest_int(name, param.low, param.high, step=param.step, log=param.log)
    if isinstance(param, FloatRange):
        return trial.suggest_float(name, param.low, param.high, log=param.log)
    raise TypeError(f"not a parameter: {param!r}")


def draw(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Every key that exists for this trial, drawn or fixed, per-block keys expanded."""
    drawn: dict[str, Any] = {}
    for name, key in KEYS.items():
        if not key.exists(drawn):
            continue
        param = space.params[name]
        if key.per is None:
            drawn[name] = suggest(trial, name, param)
        else:
            for i in range(drawn[key.per]):
                drawn[block_key(name, i)] = suggest(trial, block_key(name, i), param)
    return drawn


def cannot_build(config: dict[str, Any]) -> str | None:
    """Why a drawn config's model cannot be built (its image too small for its conv stack),
    or None."""
    return TrialConfig.from_params(config).too_small()


class DefineByRun:
    """The function handed to Ray's `OptunaSearch(space=...)` (a class, so the searcher can be
    pickled with Ray's experiment state). It returns the constants of a trial (fixed keys,
    the seed, and which baseline the trial reproduces, if any), which Ray merges with the
    suggested params into the trial's config."""

    def __init__(self, space: Space):
        self.space = space
        self.baselines = {n: searched_params(space, c) for n, c in space.baselines.items()}

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        drawn = draw(trial, self.space)
        constants = {k: v for k, v in drawn.items() if k not in trial.params}
        searched = {k: v for k, v in drawn.items() if k in trial.params}
        baseline = next((n for n, p in self.baselines.items() if p == searched), "")
        return {**constants, "seed": self.space.seed, BASELINE_KEY: baseline}
