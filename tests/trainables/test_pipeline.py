"""The input pipeline over decoded arrays (`trainables.pipeline`)."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from trainables.augment import augmentation
from trainables.config import TrialConfig
from trainables.pipeline import make_dataset


def test_a_dataset_holds_its_arrays_and_releases_them_when_dropped() -> None:
    """A reused worker runs trial after trial: a trial's images (a memory map of the node's
    cache) must live as long as its dataset, and no longer."""
    images = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4, 1)
    labels = np.arange(10, dtype=np.int32)
    ds = make_dataset(images, labels, 4, training=True, seed=0)
    images_gone, labels_gone = weakref.ref(images), weakref.ref(labels)
    del images, labels  # the dataset alone holds them now
    gc.collect()
    batches = list(ds.as_numpy_iterator())
    seen = np.concatenate([y for _, y in batches])
    assert sorted(seen) == list(range(10))
    assert all((x[:, 0, 0, 0] == 16 * y).all() for x, y in batches)
    del ds, batches
    gc.collect()
    assert images_gone() is None and labels_gone() is None


def test_an_augmented_pipeline_of_a_seed_gives_the_same_batches_every_time() -> None:
    """Batches augmented in parallel drew from the layer's seeded generator in a racing
    order: a trial of a given seed trained on other images run to run."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 24, 24, 3), dtype=np.uint8)
    labels = np.arange(64, dtype=np.int32) % 2

    def epochs() -> list[np.ndarray]:
        layer = augmentation(TrialConfig(augment=True, rotation=20.0, width_shift=0.2,
                                         shear=0.2, zoom=0.2, horizontal_flip=True, seed=3))
        ds = make_dataset(images, labels, 4, training=True, seed=3, augment=layer)
        return [x for _ in range(2) for x, _ in ds.as_numpy_iterator()]

    first = epochs()
    for _ in range(3):
        for a, b in zip(first, epochs(), strict=True):
            np.testing.assert_array_equal(a, b)
