"""The Keras model of a trial, built from its `TrialConfig` alone (pure: no data, no I/O
beyond loading backbone weights that the config names).

Models take raw pixels (0..255) and carry their own preprocessing: a 1/255 rescale for the
reports' CNNs, the backbone's own ImageNet preprocessing for pretrained backbones. A saved
model therefore needs nothing else to classify a photo.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from trainables.config import TrialConfig

# name -> (constructor, preprocess_input mode of keras.applications.imagenet_utils or None
# where the application rescales inside itself)
BACKBONES: dict[str, tuple[Callable[..., keras.Model], str | None]] = {
    "vgg16": (keras.applications.VGG16, "caffe"),
    "mobilenet_v2": (keras.applications.MobileNetV2, "tf"),
    "efficientnet_b0": (keras.applications.EfficientNetB0, None),
}


@keras.saving.register_keras_serializable(package="trainables")
class ImagenetPreprocess(keras.layers.Layer):
    """`keras.applications` preprocessing as a saveable layer (a Lambda would not load safely)."""

    def __init__(self, mode: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, x: Any) -> Any:
        return keras.applications.imagenet_utils.preprocess_input(x, mode=self.mode)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


def feature_map_size(config: TrialConfig) -> int:
    """Side of the last conv block's output; < 1 means the image is too small for the stack."""
    size = config.image_size
    for kernel in config.conv_kernel_size[: config.conv_blocks]:
        if config.conv_padding == "valid":
            size -= kernel - 1
        size //= 2
    return size


def build_model(config: TrialConfig, n_classes: int, channels: int) -> keras.Model:
    """An uncompiled model for `config`. Raises ValueError for a stack the image cannot feed."""
    inputs = keras.Input((config.image_size, config.image_size, channels), name="image")
    if config.backbone == "none":
        if feature_map_size(config) < 1:
            raise ValueError(f"image_size {config.image_size} is too small for "
                             f"{config.conv_blocks} conv blocks with kernels "
                             f"{list(config.conv_kernel_size)} and {config.conv_padding} padding")
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
    else:
        x = _backbone(config, channels)(_preprocess(config, inputs), training=False)
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
        outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(x)
    else:
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="classifier")


def _preprocess(config: TrialConfig, inputs: Any) -> Any:
    mode = BACKBONES[config.backbone][1]
    return inputs if mode is None else ImagenetPreprocess(mode, name="preprocess")(inputs)


def _backbone(config: TrialConfig, channels: int) -> keras.Model:
    """The pretrained base, frozen except for its last `backbone_trainable_layers` layers."""
    if channels != 3:
        raise ValueError(f"backbone {config.backbone} needs RGB images (color_mode: rgb)")
    weights = None if config.backbone_weights == "none" else config.backbone_weights
    constructor = BACKBONES[config.backbone][0]
    base = constructor(include_top=False, weights=weights,
                       input_shape=(config.image_size, config.image_size, 3))
    n = config.backbone_trainable_layers
    base.trainable = n > 0
    for layer in base.layers[: len(base.layers) - n]:
        layer.trainable = False
    return base


def compile_model(model: keras.Model, config: TrialConfig) -> None:
    """Attach the optimizer, loss and accuracy metric that `config` names."""
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
    loss = ("binary_crossentropy" if config.head == "sigmoid"
            else "sparse_categorical_crossentropy")
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
