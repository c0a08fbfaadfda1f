"""The Keras model of a trial, built from its `TrialConfig` alone (pure: no data, no I/O
beyond loading backbone weights that the config names, through `trainables.weights`).

Models take raw pixels (0..255) and carry their own preprocessing: a 1/255 rescale for the
reports' CNNs, the backbone's own ImageNet preprocessing for pretrained backbones. A saved
model therefore needs nothing else to classify a photo.

A model with a pretrained backbone is built in two parts (`Parts`): the frozen part (the
preprocessing and the backbone below its last `backbone_trainable_layers` layers, raw pixels
to features) and the trained part (those last layers and the head, features to class
probabilities). `join` makes the whole model of them. Training changes only the trained
part, so a checkpoint holds only it, and a trial whose images are not augmented can train it
on features the frozen part computed once (`trainables.features`).

Layers compute in the config's `precision` (Keras' dtype policy); the output layer computes
in float32 whatever it is, as Keras' mixed precision guide has it, so probabilities and the
loss keep float32's range.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras

from trainables.config import TrialConfig
from trainables.weights import pretrained

# name -> (constructor, preprocess_input mode of keras.applications.imagenet_utils or None
# where the application rescales inside itself)
BACKBONES: dict[str, tuple[Callable[..., keras.Model], str | None]] = {
    "vgg16": (keras.applications.VGG16, "caffe"),
    "mobilenet_v2": (keras.applications.MobileNetV2, "tf"),
    "efficientnet_b0": (keras.applications.EfficientNetB0, None),
}


# `keras.applications.imagenet_utils.preprocess_input`'s "caffe" mode: RGB to BGR, then each
# channel less its ImageNet mean
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def imagenet_preprocess(images: Any, mode: str) -> Any:
    """A backbone's ImageNet preprocessing of `images` in built-in Keras only, with no
    weights, so a saved model loads in Keras' safe mode with no class of ours: "tf" scales to
    [-1, 1]; "caffe" flips RGB to BGR (a `keras.ops` node) and takes each channel's mean off."""
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(images)
    return keras.layers.Rescaling(1.0, offset=[-mean for mean in CAFFE_MEAN_BGR],
                                  name="preprocess")(keras.ops.flip(images, axis=-1))


@dataclass(frozen=True)
class Parts:
    """A classifier as its frozen part (raw pixels -> features; None when every layer
    trains) and its trained part (features, or raw pixels when there is no frozen part ->
    class probabilities)."""

    frozen: keras.Model | None
    trained: keras.Model


def build_model(config: TrialConfig, n_classes: int, channels: int) -> keras.Model:
    """An uncompiled model for `config`. Raises ValueError for a stack the image cannot feed."""
    return join(build_parts(config, n_classes, channels))


def build_parts(config: TrialConfig, n_classes: int, channels: int) -> Parts:
    """The model's frozen and trained parts, uncompiled (see `build_model`)."""
    with _precision(config):
        return _build_parts(config, n_classes, channels)


def _build_parts(config: TrialConfig, n_classes: int, channels: int) -> Parts:
    if config.backbone == "none":
        inputs = keras.Input((config.image_size, config.image_size, channels), name="image")
        return Parts(None, keras.Model(inputs, _head(config, n_classes, _cnn(config, inputs)),
                                       name="classifier"))
    base, cut = _backbone(config, channels)
    frozen = _frozen(config, base, cut)
    features = keras.Input(frozen.output_shape[1:], name="features")
    x = features
    if cut < len(base.layers):
        # the backbone's layers above the cut, in inference mode as Keras runs a backbone
        # being fine-tuned (its batch norm statistics stay as trained)
        tail = keras.Model(base.layers[cut - 1].output, base.output, name="backbone_top")
        x = tail(x, training=False)
    return Parts(frozen, keras.Model(features, _head(config, n_classes, x), name="trained"))


def frozen_part(config: TrialConfig, channels: int) -> keras.Model | None:
    """The frozen part of `config`'s model alone (the same weights `build_parts` gives it),
    or None without a backbone: to compute features, or to join a checkpointed trained
    part."""
    if config.backbone == "none":
        return None
    with _precision(config):
        return _frozen(config, *_backbone(config, channels))


@contextlib.contextmanager
def _precision(config: TrialConfig) -> Iterator[None]:
    """Keras makes each layer with its global dtype policy: `config.precision` while the
    model is built, then back to what it was (a worker runs trial after trial)."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def join(parts: Parts) -> keras.Model:
    """The whole classifier on raw pixels: the frozen part (in inference mode) then the
    trained part. The trained part's layers are shared, not copied."""
    if parts.frozen is None:
        return parts.trained
    inputs = keras.Input(parts.frozen.input_shape[1:], name="image")
    features = parts.frozen(inputs, training=False)
    return keras.Model(inputs, parts.trained(features), name="classifier")


def augmented(model: keras.Model, augment: keras.layers.Layer) -> keras.Model:
    """`model` (its layers shared) with `augment` applied to its input, which augments while
    training only: to augment inside the training step rather than in the input pipeline."""
    inputs = keras.Input(model.input_shape[1:], name="image")
    return keras.Model(inputs, model(augment(inputs)), name="augmented")


def _cnn(config: TrialConfig, inputs: Any) -> Any:
    """The reports' conv blocks on raw pixels."""
    too_small = config.too_small()
    if too_small:
        raise ValueError(too_small)
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    pool = keras.layers.MaxPooling2D if config.pooling == "max" else keras.layers.AveragePooling2D
    for i in range(config.conv_blocks):
        x = keras.layers.Conv2D(config.conv_filters[i], config.conv_kernel_size[i],
                                padding=config.conv_padding,
                                use_bias=not config.conv_batch_norm, name=f"conv_{i}")(x)
        if config.conv_batch_norm:
            x = keras.layers.BatchNormalization(name=f"conv_bn_{i}")(x)
        x = keras.layers.ReLU(name=f"conv_relu_{i}")(x)
        x = pool(2, name=f"pool_{i}")(x)
    return x


def _head(config: TrialConfig, n_classes: int, x: Any) -> Any:
    """Pooling or flatten, the dense layers and the output layer."""
    if config.head_pooling == "flatten":
        x = keras.layers.Flatten(name="flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="global_avg")(x)
    if config.flatten_dropout:
        x = keras.layers.Dropout(config.flatten_dropout, seed=config.seed)(x)
    l2 = keras.regularizers.L2(config.l2) if config.l2 else None
    for i in range(config.dense_layers):
        x = keras.layers.Dense(config.dense_units[i], kernel_regularizer=l2,
                               use_bias=not config.dense_batch_norm, name=f"dense_{i}")(x)
        if config.dense_batch_norm:
            x = keras.layers.BatchNormalization(name=f"dense_bn_{i}")(x)
        x = keras.layers.ReLU(name=f"dense_relu_{i}")(x)
        if config.dense_dropout:
            x = keras.layers.Dropout(config.dense_dropout, seed=config.seed)(x)
    if config.head == "sigmoid":
        if n_classes != 2:
            raise ValueError(f"a sigmoid head needs 2 classes, the data has {n_classes}")
        return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="head")(x)
    return keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head")(x)


def _frozen(config: TrialConfig, base: keras.Model, cut: int) -> keras.Model:
    inputs = keras.Input((config.image_size, config.image_size, base.input_shape[-1]),
                         name="image")
    mode = BACKBONES[config.backbone][1]
    x = inputs if mode is None else imagenet_preprocess(inputs, mode)
    below = keras.Model(base.input, base.layers[cut - 1].output, name="backbone_frozen")
    return keras.Model(inputs, below(x, training=False), name="frozen")


def _backbone(config: TrialConfig, channels: int) -> tuple[keras.Model, int]:
    """The pretrained base, frozen except for its last `backbone_trainable_layers` layers,
    and where to cut it: the index of its first layer above the frozen part. The cut is the
    highest at or below the first trainable layer that one tensor alone crosses (a residual
    connection must not span it), so layers between the cut and the trainable ones stay
    frozen inside the trained part.

    Seeds Keras first: with `backbone_weights: none` the base's random weights are then the
    same wherever the config is built (trial, resume, registration)."""
    if channels != 3:
        raise ValueError(f"backbone {config.backbone} needs RGB images (color_mode: rgb)")
    keras.utils.set_random_seed(config.seed)
    weights = None if config.backbone_weights == "none" else config.backbone_weights
    base = pretrained(BACKBONES[config.backbone][0], weights, include_top=False,
                      input_shape=(config.image_size, config.image_size, 3))
    first_trainable = len(base.layers) - min(config.backbone_trainable_layers,
                                             len(base.layers) - 1)
    base.trainable = first_trainable < len(base.layers)
    for layer in base.layers[:first_trainable]:
        layer.trainable = False
    return base, _cut(base.layers, first_trainable)


def _cut(layers: list[keras.layers.Layer], at_most: int) -> int:
    """The largest i <= at_most (i >= 1) such that the only tensor layers[:i] hand to
    layers[i:] is layers[i - 1]'s output."""
    index = {id(layer): i for i, layer in enumerate(layers)}

    def producers(layer: keras.layers.Layer) -> set[int]:
        return {index[id(t._keras_history.operation)] for node in layer._inbound_nodes
                for t in node.input_tensors}

    sources = [producers(layer) for layer in layers]
    for i in range(at_most, 1, -1):
        if all(p >= i or p == i - 1 for source in sources[i:] for p in source):
            return i
    return 1


def compile_model(model: keras.Model, config: TrialConfig,
                  optimizer: keras.optimizers.Optimizer | None = None) -> None:
    """Attach the loss and accuracy metric `config` names, and its optimizer, or `optimizer`
    (the trained part's, when the whole model trains it: its state goes on and is saved
    with the trained part), the optimizer built."""
    if optimizer is None:
        rate: Any = config.learning_rate
        if config.lr_decay:
            # Keras 2's `decay` argument: lr / (1 + decay * iteration).
            rate = keras.optimizers.schedules.InverseTimeDecay(config.learning_rate, 1,
                                                               config.lr_decay)
        optimizer = {
            "adam": lambda: keras.optimizers.Adam(rate),
            "rmsprop": lambda: keras.optimizers.RMSprop(rate),
            "sgd": lambda: keras.optimizers.SGD(rate, momentum=config.momentum),
        }[config.optimizer]()
        if config.precision == "mixed_float16":
            # float16's gradients underflow: the loss is scaled up, the gradients back down
            # (Keras would wrap it in compile; wrapped here, the whole model that trains the
            # trained part's optimizer gets it wrapped once)
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    binary = config.head == "sigmoid"
    loss = "binary_crossentropy" if binary else "sparse_categorical_crossentropy"
    accuracy = (keras.metrics.BinaryAccuracy if binary
                else keras.metrics.SparseCategoricalAccuracy)(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy])
    # Without a distribution strategy Keras makes the metric's and the optimizer's variables
    # inside the first traced training step, and a variable made there makes TensorFlow
    # trace the step twice: made here, the step is traced once (0.5 s of a one-epoch digits
    # trial's 1.5 s)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
