"""A validated space, and what is derived from it: its flat description (to tell whether a
resumed search still has its space), and the Optuna params that reproduce a baseline."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.space.params import Choice, Fixed, Param, choices, contains, extremes
from search.space.settings import SearchSettings
from trainables.config import KEYS, TrialConfig, block_key_name
from trainables.data import DataSpec


@dataclass(frozen=True)
class Space:
    """A validated search space. `params` has one entry per config key; fixed keys are `Fixed`.
    `seed` is every trial's (the baselines' configs leave it at its default)."""

    name: str
    source: Path
    seed: int
    data: DataSpec
    params: Mapping[str, Param]
    search: SearchSettings
    baselines: Mapping[str, TrialConfig]

    def baseline_points(self) -> list[dict[str, Any]]:
        """Each baseline as the searched (non-fixed) Optuna params that reproduce it."""
        return [searched_params(self, b) for b in self.baselines.values()]


def weights_files(params: Mapping[str, Param]) -> tuple[list[str], list[str]]:
    """The weights files the params can draw (not `none` or `imagenet`), and the backbones
    (not `none`) they can be drawn with."""
    weights, backbone = params["backbone_weights"], params["backbone"]
    assert isinstance(weights, Fixed | Choice) and isinstance(backbone, Fixed | Choice)  # read so
    return ([w for w in choices(weights) if w not in ("none", "imagenet")],
            [b for b in choices(backbone) if b != "none"])


def describe(space: Space) -> dict[str, str]:
    """The space as flat {key path: value} text, to tell whether a resumed search still has
    the space it began with. The trial count is left out: a resume may raise it."""
    values = dataclasses.asdict(space)
    del values["source"], values["search"]["num_samples"]
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = repr(value)
    walk("", values)
    return flat


def changes(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """What differs between two `describe`s, one line per key path."""
    return [f"{key}: {before.get(key, '(none)')} -> {now.get(key, '(none)')}"
            for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]


def searched_params(space: Space, config: TrialConfig) -> dict[str, Any]:
    """The params of `config` that the space searches (fixed ones are not Optuna params)."""
    searched = {}
    for pname, value in config.to_params().items():
        name = pname if pname in KEYS else block_key_name(pname)
        if name in space.params and not isinstance(space.params[name], Fixed):
            searched[pname] = value
    return searched


def extreme_draw(space: Space, *, deepest: bool) -> TrialConfig | None:
    """The conv stack the space may draw that shrinks its images most (`deepest`: the
    smallest image under the most conv blocks, each with the largest kernel, valid padding
    where the space draws it) or least (the largest image under the fewest blocks, each with
    the smallest kernel, same padding where the space draws it). None where every trial has
    a pretrained backbone (no conv blocks of its own)."""
    p = space.params
    if not contains(p["backbone"], "none"):
        return None
    end = 1 if deepest else 0  # of each `extremes` pair
    blocks = extremes(p["conv_blocks"])[end]
    valid = contains(p["conv_padding"], "valid") if deepest else \
        not contains(p["conv_padding"], "same")
    return TrialConfig(image_size=extremes(p["image_size"])[1 - end], conv_blocks=blocks,
                       conv_kernel_size=(extremes(p["conv_kernel_size"])[end],) * blocks,
                       conv_padding="valid" if valid else "same")
