"""A space file read as one YAML value, before any rule of a space is checked: its size, its
encoding, its syntax, a key given twice, and aliases that expand past what a space holds."""

from __future__ import annotations

from typing import Any

import yaml

from search.space.reader import Reader, SpaceError

# A space file is a few KB of YAML. Past these it is not one: a file passed by mistake, or
# aliases nested to make a short file billions of values (which an error would then print)
MAX_FILE_BYTES, MAX_VALUES = 1_000_000, 100_000


def read_document(reader: Reader) -> Any:
    """The YAML value of `reader`'s file (a `SpaceError` for a file that is not one)."""
    source = reader.source
    try:
        size = source.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpaceError(f"{source}: {size:,} bytes; a space file is YAML of a few KB "
                             f"(see spaces/)")
        twice, raw = _parsed(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpaceError(f"{source}: no such space file") from None
    except IsADirectoryError:
        raise SpaceError(f"{source}: a folder, not a space file") from None
    except OSError as exc:  # no permission to read it, a name too long: was a traceback
        raise SpaceError(f"{source}: cannot be read: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{source}: not valid YAML: {exc}") from None
    if raw is None:
        raise SpaceError(f"{source}: empty; a space file holds at least name and data "
                         f"(see spaces/)")
    if not _at_most(raw, MAX_VALUES):
        raise SpaceError(f"{source}: more than {MAX_VALUES:,} values once its YAML aliases "
                         f"are expanded; a space holds a few hundred")
    if twice:
        key_path, first, second = twice
        raise reader.fail(key_path, f"given twice (lines {first} and {second}); YAML would keep "
                                f"the second and drop the first without a word: remove one")
    return raw


def _parsed(text: str) -> tuple[tuple[str, int, int] | None, Any]:
    """The YAML document in `text`: a key one of its mappings gives twice (`_given_twice`,
    looked for before YAML's merge keys add the keys they merge), and its value."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        return _given_twice(node), loader.construct_document(node)
    finally:
        loader.dispose()


def _given_twice(root: yaml.Node) -> tuple[str, int, int] | None:
    """A key that a mapping of the document gives twice, as (key path, first line, second
    line); None if none is. Each node is walked once, however many aliases name it."""
    seen: set[int] = set()
    stack = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                where = f"{path}.{name}" if path else name
                line = key.start_mark.line + 1
                if name in lines:
                    return where, lines[name], line
                lines[name] = line
                stack.append((value, where))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return None


def _at_most(raw: Any, limit: int) -> bool:
    """Whether `raw` holds at most `limit` values, an alias counted each time it is used."""
    stack, count = [raw], 0
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            return False
        if isinstance(value, dict):
            stack.extend([*value.keys(), *value.values()])
        elif isinstance(value, list):
            stack.extend(value)
    return True
