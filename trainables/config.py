"""The configuration of one trial: every key a space may fix or search, and its rules.

`TrialConfig` is the single list of tunable keys. The space parser (`search.space`) checks
YAML keys, types and ranges against the `Key` metadata declared here; the sampler
(`search.sampling`) walks the fields in declaration order and asks for a key only when its
`when` condition holds for the values drawn before it; the model builder and training loop
read the finished, typed config. Keys whose `per` names a count are drawn once per block
(`conv_filters_0`, `conv_filters_1`, ...) and held here as tuples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

BACKBONES = ("none", "vgg16", "mobilenet_v2", "efficientnet_b0")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
FILL_MODES = ("nearest", "constant", "reflect", "wrap")
# Keras' dtype policies: float32 (Keras' default), or the weights kept in float32 and the
# layers computing in bfloat16 (about 2x on CPUs with AVX512_BF16 or AMX and on Ampere or
# newer GPUs) or in float16 with the loss scaled (the tensor cores of older NVIDIA GPUs)
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# Upper bounds no real search meets; past them a value is a typo (and 10^12 steps per epoch
# would hang a trial: ASHA acts only at epoch ends)
MAX_EPOCHS, MAX_STEPS = 10_000, 1_000_000

# The name under which a trial's config records which baseline it reproduces ("" if none).
BASELINE_KEY = "baseline"


def block_key(name: str, block: int) -> str:
    """The flat param of one block's value of a per-block key: `conv_filters`, 2 ->
    `conv_filters_2`."""
    return f"{name}_{block}"


def block_key_name(param: str) -> str:
    """The per-block key a flat param belongs to: `conv_filters_2` -> `conv_filters`."""
    return param.rsplit("_", 1)[0]


@dataclass(frozen=True)
class Key:
    """What the space may say about one config key."""

    section: str
    kind: type  # int, float, bool or str; per-block keys hold a tuple of these
    choices: tuple[Any, ...] | None = None
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    high_exclusive: bool = False
    low_exclusive: bool = False
    optional: bool = False  # None allowed (meaning "not set": a full pass, no limit)
    per: str | None = None  # name of the count key this key is drawn for, once per block
    when: Callable[[Mapping[str, Any]], bool] | None = None

    def exists(self, drawn: Mapping[str, Any]) -> bool:
        """Whether this key is part of a trial whose earlier keys took the values `drawn`."""
        return self.when is None or self.when(drawn)


def _k(default: Any, section: str, kind: type, **rules: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: tuple(default),
                     metadata={"key": Key(section, kind, **rules)})
    return field(default=default, metadata={"key": Key(section, kind, **rules)})


def _no_backbone(c: Mapping[str, Any]) -> bool:
    return bool(c["backbone"] == "none")


def _has_backbone(c: Mapping[str, Any]) -> bool:
    return bool(c["backbone"] != "none")


def _augmented(c: Mapping[str, Any]) -> bool:
    return bool(c["augment"])


@dataclass(frozen=True)
class TrialConfig:
    """One trial's concrete settings. Defaults are Keras' own defaults where Keras has one."""

    # model
    image_size: int = _k(64, "model", int, low=8, high=1024)
    backbone: str = _k("none", "model", str, choices=BACKBONES)
    backbone_weights: str = _k("none", "model", str, when=_has_backbone)  # none|imagenet|path
    backbone_trainable_layers: int = _k(0, "model", int, low=0, high=1000, when=_has_backbone)
    conv_blocks: int = _k(2, "model", int, low=0, high=12, when=_no_backbone)
    conv_filters: tuple[int, ...] = _k([32, 32], "model", int, low=1, high=4096,
                                       per="conv_blocks", when=_no_backbone)
    conv_kernel_size: tuple[int, ...] = _k([3, 3], "model", int, low=1, high=15,
                                           per="conv_blocks", when=_no_backbone)
    conv_padding: str = _k("valid", "model", str, choices=("valid", "same"), when=_no_backbone)
    conv_batch_norm: bool = _k(False, "model", bool, when=_no_backbone)
    pooling: str = _k("max", "model", str, choices=("max", "avg"), when=_no_backbone)
    head_pooling: str = _k("flatten", "model", str, choices=("flatten", "global_avg"))
    flatten_dropout: float = _k(0.0, "model", float, low=0.0, high=1.0, high_exclusive=True)
    dense_layers: int = _k(1, "model", int, low=0, high=8)
    dense_units: tuple[int, ...] = _k([128], "model", int, low=1, high=65536,
                                      per="dense_layers")
    dense_batch_norm: bool = _k(False, "model", bool)
    dense_dropout: float = _k(0.0, "model", float, low=0.0, high=1.0, high_exclusive=True)
    l2: float = _k(0.0, "model", float, low=0.0)
    head: str = _k("softmax", "model", str, choices=("softmax", "sigmoid"))
    # training
    optimizer: str = _k("adam", "train", str, choices=OPTIMIZERS)
    learning_rate: float = _k(1e-3, "train", float, low=0.0, low_exclusive=True)
    momentum: float = _k(0.0, "train", float, low=0.0, high=1.0, high_exclusive=True,
                         when=lambda c: c["optimizer"] == "sgd")
    # Old Keras `decay`: lr / (1 + decay * step), as the blood-cell report used it.
    lr_decay: float = _k(0.0, "train", float, low=0.0)
    epochs: int = _k(10, "train", int, low=1, high=MAX_EPOCHS)
    steps_per_epoch: int | None = _k(None, "train", int, low=1, high=MAX_STEPS, optional=True)
    validation_steps: int | None = _k(None, "train", int, low=1, high=MAX_STEPS, optional=True)
    batch_size: int = _k(32, "train", int, low=1, high=65536)
    precision: str = _k("float32", "train", str, choices=PRECISIONS)
    # 0: no early stopping
    early_stopping_patience: int = _k(0, "train", int, low=0, high=MAX_EPOCHS)
    # augmentation (Keras preprocessing layers, training split only)
    augment: bool = _k(False, "augment", bool)
    rotation: float = _k(0.0, "augment", float, low=0.0, high=180.0, when=_augmented)  # degrees
    width_shift: float = _k(0.0, "augment", float, low=0.0, high=1.0, when=_augmented)
    height_shift: float = _k(0.0, "augment", float, low=0.0, high=1.0, when=_augmented)
    shear: float = _k(0.0, "augment", float, low=0.0, high=1.0, when=_augmented)
    zoom: float = _k(0.0, "augment", float, low=0.0, high=1.0, when=_augmented)
    horizontal_flip: bool = _k(False, "augment", bool, when=_augmented)
    fill_mode: str = _k("nearest", "augment", str, choices=FILL_MODES, when=_augmented)
    # not tunable: the space's seed, for Keras and the shuffling of batches
    seed: int = 0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrialConfig:
        """Build a config from flat trial params (`conv_filters_0`, ...); absent keys keep
        defaults.

        Keys that are not config keys (such as `baseline`) are ignored.
        """
        values: dict[str, Any] = {}
        for name, key in KEYS.items():
            if key.per is not None:
                count = params.get(key.per)
                if count is not None and all(block_key(name, i) in params for i in range(count)):
                    values[name] = tuple(params[block_key(name, i)] for i in range(count))
            elif name in params:
                values[name] = params[name]
        if "seed" in params:
            values["seed"] = params["seed"]
        return cls(**values)

    def to_params(self) -> dict[str, Any]:
        """Flat params of this config, only the keys that exist for it, per-block keys expanded."""
        params: dict[str, Any] = {}
        for name, key in KEYS.items():
            if not key.exists(params):
                continue
            value = getattr(self, name)
            if key.per is not None:
                params.update({block_key(name, i): v
                               for i, v in enumerate(value[: params[key.per]])})
            else:
                params[name] = value
        params["seed"] = self.seed
        return params

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    def feature_map_size(self) -> int:
        """Side of the last conv block's output; < 1 means the image is too small for the
        stack."""
        size = self.image_size
        for kernel in self.conv_kernel_size[: self.conv_blocks]:
            if self.conv_padding == "valid":
                size -= kernel - 1
            size //= 2
        return size

    def too_small(self) -> str | None:
        """Why the image is too small for the conv blocks (None where it is not, and under a
        pretrained backbone, which has no conv blocks of its own)."""
        if self.backbone != "none" or self.feature_map_size() >= 1:
            return None
        return (f"image_size {self.image_size} is too small for {self.conv_blocks} conv blocks "
                f"with kernels {list(self.conv_kernel_size[: self.conv_blocks])} and "
                f"{self.conv_padding} padding")


KEYS: dict[str, Key] = {
    f.name: f.metadata["key"] for f in dataclasses.fields(TrialConfig) if "key" in f.metadata
}
SECTIONS = ("model", "train", "augment")
