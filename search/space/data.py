"""The data section of a space: where the images are and how they split."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from search.space.reader import Reader
from trainables.data import DataSpec, SplitSource
from trainables.files import location


def read_data(reader: Reader, raw: Any) -> DataSpec:
    d = reader.mapping(raw, "data", {"root", "generate", "train", "validation", "test",
                                     "classes", "color_mode", "cache_dir"})
    if not isinstance(d.get("root"), str) or not d["root"].strip():
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
            # YAML reads folder names 0 and 1 as numbers: say how to keep them names
            numbers = [c for c in classes if isinstance(c, int | float)
                       and not isinstance(c, bool)] if isinstance(classes, list) else []
            quote = f" (folder names: quote {numbers[0]!r} as \"{numbers[0]}\")" if numbers else ""
            raise reader.fail("data.classes", f"expected a list of two or more class names, "
                              f"got {classes!r}{quote}")
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


def _split(reader: Reader, raw: Any, path: str, fraction: bool,
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
