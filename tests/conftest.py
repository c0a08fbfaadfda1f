"""Shared fixtures: small image folders written with Pillow, a tiny space, one local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY_SPACE = """
name: tiny
seed: 3
data:
  root: {root}
  train: .
  validation: 0.25
  test: 0.25
  classes: [circle, square, stripes]
  color_mode: rgb
  cache_dir: {cache}
model:
  image_size: 12
  conv_blocks: {{type: int, low: 1, high: 2}}
  conv_filters: {{type: choice, choices: [4, 8]}}
  conv_padding: same
  dense_layers: 1
  dense_units: 8
train:
  optimizer: {{type: choice, choices: [adam, sgd]}}
  learning_rate: {{type: choice, choices: [0.003, 0.01, 0.03, 1.0e+30]}}
  epochs: 3
  batch_size: 8
search:
  num_samples: {num_samples}
  max_concurrent: 2
  resources: {{cpu: 1}}
  asha: {{max_epochs: 3, grace_period: 1, reduction_factor: 2}}
baselines:
  small:
    conv_blocks: 1
    conv_filters: [8]
    optimizer: adam
    learning_rate: 0.01
  diverges:
    conv_blocks: 1
    conv_filters: [4]
    optimizer: sgd
    learning_rate: 1.0e+30
"""


def shape_image(kind: str, rng: np.random.Generator, size: int = 16) -> Image.Image:
    """A small RGB picture of one of three easy classes, with noise."""
    pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    if kind == "circle":
        yy, xx = np.mgrid[:size, :size]
        pixels[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = 230
    elif kind == "square":
        pixels[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 230
    else:
        pixels[::3] = 230
    return Image.fromarray(pixels)


def write_class_folders(root: Path, n_per_class: int, seed: int = 0,
                        classes: tuple[str, ...] = ("circle", "square", "stripes")) -> Path:
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            shape_image(cls, rng).save(root / cls / f"{i:03d}.png")
    return root


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """Three classes of 12 PNGs each, plus one corrupt JPEG and one text file."""
    root = write_class_folders(tmp_path / "images", 12)
    (root / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "square" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def tiny_space_file(tmp_path: Path) -> callable:
    def write(num_samples: int = 4) -> Path:
        root = write_class_folders(tmp_path / "data", 16)
        path = tmp_path / "tiny.yaml"
        path.write_text(TINY_SPACE.format(root=root, cache=tmp_path / "cache",
                                          num_samples=num_samples))
        return path
    return write


@pytest.fixture(scope="session")
def ray_local():
    import ray
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    yield ray
    ray.shutdown()
