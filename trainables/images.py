"""Decoded, resized images, cached once per node and shared by every trial that reads them.

A split decoded at one size and colour mode is written once as an `.npy` file keyed by the
files (path, size, mtime), the size and the mode. Trials open it memory-mapped, so the
operating system's page cache holds one copy per node however many trials read it, and a
later search on the same data decodes nothing. Unreadable images are skipped and counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainables import files
from trainables.data import Split

DECODED_AHEAD = 32  # images decoded ahead of their copy into the split's array (`_in_order`)
# part of every cache key: raised when `decode` gives other pixels for the same file (2: 16-bit
# PNGs, which were clipped before), so no cache of the old pixels is read. (Not for 32-bit and
# float images, clipped before too: only TIFFs have them, which a listing leaves out, as Keras'
# does; `search.predict` decodes any file it is given, and caches nothing)
DECODER = 2
Decoded = np.ndarray | None
DEFAULT_CACHE = Path(os.environ.get("KERAS_SEARCH_CACHE", Path.home() / ".cache" / "keras-search"))


@dataclass(frozen=True)
class Arrays:
    """A decoded split: uint8 images (n, size, size, channels), their labels, the files
    that could not be read, and the cache file the images are mapped from (None for arrays
    made in memory)."""

    images: np.ndarray
    labels: np.ndarray
    skipped: tuple[str, ...]
    source: Path | None = None


def decode(path: str, size: int, color_mode: str) -> np.ndarray | None:
    """One image as a uint8 (size, size, channels) array, or None if it cannot be read."""
    try:
        with Image.open(io.BytesIO(files.read_bytes(path)) if files.is_uri(path) else path) as img:
            mode = "L" if color_mode == "grayscale" else "RGB"
            # a JPEG decodes at the smallest 1/2, 1/4 or 1/8 scale still >= size (libjpeg's
            # DCT scaling): 1.7x the images per second on 500-px photos resized to 150
            img.draft(mode, (size, size))
            picture: Image.Image = img
            if img.mode.startswith("I"):  # 16 or 32 bits a pixel: a grayscale scan, say
                values = np.asarray(img)
                if values.min() < 0 or values.max() > 65535:
                    return None  # past 16 bits: no one 8-bit reading of it (as for floats)
                # Pillow's convert clips past 255 (such an image came out all but white);
                # its high byte, as libpng gives Keras' own loading of a 16-bit PNG
                picture = Image.fromarray((values >> 8).astype(np.uint8))
            elif img.mode == "F":  # floats (a TIFF): 0..1, 0..255 or a camera's counts, who
                return None  # knows; Pillow's convert clipped them (0..1 came out black)
            resized = picture.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(resized, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    return array[..., None] if array.ndim == 2 else array


def _key(split: Split, size: int, color_mode: str) -> str:
    digest = hashlib.sha256(f"{size}|{color_mode}|{DECODER}".encode())
    for name in split.files:
        size_bytes, mtime_ns = files.signature(name)
        # surrogateescape: a file name that is not UTF-8 keys the cache by its own bytes
        digest.update(f"|{name}|{size_bytes}|{mtime_ns}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


def load_arrays(split: Split, size: int, color_mode: str,
                cache_dir: Path | None = None) -> Arrays:
    """The split decoded at `size`, from the cache if present, else decoded and cached.

    Safe to call from several processes at once: each writes a private file and renames it
    into place, so a reader never sees half a file (at worst two processes decode the same
    split once each). Callers must not write to the returned (read-only) images.
    """
    folder = cache_dir or DEFAULT_CACHE
    folder.mkdir(parents=True, exist_ok=True)
    key = _key(split, size, color_mode)
    images_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if not (images_path.exists() and meta_path.exists()):
        _build(split, size, color_mode, images_path, meta_path)
    meta = json.loads(meta_path.read_text())
    images = np.load(images_path, mmap_mode="r")
    return Arrays(images, np.asarray(meta["labels"], dtype=np.int32), tuple(meta["skipped"]),
                  images_path)


def _build(split: Split, size: int, color_mode: str, images_path: Path, meta_path: Path) -> None:
    channels = 1 if color_mode == "grayscale" else 3
    kept: list[int] = []
    skipped: list[str] = []

    def rows(decoded: Iterator[Decoded]) -> Iterator[np.ndarray]:
        for index, array in enumerate(decoded):
            if array is None:
                skipped.append(split.files[index])
            else:
                kept.append(index)
                yield array[None]

    # threads, as PIL frees the GIL
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, \
            warnings.catch_warnings():
        # a photo over Pillow's warning limit (89 megapixels) is decoded and resized like any
        # other, without a warning on the terminal; over twice that, Pillow refuses it
        # (DecompressionBombError) and it is skipped as unreadable
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # each image written to the file as it comes, at most DECODED_AHEAD held beside: the
        # split is never in memory (blood cells' 11,700 images at 150 px are 790 MB)
        decoded = _in_order(pool, lambda f: decode(f, size, color_mode), split.files)
        write_atomic(images_path, lambda f: save_rows(
            f, np.dtype(np.uint8), (len(split.files), size, size, channels), rows(decoded)))
    meta = {"labels": split.labels[kept].tolist(), "skipped": skipped}
    write_atomic(meta_path, lambda f: f.write(json.dumps(meta).encode()))


def _in_order(pool: ThreadPoolExecutor, work: Callable[[str], Decoded],
              names: Sequence[str]) -> Iterator[Decoded]:
    """`pool.map(work, names)` with at most DECODED_AHEAD results done and waiting: `map`
    starts them all, and a pool that runs ahead of its reader holds what it made."""
    running: deque[Future[Decoded]] = deque()
    for name in names:
        running.append(pool.submit(work, name))
        if len(running) > DECODED_AHEAD:
            yield running.popleft().result()
    while running:
        yield running.popleft().result()


def save_rows(file: BinaryIO, dtype: np.dtype[Any], shape: tuple[int, ...],
              chunks: Iterator[np.ndarray]) -> None:
    """An `.npy` file of at most `shape[0]` rows written to `file` as `chunks` come, never
    all in memory: the file `np.save` would write of their concatenation.

    Fewer rows than `shape[0]` (images that could not be read) rewrite the header in place
    at the end: NumPy pads it so that the first axis's length can change without moving it.
    """
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": shape}
    np.lib.format.write_array_header_1_0(file, header)
    start, rows = file.tell(), 0
    for chunk in chunks:
        # as bytes: a bfloat16 array (NumPy's extension type) has no buffer of its own
        file.write(np.ascontiguousarray(chunk).view(np.uint8).data)
        rows += len(chunk)
    if rows != shape[0]:
        end = file.tell()
        file.seek(0)
        np.lib.format.write_array_header_1_0(file, {**header, "shape": (rows, *shape[1:])})
        assert file.tell() == start  # the same length, or it would have overwritten rows
        file.seek(end)


def write_atomic(path: Path, write: object) -> None:
    """Write `path` through `write(file)` into a private file renamed into place, so a reader
    never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)  # type: ignore[operator]
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if absent) for the length of a `with`, between
    the processes of a node: what one of them does, the others wait for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
