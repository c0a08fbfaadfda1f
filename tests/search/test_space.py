"""Space parsing: the shipped spaces load; every broken rule is named with file and key path."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import yaml

from search.space import (
    Asha,
    Choice,
    Fixed,
    FloatRange,
    IntRange,
    Resources,
    SearchSettings,
    SpaceError,
    TrialResources,
    contains,
    extreme_draw,
    load_space,
)
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
    assert space.search.checkpoint_every_s == 60.0
    assert space.search.resources == Resources("auto", 0.0)


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
    ({"search.checkpoint_every_s": -1}, "search.checkpoint_every_s", "must lie in [0"),
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
    ({"model.image_size": 8, "baselines": {"b": {}}}, "baselines.b",
     "the model cannot be built: image_size 8 is too small for 2 conv blocks with kernels "
     "[3, 3] and valid padding"),
    ({"model.image_size": 8, "model.conv_blocks": {"type": "int", "low": 2, "high": 4}},
     "model",
     "no conv stack the space draws can be built, not even its shallowest: image_size 8 is "
     "too small for 2 conv blocks with kernels [3, 3] and valid padding"),
    # NaN passes every comparison; infinity every lower bound
    ({"train.learning_rate": float("nan")}, "train.learning_rate", "finite number, got nan"),
    ({"model.dense_dropout": {"type": "uniform", "low": 0.0, "high": float("nan")}},
     "model.dense_dropout.high", "finite number"),
    ({"model.l2": float("inf")}, "model.l2", "finite number, got inf"),
    ({"search.resources.cpu": float("nan")}, "search.resources.cpu", "finite number"),
    ({"search.resources.cpu": "all"}, "search.resources.cpu",
     "expected a number of CPUs or auto, got 'all'"),
    ({"search.resources.cpu": 0}, "search.resources.cpu", "must lie in [0.01, 1024]"),
    ({"train.epochs": float("inf")}, "train.epochs", "expected int"),
    # bounds no real search meets
    ({"model.conv_filters": 10**9}, "model.conv_filters", "must be <= 4096"),
    ({"model.dense_units": 10**9}, "model.dense_units", "must be <= 65536"),
    ({"train.batch_size": 10**12}, "train.batch_size", "must be <= 65536"),
    ({"train.steps_per_epoch": 10**12}, "train.steps_per_epoch", "must be <= 1000000"),
    ({"train.epochs": 10**6}, "train.epochs", "must be <= 10000"),
    ({"search.num_samples": 10**6}, "search.num_samples", "must lie in [1, 100000]"),
    ({"search.max_concurrent": 10**6}, "search.max_concurrent", "must lie in [1, 10000]"),
    ({"seed": -1}, "seed", "must lie in [0, 4294967295], got -1"),
    # the name is an MLflow experiment and registered model: ".." resolves to another path
    ({"name": ".."}, "name", "starting with a letter or digit"),
    ({"name": "cats/dogs"}, "name", "letters, digits"),
    ({"data.root": " "}, "data.root", "expected a folder path, got ' '"),
    # folders named 0 and 1, written unquoted, which YAML reads as numbers
    ({"data.classes": [0, 1]}, "data.classes", "got [0, 1] (folder names: quote 0 as \"0\")"),
    ({"model.backbone": "vgg16", "model.backbone_weights": "nowhere.h5"},
     "model.backbone_weights", "no such file"),
    # a name the system refuses to look up: Path.is_file raised OSError, a traceback
    ({"model.backbone": "vgg16", "model.backbone_weights": "ü" * 300 + ".h5"},
     "model.backbone_weights", "(File name too long: "),
])
def test_broken_rules_name_file_key_and_rule(tmp_path: Path, changes: dict, where: str,
                                             rule: str) -> None:
    path = write(tmp_path, changes)
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {where}"), message
    assert rule in message, message


@pytest.mark.parametrize("node_cpus, max_concurrent, cpu", [
    ([2.0], 2, 1.0),  # this machine: the reports' 1 CPU a trial
    ([8.0], 2, 4.0),  # a laptop: 2 trials on all 8 cores, not on 2 of them
    ([8.0], 3, 2.0),  # whole CPUs: 2 left over
    ([2.0], 4, 1.0),  # at least one (Tune runs the 2 that fit)
    ([8.0] * 4, 16, 2.0),  # a cluster: its CPUs shared among all the trials at once
    ([4.0, 64.0], 1, 64.0),  # never more than one node has
])
def test_cpu_auto_is_an_even_share_of_the_machine(node_cpus: list[float], max_concurrent: int,
                                                 cpu: float) -> None:
    auto = SearchSettings(max_concurrent=max_concurrent, resources=Resources("auto", 0.5))
    assert auto.trial_resources(node_cpus) == TrialResources(cpu, 0.5)
    fixed = SearchSettings(max_concurrent=max_concurrent, resources=Resources(0.5, 0.0))
    assert fixed.trial_resources(node_cpus) == TrialResources(0.5, 0.0)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="no such space file"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match=f"^{tmp_path}: a folder, not a space file$"):
        load_space(tmp_path)
    too_long = tmp_path / ("a" * 300 + ".yaml")  # as a file it cannot read: was a traceback
    with pytest.raises(SpaceError, match="^.*a.yaml: cannot be read: File name too long$"):
        load_space(too_long)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(SpaceError, match=f"^{empty}: empty; a space file holds at least "):
        load_space(empty)
    listed = tmp_path / "list.yaml"
    listed.write_text("- name: x\n")
    with pytest.raises(SpaceError, match=r"^\S+list.yaml: expected a mapping, got \["):
        load_space(listed)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    """YAML keeps the last of a key given twice and drops the other without a word: a line
    copied to be changed and left in place, or a second `search:` section replacing the
    first. Keys a merge (`<<`) brings in may be given again: that is what merging is for."""
    digits = SPACES[[p.stem for p in SPACES].index("digits")].read_text()
    copied = tmp_path / "copied.yaml"
    copied.write_text(digits.replace("  batch_size: 32\n", "  batch_size: 32\n  batch_size: 64\n"))
    line = digits.splitlines().index("  batch_size: 32") + 1
    with pytest.raises(SpaceError, match=rf"^{copied}: train.batch_size: given twice "
                                         rf"\(lines {line} and {line + 1}\); YAML would keep"):
        load_space(copied)
    sections = tmp_path / "sections.yaml"
    sections.write_text(digits + "search:\n  num_samples: 4\n")
    with pytest.raises(SpaceError, match=r": search: given twice \(lines \d+ and \d+\)"):
        load_space(sections)
    merged = tmp_path / "merged.yaml"
    merged.write_text(digits.replace("  small_cnn:\n", "  small_cnn: &small\n") +
                      "  faster:\n    <<: *small\n    learning_rate: 0.003\n")
    assert load_space(merged).baselines["faster"].learning_rate == 0.003


def test_a_file_that_is_no_space_is_refused_before_it_costs(tmp_path: Path) -> None:
    """A file passed by mistake, and aliases nested into billions of values (whose error
    would print them all: 8 levels of 9, 43 million strings, took 6 s and 1.2 GB to print,
    each level more 9x that), or into themselves: refused at once."""
    big = tmp_path / "labels.csv"
    big.write_text("id,label\n" * 200_000)
    with pytest.raises(SpaceError, match=f"^{big}: 1,800,000 bytes; a space file is YAML"):
        load_space(big)
    levels = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
        f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 12)]
    for text in (f"name: [{', '.join(levels)}]\ndata: {{root: d}}\n",
                 "name: &self [*self]\ndata: {root: d}\n"):
        bomb = tmp_path / "bomb.yaml"
        bomb.write_text(text)
        with pytest.raises(SpaceError, match="more than 100,000 values once its YAML aliases"):
            load_space(bomb)


def test_baseline_takes_fixed_values_and_defaults(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, {"train.epochs": 7,
                                        "baselines": {"b": {"dense_dropout": 0.25}}}))
    config = space.baselines["b"]
    assert config.epochs == 7 and config.dense_dropout == 0.25
    assert config.learning_rate == TrialConfig().learning_rate
    assert space.baseline_points() == [{"dense_dropout": 0.25}]


def test_the_extreme_draws_are_the_conv_stacks_that_shrink_images_most_and_least(
        tmp_path: Path) -> None:
    by_name = {p.stem: load_space(p) for p in SPACES}
    deepest = extreme_draw(by_name["cats_dogs"], deepest=True)
    assert deepest is not None and deepest.too_small() == (
        "image_size 64 is too small for 5 conv blocks with kernels [7, 7, 7, 7, 7] and valid "
        "padding")
    shallowest = extreme_draw(by_name["cats_dogs"], deepest=False)
    assert shallowest == TrialConfig(image_size=128, conv_blocks=2, conv_kernel_size=(3, 3),
                                     conv_padding="valid")  # the space fixes valid padding
    for name in ("digits", "rock_paper_scissors", "blood_cells"):  # all it draws is built
        deepest = extreme_draw(by_name[name], deepest=True)
        assert deepest is not None and deepest.too_small() is None, name
    # a pretrained backbone in every trial: no conv blocks of its own
    vgg = load_space(write(tmp_path, {"model.backbone": "vgg16"}))
    assert extreme_draw(vgg, deepest=True) is None and extreme_draw(vgg, deepest=False) is None
    same = load_space(write(tmp_path, {"model.image_size": 8, "model.conv_blocks": 3,
                                       "model.conv_padding": "same"}))
    deepest = extreme_draw(same, deepest=True)
    assert deepest is not None and deepest.too_small() is None  # 8 -> 4 -> 2 -> 1


@pytest.mark.parametrize("asha, planned, epoch, expected", [
    (Asha(9, 1, 3), 9, 0, 1 + 2 / 3 + 6 / 9),  # rungs at 1 and 3; 9 is the end, no rung
    (Asha(9, 1, 3), 9, 1, 2 + 6 / 3),  # kept at 1: sure to reach 3
    (Asha(9, 1, 3), 9, 8, 1.0),
    (Asha(9, 1, 3), 5, 0, 1 + 2 / 3 + 2 / 9),  # a trial of fewer epochs than ASHA's most
    (Asha(9, 1, 3), 1, 0, 1.0),
    (Asha(50, 5, 3), 50, 0, 5 + 10 / 3 + 30 / 9 + 5 / 27),
])
def test_asha_is_expected_to_let_one_trial_in_its_factor_past_each_rung(
        asha: Asha, planned: int, epoch: int, expected: float) -> None:
    assert asha.epochs_left(planned, epoch) == pytest.approx(expected)


def test_contains() -> None:
    assert contains(IntRange(2, 8, step=2), 6) and not contains(IntRange(2, 8, step=2), 5)
    assert contains(FloatRange(0.0, 0.5), 0.5) and not contains(Choice((1, 2)), 3)


def test_a_weights_file_keras_would_refuse_is_refused_at_load(tmp_path: Path) -> None:
    """Each trial that drew such a file failed as it was built: one not of a kind Keras
    loads, one cut short or of another kind under the right name, and a file of one
    architecture's weights drawn with several backbones."""
    whole = tmp_path / "vgg16_notop.h5"
    h5py.File(whole, "w").close()
    (tmp_path / "cut.h5").write_bytes(whole.read_bytes()[:100])
    (tmp_path / "model.keras").write_bytes(b"not a zip")
    (tmp_path / "resnet.pth").write_bytes(b"torch")
    for name, rule in [("cut.h5", "HDF5 cannot open it"),
                       ("model.keras", "a .keras file is a zip archive"),
                       ("resnet.pth", "expected a .keras, .weights.h5, .h5 or .weights.json")]:
        with pytest.raises(SpaceError, match=f": model.backbone_weights: .*{name}.* is not a "
                                             f"weights file Keras loads: {rule}"):
            load_space(write(tmp_path, {"model.backbone": "vgg16",
                                        "model.backbone_weights": str(tmp_path / name)}))
    assert load_space(write(tmp_path, {"model.backbone": "vgg16",
                                       "model.backbone_weights": str(whole)}))
    with pytest.raises(SpaceError, match=r": model.backbone_weights: a weights file holds one "
                                         r"backbone's weights .* model.backbone draws "
                                         r"\['vgg16', 'mobilenet_v2'\]"):
        load_space(write(tmp_path, {
            "model.backbone": {"type": "choice", "choices": ["none", "vgg16", "mobilenet_v2"]},
            "model.backbone_weights": str(whole)}))


def test_relative_paths_are_resolved_at_load(tmp_path: Path, monkeypatch) -> None:
    """Ray runs trials in folders of their own: a relative path must not reach them."""
    monkeypatch.chdir(tmp_path)
    h5py.File(tmp_path / "vgg.weights.h5", "w").close()
    space = load_space(write(tmp_path, {
        "data.cache_dir": "cache", "model.backbone": "vgg16",
        "model.backbone_weights": {"type": "choice", "choices": ["none", "vgg.weights.h5"]},
        "baselines": {"b": {"backbone_weights": "vgg.weights.h5"}}}))
    weights = str(tmp_path / "vgg.weights.h5")
    assert space.data.cache_dir == tmp_path / "cache"
    assert space.params["backbone_weights"] == Choice(("none", weights))
    assert space.baselines["b"].backbone_weights == weights
