"""The define-by-run space: conditional keys are never suggested, baselines replay exactly."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search.sampling import DefineByRun
from search.space import load_space
from trainables.config import BASELINE_KEY, TrialConfig

SPACES = Path(__file__).parents[2] / "spaces"


def ask(space, study: optuna.Study) -> tuple[optuna.Trial, dict]:
    trial = study.ask()
    constants = DefineByRun(space)(trial)
    return trial, {**trial.params, **constants}


def test_per_block_keys_exist_only_for_existing_blocks() -> None:
    space = load_space(SPACES / "cats_dogs.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial, params = ask(space, study)
        n = params["conv_blocks"]
        assert {k for k in trial.params if k.startswith("conv_filters_")} == \
            {f"conv_filters_{i}" for i in range(n)}
        assert ("momentum" in trial.params) == (params["optimizer"] == "sgd")
        assert ("rotation" in trial.params) == params["augment"]
        config = TrialConfig.from_params(params)
        assert len(config.conv_filters) == n == len(config.conv_kernel_size)


def test_backbone_trials_suggest_no_conv_keys() -> None:
    space = load_space(SPACES / "blood_cells.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial, params = ask(space, study)
        seen.add(params["backbone"])
        has_conv = any(k.startswith("conv_") for k in trial.params)
        assert has_conv == (params["backbone"] == "none")
        assert ("backbone_trainable_layers" in trial.params) == (params["backbone"] != "none")
    assert seen == {"none", "vgg16"}


def test_fixed_keys_are_constants_not_optuna_params() -> None:
    space = load_space(SPACES / "digits.yaml")
    trial, params = ask(space, optuna.create_study())
    assert "image_size" not in trial.params and params["image_size"] == 16
    assert params["seed"] == space.seed


@pytest.mark.parametrize("name", ["cats_dogs", "blood_cells", "rock_paper_scissors",
                                  "gemstones", "digits"])
def test_enqueued_baselines_replay_exactly(name: str) -> None:
    space = load_space(SPACES / f"{name}.yaml")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for point in space.baseline_points():
        study.enqueue_trial(point)
    for bname, expected in space.baselines.items():
        _, params = ask(space, study)
        assert params[BASELINE_KEY] == bname
        assert TrialConfig.from_params(params).to_params() == \
            expected.replace(seed=space.seed).to_params()
