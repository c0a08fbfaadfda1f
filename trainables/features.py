"""The frozen part's output, computed once per split and shared by every trial that trains on
it: a trial whose backbone is (partly) frozen and whose images are not augmented sees the
same features every epoch, so computing them again each epoch is wasted work (a frozen
VGG16 at 224 px is about 99% of such a trial's compute).

Features are cached beside the split's decoded images, keyed by the images' cache file and
the frozen part (backbone, weights, image size, cut layer, precision), and memory-mapped like
the images: one copy per node in the page cache. They are held in the dtype the frozen part
computes in: float32, or bfloat16 or float16 under mixed precision (its values exactly, in
half the space). A lock file makes the first trial compute them while the others wait,
rather than all computing the same thing at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from trainables.config import TrialConfig
from trainables.images import Arrays, locked, save_rows, write_atomic

# images run through the frozen part per call, and per step on a CPU: measured on VGG16 less
# its last block (2026-12-04, 400 images at 224 px), 256 and 32 took a worker's memory 1.6 GB
# above where it was, 64 and 8 0.4 GB, as fast (its first activations are 12.8 MB an image,
# two of them alive at once). A GPU's memory holds a step's activations: 32 images a step.
CHUNK = 64
CPU_BATCH, GPU_BATCH = 8, 32


def frozen_key(config: TrialConfig, frozen: keras.Model) -> str:
    """What the frozen part's output depends on, besides the images."""
    weights = config.backbone_weights
    if weights == "none":
        weights = f"none-seed{config.seed}"  # random weights, drawn from the seed
    elif weights != "imagenet":
        stat = os.stat(weights)
        weights = f"{Path(weights).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cut = frozen.get_layer("backbone_frozen").layers[-1].name
    # the preprocessing layer's kind: its float arithmetic is part of the features
    preprocess = [type(layer).__name__ for layer in frozen.layers if layer.name == "preprocess"]
    text = (f"{config.backbone}|{weights}|{config.image_size}|{cut}|{_dtype(frozen).name}|"
            f"{preprocess}|{config.precision}")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def features(frozen: keras.Model, arrays: Arrays, key: str) -> Arrays:
    """`arrays` with the frozen part's output in place of the images: from the cache beside
    the images' cache file, else computed and cached (in memory for arrays made in memory).
    Callers must not write to the returned (read-only) features."""
    if arrays.source is None:
        return _with(arrays, np.concatenate(list(_computed(frozen, arrays.images))))
    path = arrays.source.with_name(f"{arrays.source.stem}-features-{key}.npy")
    if not path.exists():
        with locked(path.with_suffix(".lock")):
            if not path.exists():  # another trial may have written it while we waited
                write_atomic(path, lambda f: save_rows(
                    f, _dtype(frozen), (len(arrays.images), *frozen.output_shape[1:]),
                    _computed(frozen, arrays.images)))
    # NumPy writes bfloat16 (not a NumPy type) as 2-byte records: read back as what they are
    return _with(arrays, np.load(path, mmap_mode="r").view(_dtype(frozen)))


def _dtype(frozen: keras.Model) -> np.dtype[Any]:
    """The dtype the frozen part computes its output in. Not narrower features than that:
    float32 features cached as float16 moved a fine-tuned VGG16 block's validation loss
    after 2 epochs from 1.0924 to 1.0986 on the test images, where features in the part's
    own dtype give the pixel path's metrics (tests/trainables/test_models.py)."""
    dtype: np.dtype[Any] = np.dtype(tf.as_dtype(frozen.output.dtype).as_numpy_dtype)
    return dtype


def _computed(frozen: keras.Model, images: np.ndarray) -> Iterator[np.ndarray]:
    """The frozen part's output for `images`, CHUNK images at a time."""
    size = GPU_BATCH if tf.config.list_logical_devices("GPU") else CPU_BATCH
    for start in range(0, len(images), CHUNK):
        batch = np.asarray(images[start:start + CHUNK], dtype=np.float32)
        yield frozen.predict(batch, batch_size=size, verbose=0).astype(_dtype(frozen), copy=False)


def _with(arrays: Arrays, values: np.ndarray) -> Arrays:
    return Arrays(values, arrays.labels, arrays.skipped, arrays.source)
