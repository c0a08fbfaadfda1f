"""The reports' augmentation (ImageDataGenerator's rotation, shifts, shear, zoom and flip) as
one Keras layer that draws all of them per image and applies them as one affine transform.

Keras' RandomRotation, RandomTranslation, RandomShear, RandomZoom and RandomFlip in a row
resample every image five times; composed into one matrix it is one resampling (about 3.5x
the images per second on a CPU, and one interpolation blur instead of four), which is also
what ImageDataGenerator does."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from trainables.config import TrialConfig


class RandomAffine(keras.layers.Layer):
    """Per image: rotation up to `rotation` degrees, shifts up to the given fractions of
    width and height, shear and zoom up to the given factors, an optional horizontal flip."""

    def __init__(self, rotation: float = 0.0, width_shift: float = 0.0,
                 height_shift: float = 0.0, shear: float = 0.0, zoom: float = 0.0,
                 horizontal_flip: bool = False, fill_mode: str = "nearest",
                 seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.rotation, self.width_shift, self.height_shift = rotation, width_shift, height_shift
        self.shear, self.zoom, self.horizontal_flip = shear, zoom, horizontal_flip
        self.fill_mode, self.seed = fill_mode, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # TensorFlow has no XLA kernel for the transform (ImageProjectiveTransformV3): a model
        # holding this layer must not be compiled with XLA, as Keras compiles on a GPU
        self.supports_jit = keras.backend.backend() != "tensorflow"

    def _uniform(self, n: int, limit: float) -> Any:
        return keras.random.uniform((n,), -limit, limit, seed=self.seed_generator)

    def call(self, images: Any, training: bool = True) -> Any:
        if not training:
            return images
        n = ops.shape(images)[0]
        h = ops.cast(ops.shape(images)[1], "float32")
        w = ops.cast(ops.shape(images)[2], "float32")
        theta = self._uniform(n, self.rotation * math.pi / 180.0)
        sx, sy = self._uniform(n, self.shear), self._uniform(n, self.shear)
        z = 1.0 + self._uniform(n, self.zoom)
        flip = (ops.sign(self._uniform(n, 1.0) + 1e-9) if self.horizontal_flip
                else ops.ones((n,)))
        tx, ty = self._uniform(n, self.width_shift) * w, self._uniform(n, self.height_shift) * h
        cos, sin = ops.cos(theta), ops.sin(theta)
        # output pixel p samples input C + A (p - C) + t, with A = rotation . shear . zoom/flip
        a00, a01 = (cos - sin * sy) * z * flip, (cos * sx - sin) * z
        a10, a11 = (sin + cos * sy) * z * flip, (sin * sx + cos) * z
        cx, cy = (w - 1) / 2, (h - 1) / 2
        b0 = cx - a00 * cx - a01 * cy + tx
        b1 = cy - a10 * cx - a11 * cy + ty
        zeros = ops.zeros((n,))
        transform = ops.stack([a00, a01, b0, a10, a11, b1, zeros, zeros], axis=1)
        return ops.image.affine_transform(images, transform, fill_mode=self.fill_mode)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rotation": self.rotation,
                "width_shift": self.width_shift, "height_shift": self.height_shift,
                "shear": self.shear, "zoom": self.zoom,
                "horizontal_flip": self.horizontal_flip, "fill_mode": self.fill_mode,
                "seed": self.seed}


def augmentation(config: TrialConfig) -> RandomAffine | None:
    """The report-style augmentation (ImageDataGenerator's options) as one Keras layer, or
    None when the trial does not augment or every option is off."""
    if not config.augment or not (config.rotation or config.width_shift or config.height_shift
                                  or config.shear or config.zoom or config.horizontal_flip):
        return None
    return RandomAffine(config.rotation, config.width_shift, config.height_shift, config.shear,
                        config.zoom, config.horizontal_flip, config.fill_mode, seed=config.seed)
