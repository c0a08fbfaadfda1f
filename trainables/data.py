"""Where a space's images are and how they split: file listing only, no decoding.

Three layouts, as the reports met them, all expressed by `DataSpec`:
- class sub-folders, one folder per split (`train: training_set`, `test: test_set`);
- one class-folder tree split into train / validation / test by stratified, seeded fractions
  (`validation: 0.15`, `test: 0.15` carve those shares out of `train`);
- a flat folder whose file names carry the class (`{path: train, pattern: '^(cat|dog)\\.'}`).
Layouts mix per split (rock-paper-scissors: class folders for train and test, a flat
validation folder). The root is a local folder or a URI TensorFlow reads (see `files`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from trainables import files
from trainables.files import Location

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """The data on disk cannot make a training set: the message says what is missing."""


@dataclass(frozen=True)
class SplitSource:
    """A folder under the data root; with `pattern`, a flat folder whose file names give the
    class through the pattern's one group."""

    path: Path
    pattern: str | None = None


@dataclass(frozen=True)
class DataSpec:
    root: Location  # a local folder, or a URI TensorFlow reads (gs://...)
    train: SplitSource
    validation: SplitSource | float
    test: SplitSource | float | None
    classes: tuple[str, ...] | None = None
    color_mode: str = "rgb"
    generate: str | None = None
    cache_dir: Path | None = None

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "grayscale" else 3


@dataclass(frozen=True)
class Split:
    files: tuple[str, ...]
    labels: np.ndarray  # int32 class indices, aligned with files


@dataclass(frozen=True)
class Listing:
    """The image files of each split and their labels; `ignored` counts files skipped: not
    images, no match for a pattern, or of a class the space does not list."""

    classes: tuple[str, ...]
    splits: dict[str, Split]
    ignored: int = 0

    def counts(self) -> list[tuple[str, str, int]]:
        """(split, class, number of files) for every split and class, for reports."""
        return [
            (name, cls, int(np.sum(split.labels == i)))
            for name, split in self.splits.items()
            for i, cls in enumerate(self.classes)
        ]


@dataclass(frozen=True)
class _Scanned:
    """One split folder: its (file, class name) pairs, how many files were ignored, and the
    class folders that hold no image."""

    pairs: list[tuple[str, str]]
    ignored: int
    empty: list[str]


def _no_folder(folder: Location) -> DataError:
    """The error for a data folder that is not there: a file in its place, a URI TensorFlow
    cannot read (a scheme it has no file system for, a store it cannot reach), or nothing."""
    if files.is_uri(folder):
        if why := files.unreachable(str(folder)):
            return DataError(f"data folder {folder} cannot be read: {why}")
    elif Path(folder).is_file():
        return DataError(f"data folder {folder} is a file, not a folder of images")
    return DataError(f"data folder {folder} does not exist")


def _scan(folder: Location, source: SplitSource) -> _Scanned:
    if not files.is_dir(folder):
        raise _no_folder(folder)
    found: list[tuple[str, str]] = []
    ignored = 0
    empty: list[str] = []
    class_dirs, flat = files.entries(folder)
    if source.pattern is not None:
        regex = re.compile(source.pattern)
        for name in flat:
            match = regex.search(name)
            if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES and match:
                found.append((str(files.join(folder, name)), match.group(1)))
            else:
                ignored += 1
        return _Scanned(found, ignored, empty)
    for class_name in class_dirs:
        before = len(found)
        for path in files.files_below(files.join(folder, class_name)):
            if PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES:
                found.append((path, class_name))
            else:
                ignored += 1
        if len(found) == before:
            empty.append(class_name)
    return _Scanned(found, ignored, empty)


def list_images(spec: DataSpec, seed: int) -> Listing:
    """List every split's files and labels. Raises `DataError` if the data cannot be used."""
    try:
        if not files.is_dir(spec.root):
            raise _no_folder(spec.root)
        scans = {name: _scan(files.join(spec.root, str(source.path)), source)
                 for name in SPLITS if isinstance(source := getattr(spec, name), SplitSource)}
    except OSError as exc:  # what the system says of a folder or an entry it cannot list
        raise DataError(f"data folder {spec.root} cannot be read: {exc}") from None
    scanned = {name: scan.pairs for name, scan in scans.items()}
    ignored = sum(scan.ignored for scan in scans.values())
    if not scanned["train"]:
        raise DataError(f"no images found in {files.join(spec.root, str(spec.train.path))}")
    classes = spec.classes or tuple(sorted({cls for _, cls in scanned["train"]}))
    if len(classes) < 2:
        raise DataError(f"need at least 2 classes, found {list(classes)} in "
                        f"{files.join(spec.root, str(spec.train.path))}")
    index = {cls: i for i, cls in enumerate(classes)}
    splits: dict[str, Split] = {}
    for name, pairs in scanned.items():
        # an empty class folder is an error, not a class that silently vanishes
        for cls in scans[name].empty:
            if cls in index or spec.classes is None:
                folder = files.join(spec.root, str(getattr(spec, name).path), cls)
                raise DataError(f"class {cls!r} has no images in the {name} split: its folder "
                                f"{folder} holds no {', '.join(sorted(IMAGE_SUFFIXES))} file")
        # Listed classes select: other class folders are skipped (10 of 87 gemstones).
        ignored += sum(1 for _, cls in pairs if cls not in index)
        pairs = [(f, cls) for f, cls in pairs if cls in index]
        splits[name] = Split(tuple(f for f, _ in pairs),
                             np.array([index[c] for _, c in pairs], dtype=np.int32))
    splits = _carve(splits, spec, seed)
    for name, split in splits.items():
        for i, cls in enumerate(classes):
            if not np.any(split.labels == i):
                raise DataError(f"class {cls!r} has no images in the {name} split")
    return Listing(classes, {n: splits[n] for n in SPLITS if n in splits}, ignored)


def _carve(splits: dict[str, Split], spec: DataSpec, seed: int) -> dict[str, Split]:
    """Carve the fractional splits out of train, stratified by class and seeded."""
    train = splits["train"]
    fractions = [(n, getattr(spec, n)) for n in ("test", "validation")
                 if isinstance(getattr(spec, n), float)]
    remaining = 1.0
    for name, fraction in fractions:
        keep, carved = _stratified(train, fraction, remaining, seed, name)
        splits[name] = carved
        train = keep
        remaining -= fraction
    splits["train"] = train
    return splits


def _stratified(split: Split, fraction: float, remaining: float, seed: int, name: str
                ) -> tuple[Split, Split]:
    """`fraction` of all the images, out of `split`, which holds `remaining` of them."""
    # imported here: a trial's worker reads splits and never carves one (`search.worker`)
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(split.files))
    try:
        keep, carved = train_test_split(idx, test_size=fraction / remaining,
                                        random_state=seed, stratify=split.labels)
    except ValueError as exc:
        # scikit-learn's reason speaks of its own `test_size`, the share of what is left
        raise DataError(
            f"data.{name}: {fraction:g} of the images cannot be carved from the {len(idx)} "
            f"training images left, stratified by class ({exc}): each of the "
            f"{len(np.unique(split.labels))} classes needs an image on both sides; give "
            f"more images, another fraction, or a folder of its own") from None

    def take(rows: np.ndarray) -> Split:
        rows = np.sort(rows)
        return Split(tuple(split.files[i] for i in rows), split.labels[rows])

    return take(keep), take(carved)
