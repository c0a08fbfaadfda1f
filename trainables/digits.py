"""The default data set: scikit-learn's bundled handwritten digits (no download), written
once as PNG files in class folders and then read like any user's folder of images."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(root: Path) -> int:
    """Write the 1,797 8x8 digits to `root/<digit>/<n>.png` unless `root` exists; returns the
    number of images written (none where another process wrote them first, as two searches
    started at once do). The folder appears whole or not at all."""
    if root.exists():
        return 0
    digits = load_digits()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        for n, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
            folder = tmp / str(label)
            folder.mkdir(exist_ok=True)
            pixels = (image * (255 / 16)).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{n:04d}.png")
        tmp.rename(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and root.is_dir():  # another process's rename came first
            return 0
        raise
    return len(digits.images)
