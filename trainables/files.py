"""Where images are read from: a local folder, or a URI that TensorFlow's file systems read
(`gs://` built in; `s3://`, `hdfs://` with tensorflow-io; `ram://` in tests), so a cluster can
read its data straight from a bucket. Local paths never import TensorFlow."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Location = Path | str  # a local Path, or a URI string


def is_uri(location: Location) -> bool:
    return isinstance(location, str) and "://" in location


def location(text: str) -> Location:
    """A space file's path: a URI as it is, else an absolute local path."""
    return text if "://" in text else Path(os.path.expandvars(os.path.expanduser(text))).absolute()


def shown(path: str) -> str:
    """`path` as text a terminal takes: a local file name that is not UTF-8 reaches Python
    with its bytes escaped as lone surrogates, which printing refuses."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def join(base: Location, *parts: str) -> Location:
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts if p != ".")])
    return Path(base).joinpath(*parts)


def _gfile() -> Any:
    import tensorflow as tf  # only for URIs: listing local data stays light

    return tf.io.gfile


def is_dir(folder: Location) -> bool:
    return _gfile().isdir(folder) if is_uri(folder) else Path(folder).is_dir()


def unreachable(uri: str) -> str | None:
    """Why TensorFlow cannot look at `uri` at all, or None: a scheme it has no file system
    for here, a store it cannot reach (where `is_dir` says only False)."""
    import tensorflow as tf

    try:
        _gfile().exists(uri)
    except tf.errors.UnimplementedError:
        return (f"TensorFlow has no file system for {uri.split('://')[0]}:// here (s3:// and "
                f"hdfs:// come with `pip install tensorflow-io`)")
    except tf.errors.OpError as exc:
        return str(exc.message).splitlines()[0]
    return None


def hidden(name: str) -> bool:
    """Not data, whatever its suffix: a dot file or folder (a Mac's `.DS_Store` and `._x.jpg`
    shadow files, Jupyter's `.ipynb_checkpoints` with its copies of the images) or the
    `__MACOSX` folder a Mac's zip unpacks to. Keras' own listing skips dot folders too."""
    return name.startswith(".") or name == "__MACOSX"


def entries(folder: Location) -> tuple[list[str], list[str]]:
    """Sorted names of the sub-folders and of the files directly in `folder`, hidden ones
    left out."""
    if is_uri(folder):
        gfile = _gfile()
        names = [n.rstrip("/") for n in gfile.listdir(folder) if not hidden(n.rstrip("/"))]
        dirs = [n for n in names if gfile.isdir(join(folder, n))]
        return sorted(dirs), sorted(set(names) - set(dirs))
    children = [p for p in Path(folder).iterdir() if not hidden(p.name)]
    return (sorted(p.name for p in children if p.is_dir()),
            sorted(p.name for p in children if p.is_file()))


def files_below(folder: Location) -> Iterator[str]:
    """Every file under `folder`, at any depth, in sorted order, but for hidden files and
    what hidden folders hold."""
    if is_uri(folder):
        for top, _, names in sorted(_gfile().walk(folder)):
            if not any(hidden(part) for part in str(top)[len(str(folder)):].split("/")):
                yield from (str(join(top, n)) for n in sorted(names) if not hidden(n))
    else:
        yield from (str(p) for p in sorted(Path(folder).rglob("*")) if p.is_file() and
                    not any(hidden(part) for part in p.relative_to(folder).parts))


def signature(path: str) -> tuple[int, int]:
    """(size in bytes, modification time in ns): enough to see a file changed."""
    if is_uri(path):
        stat = _gfile().stat(path)
        return stat.length, stat.mtime_nsec
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def read_bytes(path: str) -> bytes:
    if is_uri(path):
        import tensorflow as tf

        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                return bytes(f.read())
        except tf.errors.OpError as exc:  # not an OSError: make it one, as a local read's
            raise OSError(f"cannot read {path}: {exc.message}") from exc
    return Path(path).read_bytes()
