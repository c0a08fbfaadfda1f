"""A search's data made ready before any trial: the bundled digits written if the space asks
for them, the splits listed, and each split decoded once at each image size the space can draw
into the node's shared cache, which trials then read. Bad data is a `DataError` here, before
Ray starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.console import say
from search.space import Choice, Fixed, Space
from trainables.data import DataError, Listing, list_images
from trainables.digits import write_digits
from trainables.files import shown
from trainables.images import DEFAULT_CACHE, load_arrays


def prepare_data(space: Space) -> Listing:
    """Write the bundled data if the space asks for it, list the splits, and decode every
    split once at each image size the space can draw (trials then read the shared cache).
    A class with no readable image in a split is a `DataError` naming it."""
    if space.data.generate == "digits":
        root = Path(space.data.root)  # generated data is local
        try:
            write_digits(root)
        except OSError as exc:
            raise DataError(f"cannot write the digits under {root}: {_reason(exc)}; pass "
                            f"--data-root a folder you can write to") from None
    listing = list_images(space.data, space.seed)
    param = space.params["image_size"]
    sizes = [param.value] if isinstance(param, Fixed) else \
        list(param.choices) if isinstance(param, Choice) else []  # ranges: decoded on demand
    skipped: set[str] = set()
    for size in sizes:
        for name, split in listing.splits.items():
            try:
                arrays = load_arrays(split, size, space.data.color_mode, space.data.cache_dir)
            except OSError as exc:  # the cache's folder or disk, or a file gone since listed
                cache = Path(space.data.cache_dir or DEFAULT_CACHE)
                where = Path(exc.filename or cache)  # a full disk names no file
                hint = "; set data.cache_dir in the space, or KERAS_SEARCH_CACHE, to a folder " \
                    "you can write to" if where.is_relative_to(cache) else ""
                raise DataError(f"cannot decode the {name} images into the cache: "
                                f"{where}: {_reason(exc)}{hint}") from None
            skipped.update(arrays.skipped)
            for i, cls in enumerate(listing.classes):
                if not np.any(arrays.labels == i):
                    files = [f for f, label in zip(split.files, split.labels, strict=True)
                             if label == i]
                    raise DataError(f"class {cls!r} has no readable image in the {name} split: "
                                    f"none of its {len(files)} files could be decoded, such as "
                                    f"{shown(files[0])}")
    if skipped:
        say(f"skipped {len(skipped)} unreadable images, for example {shown(min(skipped))}")
    return listing


def _reason(exc: OSError) -> str:
    """What went wrong, in the OS's words (a full disk: "No space left on device")."""
    return exc.strerror or str(exc)
