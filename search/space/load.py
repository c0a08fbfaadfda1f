"""`load_space`, the one entry point: the whole file read and validated, section by section,
into a `Space`. Code past this edge trusts it."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from search.space.data import read_data
from search.space.document import read_document
from search.space.params import Choice, Fixed, Param, contains
from search.space.reader import MAX_CONCURRENT, MAX_SEED, MAX_TRIALS, NAME, Reader
from search.space.settings import AUTO, Asha, Resources, SearchSettings
from search.space.space import Space, extreme_draw, weights_files
from trainables.config import KEYS, MAX_EPOCHS, SECTIONS, TrialConfig, block_key_name


def load_space(path: str | os.PathLike[str],
               overrides: Mapping[str, tuple[str, Any]] | None = None) -> Space:
    """Read and validate a space file. Raises `SpaceError` for any broken rule.

    `overrides` maps a key path (`search.num_samples`) to the command-line option that set it
    and its value; the value replaces the file's and is checked by the same rules, and an
    error about it names the option."""
    source = Path(path)
    overrides = overrides or {}
    reader = Reader(source, {key: option for key, (option, _) in overrides.items()})
    raw = read_document(reader)
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
    data = read_data(reader, top["data"])
    params = _params(reader, top)
    search = _search(reader, top.get("search") or {})
    baselines = {
        bname: _baseline(reader, params, braw, f"baselines.{bname}")
        for bname, braw in reader.mapping(top.get("baselines") or {}, "baselines").items()
    }
    space = Space(name, source, seed, data, params, search, baselines)
    _check_head(reader, space)
    _check_weights_file(reader, params)
    shallowest = extreme_draw(space, deepest=False)
    too_small = shallowest.too_small() if shallowest else None
    if too_small:
        raise reader.fail("model", f"no conv stack the space draws can be built, not even "
                          f"its shallowest: {too_small}")
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


def _params(reader: Reader, top: dict[str, Any]) -> dict[str, Param]:
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


def _search(reader: Reader, raw: Any) -> SearchSettings:
    """The search section; a key left out takes `SearchSettings`' default."""
    d = SearchSettings()
    s = reader.mapping(raw, "search", {"num_samples", "sampler", "startup_trials",
                                       "max_concurrent", "max_failures", "feature_cache",
                                       "checkpoint_every_s", "resources", "asha"})
    sampler = s.get("sampler", d.sampler)
    if sampler not in ("tpe", "random"):
        raise reader.fail("search.sampler", f"expected tpe or random, got {sampler!r}")
    r = reader.mapping(s.get("resources") or {}, "search.resources", {"cpu", "gpu"})
    a = reader.mapping(s.get("asha") or {}, "search.asha",
                       {"max_epochs", "grace_period", "reduction_factor"})
    max_epochs = reader.number(a, "max_epochs", "search.asha", int, d.asha.max_epochs, 1,
                               MAX_EPOCHS)
    grace_period = reader.number(a, "grace_period", "search.asha", int, d.asha.grace_period, 1,
                                 MAX_EPOCHS)
    if grace_period > max_epochs:
        if "search.asha.max_epochs" not in reader.options:
            raise reader.fail("search.asha.grace_period", f"must be <= max_epochs "
                              f"({max_epochs}), got {grace_period}")
        grace_period = max_epochs  # a shorter search asked for on the command line
    asha = Asha(max_epochs, grace_period,
                reader.number(a, "reduction_factor", "search.asha", float,
                              d.asha.reduction_factor, 1.01, 100))
    gpu = reader.number(r, "gpu", "search.resources", float, d.resources.gpu, 0, 64)
    if gpu > 1 and not gpu.is_integer():
        raise reader.fail("search.resources.gpu", f"a share above 1 must be whole, got {gpu}")
    return SearchSettings(
        num_samples=reader.number(s, "num_samples", "search", int, d.num_samples, 1,
                                  MAX_TRIALS),
        sampler=sampler,
        startup_trials=reader.number(s, "startup_trials", "search", int, None, 1, MAX_TRIALS)
        if "startup_trials" in s else None,
        max_concurrent=reader.number(s, "max_concurrent", "search", int, d.max_concurrent, 1,
                                     MAX_CONCURRENT),
        max_failures=reader.number(s, "max_failures", "search", int, d.max_failures, 0, 100),
        feature_cache=reader.typed(s.get("feature_cache", d.feature_cache), bool,
                                   "search.feature_cache"),
        checkpoint_every_s=reader.number(s, "checkpoint_every_s", "search", float,
                                         d.checkpoint_every_s, 0, 86400),
        resources=Resources(_cpu(reader, r), gpu),
        asha=asha,
    )


def _cpu(reader: Reader, resources: dict[str, Any]) -> float | Literal["auto"]:
    """`search.resources.cpu`: CPUs per trial, or `auto` (the default: an even share of the
    machine, `SearchSettings.trial_resources`)."""
    if resources.get("cpu", AUTO) == AUTO:
        return AUTO
    if isinstance(resources["cpu"], str):
        raise reader.fail("search.resources.cpu",
                          f"expected a number of CPUs or {AUTO}, got {resources['cpu']!r}")
    return float(reader.number(resources, "cpu", "search.resources", float, None, 0.01, 1024))


def _baseline(reader: Reader, params: Mapping[str, Param], raw: Any,
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
    _check_inside(reader, params, config, set(b), path)
    too_small = config.too_small()
    if too_small:
        raise reader.fail(path, f"the model cannot be built: {too_small}")
    return config


def _check_inside(reader: Reader, params: Mapping[str, Param], config: TrialConfig,
                  given: set[str], path: str) -> None:
    """A baseline's every value lies inside the space, one per block of a per-block key."""
    for pname, value in config.to_params().items():
        if pname == "seed":
            continue
        name = pname if pname in KEYS else block_key_name(pname)
        key = KEYS[name]
        if key.per and len(getattr(config, name)) != getattr(config, key.per):
            raise reader.fail(f"{path}.{name}", f"needs {getattr(config, key.per)} values "
                              f"({key.per}), got {len(getattr(config, name))}")
        if not contains(params[name], value):
            default = "" if name in given else " (not given: default)"
            raise reader.fail(f"{path}.{name}", f"{value!r}{default} lies outside the space "
                              f"{_describe(params[name])}")


def _describe(param: Param) -> str:
    if isinstance(param, Fixed):
        return f"(fixed at {param.value!r})"
    if isinstance(param, Choice):
        return f"(choices {list(param.choices)})"
    return f"(range [{param.low}, {param.high}])"


def _check_weights_file(reader: Reader, params: Mapping[str, Param]) -> None:
    """A weights file holds one backbone's weights: drawn with another backbone, it failed
    each such trial as it was built."""
    files, backbones = weights_files(params)
    if files and len(backbones) > 1:
        raise reader.fail(f"{KEYS['backbone_weights'].section}.backbone_weights",
                          f"a weights file holds one backbone's weights ({files[0]}), but "
                          f"{KEYS['backbone'].section}.backbone draws {backbones}: fix the "
                          f"backbone, or use imagenet")


def _check_head(reader: Reader, space: Space) -> None:
    head = space.params["head"]
    sigmoid = contains(head, "sigmoid")
    n_classes = len(space.data.classes) if space.data.classes else None
    if sigmoid and n_classes is not None and n_classes != 2:
        raise reader.fail("model.head", f"a sigmoid head needs exactly 2 classes, "
                          f"data.classes lists {n_classes}")
