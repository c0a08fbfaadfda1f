"""Images per second through the training input pipeline, against the reports' way.

Ours: decode and resize once into the shared cache, then tf.data with one affine
augmentation layer. Theirs: Keras 2's `ImageDataGenerator.flow_from_directory`, which decodes,
resizes and augments every image again every epoch, in Python. Same JPEG folder, same
augmentation, same batch size, over the same epochs: 25, the median of the reports' trainings
(6 to 80). Our first epoch includes listing the folder and decoding it; the speedup is also
given over the first 1, 3 and 10 epochs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

# Keras 3 keeps Keras 2's ImageDataGenerator here (the reports' class, unchanged)
from keras.src.legacy.preprocessing.image import ImageDataGenerator
from PIL import Image

from trainables.augment import augmentation
from trainables.config import TrialConfig
from trainables.data import DataSpec, SplitSource, list_images
from trainables.images import load_arrays
from trainables.pipeline import make_dataset
from trainables.resources import freeze_imports

AUGMENT: dict[str, Any] = {"rotation": 20.0, "width_shift": 0.2, "height_shift": 0.2, "shear": 0.2,
           "zoom": 0.2, "horizontal_flip": True}


def write_jpegs(root: Path, per_class: int, size: int = 150, seed: int = 0) -> Path:
    """Two class folders of photo-sized noisy JPEGs (the reports' images are ~150-500 px)."""
    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i:04d}.jpg", quality=90)
    return root


def ours(root: Path, cache: Path, image_size: int, batch: int, epochs: int) -> list[float]:
    """Seconds per epoch, the first one with listing and decoding into the cache."""
    config = TrialConfig(image_size=image_size, batch_size=batch, augment=True, **AUGMENT)
    seconds, started = [], time.perf_counter()
    freeze_imports()  # as the search's driver does before it decodes
    whole = SplitSource(Path("."))  # (validation is required; only train is read)
    listing = list_images(DataSpec(root=root, train=whole, validation=whole, test=None), seed=0)
    arrays = load_arrays(listing.splits["train"], image_size, "rgb", cache)
    data = make_dataset(arrays.images, arrays.labels, batch, training=True, seed=0,
                        augment=augmentation(config))
    for _ in range(epochs):
        for _batch in data:
            pass
        seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
    return seconds


def theirs(root: Path, image_size: int, batch: int, epochs: int) -> list[float]:
    """Seconds per epoch."""
    generator = ImageDataGenerator(
        rescale=1 / 255, rotation_range=AUGMENT["rotation"],
        width_shift_range=AUGMENT["width_shift"], height_shift_range=AUGMENT["height_shift"],
        shear_range=AUGMENT["shear"], zoom_range=AUGMENT["zoom"], horizontal_flip=True)
    flow = generator.flow_from_directory(str(root), target_size=(image_size, image_size),
                                         batch_size=batch, class_mode="categorical", seed=0)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for _step in range(len(flow)):
            next(flow)
        seconds.append(time.perf_counter() - started)
    return seconds


def run(folder: Path, per_class: int, epochs: int = 25, image_size: int = 64,
        batch: int = 32) -> dict[str, Any]:
    """Both pipelines on the same folder: images per second over all epochs, and our
    speedup over the first k of them."""
    root = write_jpegs(folder / "jpegs", per_class)
    images = 2 * per_class
    ours_s = np.cumsum(ours(root, folder / "cache", image_size, batch, epochs))
    theirs_s = np.cumsum(theirs(root, image_size, batch, epochs))
    return {"images": images, "epochs": epochs,
            "ours_images_per_s": images * epochs / ours_s[-1],
            "image_data_generator_images_per_s": images * epochs / theirs_s[-1],
            "speedup_over_first": {k: float(theirs_s[k - 1] / ours_s[k - 1])
                                   for k in (1, 3, 10, epochs) if k <= epochs},
            "speedup": float(theirs_s[-1] / ours_s[-1])}
