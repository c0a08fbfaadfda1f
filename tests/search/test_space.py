"""Space parsing: the shipped spaces load; every broken rule is named with file and key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.space import Choice, Fixed, FloatRange, IntRange, SpaceError, contains, load_space
from trainables.config import TrialConfig

SPACES = sorted((Path(__file__).parents[2] / "spaces").glob("*.yaml"))
BASE = {
    "name": "t",
    "data": {"root": "d", "classes": ["a", "b"]},
    "model": {"dense_dropout": {"type": "uniform", "low": 0.0, "high": 0.5}},
}


def write(tmp_path: Path, changes: dict) -> Path:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_spaces_load(path: Path) -> None:
    space = load_space(path)
    assert space.baselines, "every shipped space carries its report's models as baselines"


def test_parses_distributions_and_defaults(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, {
        "model.conv_filters": {"type": "choice", "choices": [16, 32]},
        "model.conv_blocks": {"type": "int", "low": 1, "high": 4, "step": 1},
        "train.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    }))
    assert space.params["conv_filters"] == Choice((16, 32))
    assert space.params["conv_blocks"] == IntRange(1, 4)
    assert space.params["learning_rate"] == FloatRange(1e-4, 1e-2, log=True)
    assert space.params["optimizer"] == Fixed("adam")
    assert space.data.root.is_absolute()
    assert space.search.max_failures == 2 and space.search.startup_trials is None


@pytest.mark.parametrize("changes, where, rule", [
    ({"colour": 1}, "colour", "unknown key"),
    ({"model.dropout": 0.5}, "model.dropout", "unknown key"),
    ({"model.conv_blocks": "three"}, "model.conv_blocks", "expected int"),
    ({"model.dense_dropout": {"type": "uniform", "low": 0.5, "high": 0.1}},
     "model.dense_dropout", "`low <= high` must hold"),
    ({"model.dense_dropout": -0.1}, "model.dense_dropout", "must be >= 0.0"),
    ({"model.flatten_dropout": 1.0}, "model.flatten_dropout", "must be < 1.0"),
    ({"train.optimizer": {"type": "choice", "choices": []}}, "train.optimizer.choices",
     "non-empty list"),
    ({"train.optimizer": "adagrad"}, "train.optimizer", "expected one of"),
    ({"train.learning_rate": {"type": "loguniform", "low": 0.0, "high": 1.0}},
     "train.learning_rate.low", "must be > 0.0"),
    ({"model.conv_filters": {"type": "normal", "low": 1, "high": 2}},
     "model.conv_filters.type", "expected one of choice"),
    ({"model.conv_filters": [16, 32]}, "model.conv_filters", "got a list"),
    ({"search.asha.grace_period": 9, "search.asha.max_epochs": 3}, "search.asha.grace_period",
     "must be <= max_epochs"),
    ({"search.resources.gpu": 1.5}, "search.resources.gpu", "must be whole"),
    ({"search.max_failures": -1}, "search.max_failures", "must lie in [0"),
    ({"search.startup_trials": 0}, "search.startup_trials", "must lie in [1"),
    ({"data.validation": 0.6, "data.test": 0.5}, "data", "sum to < 1"),
    ({"data.train": {"path": "x", "pattern": "^cat"}}, "data.train.pattern", "exactly one"),
    ({"data.classes": ["a"]}, "data.classes", "two or more"),
    ({"model.head": "sigmoid", "data.classes": ["a", "b", "c"]}, "model.head", "2 classes"),
    ({"baselines": {"b": {"dense_dropout": 0.9}}}, "baselines.b.dense_dropout",
     "outside the space"),
    ({"model.conv_blocks": {"type": "int", "low": 1, "high": 3},
      "baselines": {"b": {"conv_blocks": 3, "conv_filters": [8, 8]}}},
     "baselines.b.conv_filters", "needs 3 values"),
    ({"baselines": {"b": {"optimizer": "sgd"}}}, "baselines.b.optimizer", "outside the space"),
])
def test_broken_rules_name_file_key_and_rule(tmp_path: Path, changes: dict, where: str,
                                             rule: str) -> None:
    path = write(tmp_path, changes)
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {where}"), message
    assert rule in message, message


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="no such space file"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)


def test_baseline_takes_fixed_values_and_defaults(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, {"train.epochs": 7,
                                        "baselines": {"b": {"dense_dropout": 0.25}}}))
    config = space.baselines["b"]
    assert config.epochs == 7 and config.dense_dropout == 0.25
    assert config.learning_rate == TrialConfig().learning_rate
    assert space.baseline_points() == [{"dense_dropout": 0.25}]


def test_contains() -> None:
    assert contains(IntRange(2, 8, step=2), 6) and not contains(IntRange(2, 8, step=2), 5)
    assert contains(FloatRange(0.0, 0.5), 0.5) and not contains(Choice((1, 2)), 3)
