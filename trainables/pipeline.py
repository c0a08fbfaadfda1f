"""tf.data input pipelines over decoded arrays: shuffle, gather, augment, batch, prefetch.

Batches are gathered by index from the (memory-mapped) decoded arrays, so no image is decoded
twice and nothing is copied into the graph. Augmentation (one Keras layer, `RandomAffine`) is
applied to whole batches of the training split only, in the pipeline, not in the model
(`trainables.augment.augmentation` makes it from the trial's config).
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

# each dataset's arrays, held for as long as the dataset lives (see `make_dataset`)
_HELD: weakref.WeakKeyDictionary[tf.data.Dataset, tuple[np.ndarray, np.ndarray]] = \
    weakref.WeakKeyDictionary()


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, *,
                 training: bool, seed: int, steps: int | None = None,
                 augment: keras.layers.Layer | None = None,
                 binary: bool = False) -> tf.data.Dataset:
    """Batches of (float32 images: pixels in 0..255, or a frozen part's features; labels) for
    `model.fit` / `evaluate`.

    Training data is reshuffled every epoch and, with `steps` (steps per epoch), repeated so
    an epoch may be shorter than a full pass, as in the reports. Evaluation data with `steps`
    is cut to the same first `steps` batches every epoch. `binary` gives labels of shape
    (n, 1) as float, for a one-unit sigmoid head.
    """
    n = len(labels)
    shape = (None, *images.shape[1:])

    # TensorFlow keeps a numpy_function's Python function for the life of the process (its
    # global graph holds it), so `gather` reaches the arrays through weak references and the
    # dataset holds them (`_HELD`): else each trial a reused worker ran kept its data mapped
    # (2 memory maps a trial, each adding the pages it read to the worker's resident memory)
    images_ref, labels_ref = weakref.ref(images), weakref.ref(labels)

    def gather(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)  # sequential reads from the memory map
        return images_ref()[idx], labels_ref()[idx]  # type: ignore[index]

    def load(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(gather, [idx], (tf.as_dtype(images.dtype), tf.int32),
                                stateful=False)
        x = tf.cast(tf.ensure_shape(x, shape), tf.float32)
        y = tf.ensure_shape(y, (None,))
        return x, tf.cast(y[:, None], tf.float32) if binary else y

    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        # one batch after another: the layer draws from its seeded generator, and batches
        # augmented in parallel drew in a racing order, so a trial of a given seed trained
        # on other images run to run. Each batch's transform still runs on the trial's
        # threads, and as fast (a small CNN at 128 px, 1 and 2 threads: the same epoch times)
        ds = ds.map(lambda x, y: (augment(x, training=True), y))
    if steps is not None:
        ds = ds.repeat() if training else ds.take(steps)
    options = tf.data.Options()
    # tf.data's autotuner stalled about one epoch start in three for 0.3 s (a whole epoch of
    # the default search) and gained no images per second here: parallel calls and prefetch
    # keep their defaults for the machine's cores
    options.autotune.enabled = False
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options)
    _HELD[ds] = (images, labels)
    return ds
