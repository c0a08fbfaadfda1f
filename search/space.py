"""The search space file: YAML parsed and validated once into frozen, typed objects.

Everything a search needs is in one file (see `spaces/*.yaml`). `load_space` is the only
entry point; it raises `SpaceError` naming the file, the key path and the rule broken.
Code past this edge trusts a `Space`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainables.config import KEYS, MAX_EPOCHS, SECTIONS, Key, TrialConfig, block_key_name
from trainables.data import DataSpec, SplitSource
from trainables.files import location


class SpaceError(ValueError):
    """A space file breaks a rule; the message names the file, the key path and the value."""


# Limits no real search meets; past them a value is a typo
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit
MAX_TRIALS, MAX_CONCURRENT = 100_000, 10_000
# A space's name is its MLflow experiment, its registered model and its search folders' prefix
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Fixed:
    value: Any


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


Param = Fixed | Choice | IntRange | FloatRange


def contains(param: Param, value: Any) -> bool:
    """Whether `value` can be drawn from `param`."""
    if isinstance(param, Fixed):
        return bool(value == param.value)
    if isinstance(param, Choice):
        return value in param.choices
    if isinstance(param, IntRange):
        return param.low <= value <= param.high and (value - param.low) % param.step == 0
    return bool(param.low <= value <= param.high)


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class Asha:
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: float = 3.0

    def epochs_for(self, epochs: int) -> int:
        """Epochs a trial runs: its own setting, capped by `max_epochs`."""
        return min(epochs, self.max_epochs)


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 10
    sampler: str = "tpe"
    startup_trials: int | None = None  # TPE's random trials first; None: tpe_startup_trials()
    max_concurrent: int = 2
    max_failures: int = 2  # retries of a trial whose worker died, each from its last checkpoint
    # trials with a frozen backbone and no augmentation train on its output, computed once
    # (trainables/features.py); false: every epoch runs the whole model, as before
    feature_cache: bool = True
    resources: Resources = Resources()
    asha: Asha = Asha()


@dataclass(frozen=True)
class Space:
    """A validated search space. `params` has one entry per config key; fixed keys are `Fixed`.
    `seed` is every trial's (the baselines' configs leave it at its default)."""

    name: str
    source: Path
    seed: int
    data: DataSpec
    params: Mapping[str, Param]
    search: SearchSettings
    baselines: Mapping[str, TrialConfig]

    def baseline_points(self) -> list[dict[str, Any]]:
        """Each baseline as the searched (non-fixed) Optuna params that reproduce it."""
        return [searched_params(self, b) for b in self.baselines.values()]


def describe(space: Space) -> dict[str, str]:
    """The space as flat {key path: value} text, to tell whether a resumed search still has
    the space it began with. The trial count is left out: a resume may raise it."""
    values = dataclasses.asdict(space)
    del values["source"], values["search"]["num_samples"]
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = repr(value)
    walk("", values)
    return flat


def changes(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """What differs between two `describe`s, one line per key path."""
    return [f"{key}: {before.get(key, '(none)')} -> {now.get(key, '(none)')}"
            for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]


def searched_params(space: Space, config: TrialConfig) -> dict[str, Any]:
    """The params of `config` that the space searches (fixed ones are not Optuna params)."""
    searched = {}
    for pname, value in config.to_params().items():
        name = pname if pname in KEYS else block_key_name(pname)
        if name in space.params and not isinstance(space.params[name], Fixed):
            searched[pname] = value
    return searched


class _Reader:
    """Reads one YAML file, keeping the file name for every error it raises, and which
    command-line option set a key path, for the errors about it."""

    def __init__(self, source: Path, options: Mapping[str, str]):
        self.source = source
        self.options = options

    def fail(self, path: str, message: str) -> SpaceError:
        option = f" (set by {self.options[path]})" if path in self.options else ""
        return SpaceError(f"{self.source}: {path}: {message}{option}")

    def mapping(self, value: Any, path: str, allowed: set[str] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {value!r}")
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise self.fail(f"{path}.{unknown[0]}" if path else unknown[0],
                                f"unknown key; expected one of: {', '.join(sorted(allowed))}")
        return value

    def typed(self, value: Any, kind: type, path: str, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        ok = (
            isinstance(value, bool) if kind is bool
            else isinstance(value, (int, float)) and not isinstance(value, bool)
            and (kind is float or isinstance(value, int) or float(value).is_integer())
            if kind in (int, float)
            else isinstance(value, kind)
        )
        if not ok:
            raise self.fail(path, f"expected {kind.__name__}"
                            f"{' or null' if optional else ''}, got {value!r}")
        if kind is float and not math.isfinite(value):  # NaN would pass every bound
            raise self.fail(path, f"expected a finite number, got {value!r}")
        return kind(value)

    def number(self, section: dict[str, Any], key: str, path: str, kind: type, default: Any,
               low: float, high: float) -> Any:
        where = f"{path}.{key}" if path else key
        value = self.typed(section.get(key, default), kind, where)
        if not low <= value <= high:
            raise self.fail(where, f"must lie in [{low}, {high}], got {value!r}")
        return value

    def check_value(self, key: Key, value: Any, path: str) -> Any:
        """Check a fixed value or a choice against the key's type, choices and bounds."""
        value = self.typed(value, key.kind, path, key.optional)
        if value is None:
            return None
        if key.choices is not None and value not in key.choices:
            raise self.fail(path, f"expected one of {list(key.choices)}, got {value!r}")
        self.check_bounds(key, value, path)
        return self.weights_file(value, path) if key is KEYS["backbone_weights"] else value

    def weights_file(self, value: str, path: str) -> str:
        """A `backbone_weights` value: `none`, `imagenet`, or a weights file, made absolute
        (trials run in their own folders) and checked to exist."""
        if value in ("none", "imagenet"):
            return value
        file = Path(value).expanduser().absolute()
        if not file.is_file():
            raise self.fail(path, f"expected none, imagenet or a weights file, got {value!r} "
                            f"(no such file: {file})")
        return str(file)

    def check_bounds(self, key: Key, value: float, path: str) -> None:
        if key.low is not None and (value < key.low or key.low_exclusive and value == key.low):
            raise self.fail(path, f"must be {'>' if key.low_exclusive else '>='} {key.low}, "
                            f"got {value!r}")
        if key.high is not None and (value > key.high or key.high_exclusive and value == key.high):
            raise self.fail(path, f"must be {'<' if key.high_exclusive else '<='} {key.high}, "
                            f"got {value!r}")

    def param(self, key: Key, raw: Any, path: str) -> Param:
        if not isinstance(raw, dict):
            if isinstance(raw, list):
                raise self.fail(path, "expected a value or a distribution mapping "
                                "({type: choice, choices: [...]}), got a list")
            return Fixed(self.check_value(key, raw, path))
        kind = raw.get("type")
        if kind == "choice":
            self.mapping(raw, path, {"type", "choices"})
            choices = raw.get("choices")
            if not isinstance(choices, list) or not choices:
                raise self.fail(f"{path}.choices", f"expected a non-empty list, got {choices!r}")
            return Choice(tuple(self.check_value(key, c, f"{path}.choices[{i}]")
                                for i, c in enumerate(choices)))
        if kind in ("int", "uniform", "loguniform"):
            return self.range(key, raw, path, kind)
        raise self.fail(f"{path}.type", "expected one of choice, int, uniform, loguniform, "
                        f"got {kind!r}")

    def range(self, key: Key, raw: dict, path: str, kind: str) -> Param:
        allowed = {"type", "low", "high"} | ({"step", "log"} if kind == "int" else set())
        self.mapping(raw, path, allowed)
        if key.kind not in (int, float) or kind == "int" and key.kind is not int:
            raise self.fail(f"{path}.type", f"a {kind} range needs a numeric "
                            f"{'integer ' if kind == 'int' else ''}key, this key is "
                            f"{key.kind.__name__}")
        num = int if kind == "int" else float
        for bound in ("low", "high"):
            if bound not in raw:
                raise self.fail(f"{path}.{bound}", "missing")
        low = self.check_value(key, self.typed(raw["low"], num, f"{path}.low"), f"{path}.low")
        high = self.check_value(key, self.typed(raw["high"], num, f"{path}.high"),
                                f"{path}.high")
        if low > high:
            raise self.fail(path, f"`low <= high` must hold, got (low={low}, high={high})")
        log = kind == "loguniform" or bool(raw.get("log", False))
        if log and low <= 0:
            raise self.fail(f"{path}.low", f"a log range needs low > 0, got {low}")
        if kind == "int":
            step = self.typed(raw.get("step", 1), int, f"{path}.step")
            if step < 1:
                raise self.fail(f"{path}.step", f"must be >= 1, got {step}")
            return IntRange(low, high, step, log)
        return FloatRange(low, high, log)


def load_space(path: str | os.PathLike[str],
               overrides: Mapping[str, tuple[str, Any]] | None = None) -> Space:
    """Read and validate a space file. Raises `SpaceError` for any broken rule.

    `overrides` maps a key path (`search.num_samples`) to the command-line option that set it
    and its value; the value replaces the file's and is checked by the same rules, and an
    error about it names the option."""
    source = Path(path)
    overrides = overrides or {}
    reader = _Reader(source, {key: option for key, (option, _) in overrides.items()})
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise SpaceError(f"{source}: no such space file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{source}: not valid YAML: {exc}") from None
    top = _overridden(reader.mapping(raw, "", {"name", "seed", "data", *SECTIONS, "search",
                                                "baselines"}),
                      {key: value for key, (_, value) in overrides.items()})
    name = top.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise reader.fail("name", "expected 1 to 100 letters, digits, _ . - starting with a "
                          f"letter or digit, got {name!r}")
    seed = reader.number(top, "seed", "", int, 0, low=0, high=MAX_SEED)
    if "data" not in top:
        raise reader.fail("data", "missing")
    data = _data(reader, top["data"])
    params = _params(reader, top)
    search = _search(reader, top.get("search") or {})
    baselines = {
        bname: _baseline(reader, params, braw, f"baselines.{bname}")
        for bname, braw in reader.mapping(top.get("baselines") or {}, "baselines").items()
    }
    space = Space(name, source, seed, data, params, search, baselines)
    _check_head(reader, space)
    return space


def _overridden(top: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the file's mapping with each dotted key path set to its value."""
    top = copy.deepcopy(top)
    for path, value in values.items():
        *parents, last = path.split(".")
        section = top
        for key in parents:
            if not isinstance(section.get(key), dict):
                section[key] = {}
            section = section[key]
        section[last] = value
    return top


def _params(reader: _Reader, top: dict[str, Any]) -> dict[str, Param]:
    params: dict[str, Param] = {}
    for section in SECTIONS:
        keys = {n for n, k in KEYS.items() if k.section == section}
        raw = reader.mapping(top.get(section) or {}, section, keys)
        for name in keys:
            key = KEYS[name]
            default = getattr(TrialConfig(), name)
            value = raw.get(name, default[0] if key.per else default)
            params[name] = reader.param(key, value, f"{section}.{name}")
    return params


def _data(reader: _Reader, raw: Any) -> DataSpec:
    d = reader.mapping(raw, "data", {"root", "generate", "train", "validation", "test",
                                     "classes", "color_mode", "cache_dir"})
    if not isinstance(d.get("root"), str):
        raise reader.fail("data.root", f"expected a folder path, got {d.get('root')!r}")
    generate = d.get("generate")
    if generate not in (None, "digits"):
        raise reader.fail("data.generate", f"expected digits or nothing, got {generate!r}")
    color_mode = d.get("color_mode", "rgb")
    if color_mode not in ("rgb", "grayscale"):
        raise reader.fail("data.color_mode", f"expected rgb or grayscale, got {color_mode!r}")
    classes = d.get("classes")
    if classes is not None:
        if (not isinstance(classes, list) or len(classes) < 2
                or not all(isinstance(c, str) and c for c in classes)):
            raise reader.fail("data.classes", f"expected a list of two or more class names, "
                              f"got {classes!r}")
        if len(set(classes)) != len(classes):
            raise reader.fail("data.classes", f"class names must be unique, got {classes!r}")
    train = _split(reader, d.get("train", "."), "data.train", fraction=False)
    validation = _split(reader, d.get("validation", 0.2), "data.validation", fraction=True)
    test = _split(reader, d.get("test"), "data.test", fraction=True, optional=True)
    carved = sum(s for s in (validation, test) if isinstance(s, float))
    if carved >= 1:
        raise reader.fail("data", f"validation and test fractions must sum to < 1, got {carved}")
    cache_dir = d.get("cache_dir")
    return DataSpec(
        # absolute now: trial processes run in other working directories
        root=location(d["root"]),
        train=train, validation=validation, test=test,  # type: ignore[arg-type]
        classes=tuple(classes) if classes else None, color_mode=color_mode,
        generate=generate,
        cache_dir=Path(cache_dir).expanduser().absolute() if cache_dir else None,
    )


def _split(reader: _Reader, raw: Any, path: str, fraction: bool,
           optional: bool = False) -> SplitSource | float | None:
    """A split is a folder under the root, `{path, pattern}`, or a fraction carved from train."""
    if raw is None and optional:
        return None
    if fraction and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if not 0 < raw < 1:
            raise reader.fail(path, f"a fraction of train must lie in (0, 1), got {raw!r}")
        return float(raw)
    if isinstance(raw, str):
        return SplitSource(Path(raw))
    m = reader.mapping(raw, path, {"path", "pattern"})
    if not isinstance(m.get("path"), str):
        raise reader.fail(f"{path}.path", f"expected a folder path, got {m.get('path')!r}")
    pattern = m.get("pattern")
    if pattern is not None:
        try:
            groups = re.compile(pattern).groups
        except (re.error, TypeError) as exc:
            raise reader.fail(f"{path}.pattern",
                              f"not a valid regular expression: {exc}") from None
        if groups != 1:
            raise reader.fail(f"{path}.pattern", "needs exactly one (group) that captures the "
                              f"class name, got {groups} in {pattern!r}")
    return SplitSource(Path(m["path"]), pattern)


def _search(reader: _Reader, raw: Any) -> SearchSettings:
    s = reader.mapping(raw, "search", {"num_samples", "sampler", "startup_trials",
                                       "max_concurrent", "max_failures", "feature_cache",
                                       "resources", "asha"})
    sampler = s.get("sampler", "tpe")
    if sampler not in ("tpe", "random"):
        raise reader.fail("search.sampler", f"expected tpe or random, got {sampler!r}")
    r = reader.mapping(s.get("resources") or {}, "search.resources", {"cpu", "gpu"})
    a = reader.mapping(s.get("asha") or {}, "search.asha",
                       {"max_epochs", "grace_period", "reduction_factor"})
    max_epochs = reader.number(a, "max_epochs", "search.asha", int, 10, 1, MAX_EPOCHS)
    grace_period = reader.number(a, "grace_period", "search.asha", int, 1, 1, MAX_EPOCHS)
    if grace_period > max_epochs:
        if "search.asha.max_epochs" not in reader.options:
            raise reader.fail("search.asha.grace_period", f"must be <= max_epochs "
                              f"({max_epochs}), got {grace_period}")
        grace_period = max_epochs  # a shorter search asked for on the command line
    asha = Asha(max_epochs, grace_period,
                reader.number(a, "reduction_factor", "search.asha", float, 3.0, 1.01, 100))
    gpu = reader.number(r, "gpu", "search.resources", float, 0.0, 0, 64)
    if gpu > 1 and not gpu.is_integer():
        raise reader.fail("search.resources.gpu", f"a share above 1 must be whole, got {gpu}")
    return SearchSettings(
        num_samples=reader.number(s, "num_samples", "search", int, 10, 1, MAX_TRIALS),
        sampler=sampler,
        startup_trials=reader.number(s, "startup_trials", "search", int, None, 1, MAX_TRIALS)
        if "startup_trials" in s else None,
        max_concurrent=reader.number(s, "max_concurrent", "search", int, 2, 1, MAX_CONCURRENT),
        max_failures=reader.number(s, "max_failures", "search", int, 2, 0, 100),
        feature_cache=reader.typed(s.get("feature_cache", True), bool, "search.feature_cache"),
        resources=Resources(reader.number(r, "cpu", "search.resources", float, 1.0, 0.01, 1024),
                            gpu),
        asha=asha,
    )


def _baseline(reader: _Reader, params: Mapping[str, Param], raw: Any,
              path: str) -> TrialConfig:
    """A baseline: fixed values for some keys; the rest take the space's fixed value or Keras'
    default. The result must lie inside the space, so Optuna can enqueue it as a trial."""
    b = reader.mapping(raw, path, set(KEYS))
    values: dict[str, Any] = {}
    for name, key in KEYS.items():
        param = params[name]
        if name not in b:
            if isinstance(param, Fixed) and not key.per:
                values[name] = param.value
            continue
        if key.per:
            if not isinstance(b[name], list):
                raise reader.fail(f"{path}.{name}", f"expected a list, one value per block, "
                                  f"got {b[name]!r}")
            values[name] = tuple(reader.check_value(key, v, f"{path}.{name}[{i}]")
                                 for i, v in enumerate(b[name]))
        else:
            values[name] = reader.check_value(key, b[name], f"{path}.{name}")
    for name, key in KEYS.items():  # per-block keys left out: the space's fixed value per block
        if key.per and name not in values and isinstance(params[name], Fixed):
            count = values.get(key.per, getattr(TrialConfig(), key.per))
            values[name] = (params[name].value,) * count  # type: ignore[union-attr]
    config = TrialConfig(**values)
    for pname, value in config.to_params().items():
        if pname == "seed":
            continue
        name = pname if pname in KEYS else block_key_name(pname)
        key = KEYS[name]
        if key.per and len(getattr(config, name)) != getattr(config, key.per):
            raise reader.fail(f"{path}.{name}", f"needs {getattr(config, key.per)} values "
                              f"({key.per}), got {len(getattr(config, name))}")
        if not contains(params[name], value):
            given = "" if name in b else " (not given: default)"
            raise reader.fail(f"{path}.{name}", f"{value!r}{given} lies outside the space "
                              f"{_describe(params[name])}")
    return config


def _describe(param: Param) -> str:
    if isinstance(param, Fixed):
        return f"(fixed at {param.value!r})"
    if isinstance(param, Choice):
        return f"(choices {list(param.choices)})"
    return f"(range [{param.low}, {param.high}])"


def _check_head(reader: _Reader, space: Space) -> None:
    head = space.params["head"]
    sigmoid = contains(head, "sigmoid")
    n_classes = len(space.data.classes) if space.data.classes else None
    if sigmoid and n_classes is not None and n_classes != 2:
        raise reader.fail("model.head", f"a sigmoid head needs exactly 2 classes, "
                          f"data.classes lists {n_classes}")
