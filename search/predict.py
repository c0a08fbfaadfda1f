"""`python -m search.predict MODEL IMAGE_OR_FOLDER...`: classify photos with a logged model.

MODEL is any MLflow model URI: `models:/cats_dogs/latest`, `models:/cats_dogs/3`, or
`runs:/<run id>/model`. Class names, image size and colour mode come from the model's own
metadata, so nothing but the registry is needed. Unreadable files are reported and skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from search.cli import add_tracking_uri
from search.evaluation import class_probabilities, predicted_classes
from trainables.data import IMAGE_SUFFIXES
from trainables.files import shown
from trainables.images import decode


def image_files(targets: list[str]) -> list[Path]:
    """The files named, and the images inside the folders named (sorted, recursive)."""
    files: list[Path] = []
    for target in map(Path, targets):
        if target.is_dir():
            files += sorted(p for p in target.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(target)
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.predict", description=__doc__.splitlines()[0])
    p.add_argument("model", help="models:/NAME/VERSION, models:/NAME/latest or runs:/ID/model")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    add_tracking_uri(p)
    args = p.parse_args(argv)
    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    try:
        meta = mlflow.models.get_model_info(args.model).metadata or {}
        model = mlflow.tensorflow.load_model(args.model)
    except mlflow.exceptions.MlflowException as exc:
        print(f"error: cannot load {args.model}: {exc.message}", file=sys.stderr)
        return 2
    classes, size = meta["classes"], int(meta["image_size"])
    files, pixels, failures = [], [], 0
    for path in image_files(args.images):
        decoded = decode(str(path), size, meta.get("color_mode", "rgb"))
        if decoded is None:
            print(f"{shown(str(path))}: unreadable, skipped", file=sys.stderr)
            failures += 1
        else:
            files.append(path)
            pixels.append(decoded)
    if files:
        outputs = model.predict(np.stack(pixels).astype(np.float32), verbose=0)
        probabilities = class_probabilities(outputs)
        for path, index, row in zip(files, predicted_classes(outputs), probabilities):
            print(f"{shown(str(path))}\t{classes[index]}\t{float(row[index]):.3f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
