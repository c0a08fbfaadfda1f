"""Reading one YAML file's values by the rules of their keys, every error naming the file, the
key path, the rule and the value (and the command-line option, if one set it)."""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search.space.params import Choice, Fixed, FloatRange, IntRange, Param
from trainables.config import KEYS, Key


class SpaceError(ValueError):
    """A space file breaks a rule; the message names the file, the key path and the value."""


# Limits no real search meets; past them a value is a typo
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit
MAX_TRIALS, MAX_CONCURRENT = 100_000, 10_000
# A space's name is its MLflow experiment, its registered model and its search folders' prefix
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class Reader:
    """Reads one YAML file, keeping the file name for every error it raises, and which
    command-line option set a key path, for the errors about it."""

    def __init__(self, source: Path, options: Mapping[str, str]):
        self.source = source
        self.options = options

    def fail(self, path: str, message: str) -> SpaceError:
        """The error at key path `path` ("" for the file's top)."""
        option = f" (set by {self.options[path]})" if path in self.options else ""
        return SpaceError(f"{self.source}: {path + ': ' if path else ''}{message}{option}")

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
        try:
            found = file.is_file()
        except OSError as exc:  # is_file says False for a missing file, raises the rest
            raise self.fail(path, f"expected none, imagenet or a weights file, got {value!r} "
                            f"({exc.strerror}: {file})") from None
        if not found:
            raise self.fail(path, f"expected none, imagenet or a weights file, got {value!r} "
                            f"(no such file: {file})")
        problem = _not_weights(file)
        if problem:
            raise self.fail(path, f"{value!r} is not a weights file Keras loads: {problem}")
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

    def range(self, key: Key, raw: dict[str, Any], path: str, kind: str) -> Param:
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


def _not_weights(file: Path) -> str | None:
    """Why Keras' `load_weights` would refuse `file`, by its name and its container (a zip
    for `.keras`, HDF5 for `.h5`), not its layers; None if it would try it. Each trial that
    drew such a file failed as it was built."""
    name = file.name  # Keras reads the suffix as it is written
    if name.endswith(".keras"):
        return None if zipfile.is_zipfile(file) else "a .keras file is a zip archive; not this"
    if name.endswith((".h5", ".hdf5")):
        # here: the CLI reads every space, few name a weights file (h5py takes a while)
        from trainables.weights import hdf5_problem

        problem = hdf5_problem(file)
        return f"HDF5 cannot open it ({problem})" if problem else None
    if name.endswith(".weights.json"):
        return None
    return "expected a .keras, .weights.h5, .h5 or .weights.json file"
