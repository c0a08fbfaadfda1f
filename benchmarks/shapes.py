"""The harder image set the efficiency benchmark generates: six kinds of shape, drawn at a
random size, place, angle and colour on a noisy, cluttered background (32x32 RGB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("circle", "square", "triangle", "cross", "ring", "bar")
SIZE = 32


def _shape(kind: str, rng: np.random.Generator) -> Image.Image:
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 40, size=(SIZE, SIZE, 3))
    pixels = np.clip(background + noise, 0, 255).astype("uint8")
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(2):  # clutter: small lines in random colours
        xy = rng.integers(0, SIZE, size=4).tolist()
        draw.line(xy, fill=tuple(rng.integers(0, 256, size=3).tolist()), width=1)
    colour = tuple(rng.integers(0, 256, size=3).tolist())
    r = int(rng.integers(5, 11))
    cx, cy = (int(v) for v in rng.integers(r + 1, SIZE - r - 1, size=2))
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=2)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif kind == "cross":
        draw.line([cx - r, cy, cx + r, cy], fill=colour, width=3)
        draw.line([cx, cy - r, cx, cy + r], fill=colour, width=3)
    else:  # bar
        draw.rectangle([cx - r, cy - 2, cx + r, cy + 2], fill=colour)
    return image.rotate(float(rng.uniform(0, 360)), fillcolor=tuple(background.tolist()))


def write_shapes(root: Path, per_class: int = 250, seed: int = 0) -> Path:
    """Class folders of PNGs under `root` (left as they are if already complete)."""
    if all(len(list((root / k).glob("*.png"))) == per_class for k in KINDS):
        return root
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _shape(kind, rng).save(root / kind / f"{i:04d}.png")
    return root
