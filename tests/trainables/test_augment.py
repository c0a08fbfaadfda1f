"""The one-transform augmentation layer: what each option does to real images."""

from __future__ import annotations

import numpy as np

from trainables.augment import RandomAffine, augmentation
from trainables.config import TrialConfig


def _images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (6, 12, 12, 3)).astype("float32")


def test_no_option_or_inference_leaves_images_alone() -> None:
    x = _images()
    np.testing.assert_allclose(RandomAffine(seed=1)(x), x, atol=1e-3)
    np.testing.assert_array_equal(RandomAffine(rotation=30, seed=1)(x, training=False), x)
    assert augmentation(TrialConfig(augment=False, rotation=20.0)) is None
    assert augmentation(TrialConfig(augment=True)) is None  # augment on, every option off


def test_flip_mirrors_some_images_and_keeps_the_rest() -> None:
    x = _images()
    out = np.asarray(RandomAffine(horizontal_flip=True, seed=3)(x))
    mirrored = [np.allclose(o, i[:, ::-1], atol=1e-3) for o, i in zip(out, x, strict=True)]
    kept = [np.allclose(o, i, atol=1e-3) for o, i in zip(out, x, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and any(mirrored) and any(kept)


def test_geometry_moves_pixels_keeps_shape_and_follows_the_seed() -> None:
    x = _images()
    layer = augmentation(TrialConfig(augment=True, rotation=20.0, width_shift=0.2,
                                     height_shift=0.2, shear=0.2, zoom=0.2, seed=5))
    out = np.asarray(layer(x))
    assert out.shape == x.shape and not np.allclose(out, x)
    again = augmentation(TrialConfig(augment=True, rotation=20.0, width_shift=0.2,
                                     height_shift=0.2, shear=0.2, zoom=0.2, seed=5))
    np.testing.assert_allclose(np.asarray(again(x)), out)
