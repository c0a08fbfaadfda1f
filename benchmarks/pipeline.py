"""Images per second through the training input pipeline, against the reports' way.

Ours: decode and resize once into the shared cache, then tf.data with Keras preprocessing
layers for augmentation. Theirs: Keras 2's `ImageDataGenerator.flow_from_directory`, which
decodes, resizes and augments every image again every epoch, in Python. Same JPEG folder,
same augmentation, same batch size, same number of epochs (the first one includes our
decode)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# Keras 3 keeps Keras 2's ImageDataGenerator here (the reports' class, unchanged)
from keras.src.legacy.preprocessing.image import ImageDataGenerator
from PIL import Image

from trainables.config import TrialConfig
from trainables.data import DataSpec, SplitSource, list_images
from trainables.images import load_arrays
from trainables.pipeline import augmentation, make_dataset

AUGMENT = {"rotation": 20.0, "width_shift": 0.2, "height_shift": 0.2, "shear": 0.2,
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


def ours(root: Path, cache: Path, image_size: int, batch: int, epochs: int) -> float:
    """Images per second, decode into the cache included."""
    config = TrialConfig(image_size=image_size, batch_size=batch, augment=True, **AUGMENT)
    started = time.perf_counter()
    whole = SplitSource(Path("."))  # (validation is required; only train is read)
    listing = list_images(DataSpec(root=root, train=whole, validation=whole, test=None), seed=0)
    arrays = load_arrays(listing.splits["train"], image_size, "rgb", cache)
    data = make_dataset(arrays.images, arrays.labels, batch, training=True, seed=0,
                        augment=augmentation(config))
    seen = 0
    for _ in range(epochs):
        for images, _labels in data:
            seen += int(images.shape[0])
    return seen / (time.perf_counter() - started)


def theirs(root: Path, image_size: int, batch: int, epochs: int) -> float:
    generator = ImageDataGenerator(
        rescale=1 / 255, rotation_range=AUGMENT["rotation"],
        width_shift_range=AUGMENT["width_shift"], height_shift_range=AUGMENT["height_shift"],
        shear_range=AUGMENT["shear"], zoom_range=AUGMENT["zoom"], horizontal_flip=True)
    flow = generator.flow_from_directory(str(root), target_size=(image_size, image_size),
                                         batch_size=batch, class_mode="categorical", seed=0)
    started = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for _step in range(len(flow)):
            images, _labels = next(flow)
            seen += len(images)
    return seen / (time.perf_counter() - started)


def run(folder: Path, per_class: int, epochs: int, image_size: int = 64,
        batch: int = 32) -> dict[str, float]:
    root = write_jpegs(folder / "jpegs", per_class)
    cache = folder / "cache"
    ours_ips = ours(root, cache, image_size, batch, epochs)
    theirs_ips = theirs(root, image_size, batch, epochs)
    return {"images": 2 * per_class, "epochs": epochs, "ours_images_per_s": ours_ips,
            "image_data_generator_images_per_s": theirs_ips, "speedup": ours_ips / theirs_ips}
