"""`python -m search.predict MODEL IMAGE_OR_FOLDER...`: classify photos with a logged model.

MODEL is any MLflow model URI: `models:/cats_dogs/latest`, `models:/cats_dogs/3`, or
`runs:/<run id>/model`. Class names, image size and colour mode come from the model's own
metadata, so nothing but the registry is needed. Unreadable files are reported and skipped.

A registered model is data, never code: anyone who can register a version in a shared
registry must not run code as whoever predicts. The model loads with MLflow's pickle
deserialization off and Keras' safe mode on; one that would need pickled objects, Python
code shipped beside it or a module of its choosing imported is refused with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from search.cli import EXIT_BAD_INPUT, add_tracking_uri
from search.console import first_line, tensorflow_started
from search.evaluation import class_probabilities, predicted_classes
from search.server import TrackingError, check_server
from trainables.data import IMAGE_SUFFIXES
from trainables.files import files_below, shown
from trainables.images import decode

KERAS_MODULES = ("tensorflow.keras", "keras")  # what MLflow's TensorFlow flavour writes
PICKLE = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
# photos decoded and classified at a time: all at once held six times their decoded size
# (decoded, stacked, and as float32) and printed nothing until the last was decoded
BATCH = 256


def image_files(targets: list[str]) -> tuple[list[Path], list[str]]:
    """The files named, and the images inside the folders named (sorted, recursive; hidden
    files and folders left out, as in a search's data); and each target that could not be
    looked at, with what the system said."""
    files: list[Path] = []
    unread: list[str] = []
    for target in map(Path, targets):
        try:
            if target.is_dir():
                files += [f for f in map(Path, files_below(target))
                          if f.suffix.lower() in IMAGE_SUFFIXES]
            else:
                files.append(target)
        except OSError as exc:  # a stale mount, a folder without permission
            unread.append(f"{shown(str(target))}: cannot be read ({exc})")
    return files, unread


def undescribed(metadata: dict[str, Any] | None) -> str | None:
    """Why the model's metadata does not say what it takes and gives (its classes and image
    size, which a search registers with every model), or None."""
    missing = [key for key in ("classes", "image_size") if key not in (metadata or {})]
    return (f"its metadata has no {' and no '.join(missing)}: it was not registered by a "
            f"search (whose models carry them)") if missing else None


def unsafe(flavors: dict[str, Any]) -> str | None:
    """Why the model's MLmodel file asks for code to run on load, or None: Python code shipped
    with the model (put on `sys.path`) or a Keras module other than Keras itself (imported)."""
    flavor = flavors.get("tensorflow") or flavors.get("keras")
    if flavor is None:
        return f"not a Keras model (flavors: {', '.join(sorted(flavors))})"
    if flavor.get("code"):
        return f"it ships Python code ({flavor['code']}) to import"
    if flavor.get("keras_module", "tensorflow.keras") not in KERAS_MODULES:
        return f"it names {flavor['keras_module']!r} as its Keras module, to import"
    return None


def load_safely(uri: str) -> Any:
    """The Keras model at `uri`, loaded with pickle off and Keras' safe mode on."""
    import mlflow

    before = os.environ.get(PICKLE)
    os.environ[PICKLE] = "false"
    try:
        return mlflow.tensorflow.load_model(uri, keras_model_kwargs={"safe_mode": True})
    finally:
        if before is None:
            del os.environ[PICKLE]
        else:
            os.environ[PICKLE] = before


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.predict",
                                description=__doc__.splitlines()[0])
    p.add_argument("model", help="models:/NAME/VERSION, models:/NAME/latest or runs:/ID/model")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    add_tracking_uri(p)
    args = p.parse_args(argv)
    import mlflow

    from search.tracking import open_store

    try:
        check_server(args.tracking_uri)  # MLflow's client retries a dead one for minutes
        open_store(args.tracking_uri)  # a store MLflow cannot use: one line, not a traceback
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    mlflow.set_tracking_uri(args.tracking_uri)
    tensorflow_started()
    try:
        info = mlflow.models.get_model_info(args.model)
        refused = unsafe(info.flavors) or undescribed(info.metadata)
        model = None if refused else load_safely(args.model)
    except mlflow.exceptions.MlflowException as exc:
        refused = (exc.message if "cloudpickle" not in exc.message else
                   "it needs pickled Python objects (MLflow's cloudpickle), which run code")
    except (ValueError, TypeError) as exc:  # Keras' safe mode refuses a layer of no known class
        refused = first_line(exc)
    if refused is not None:
        print(f"error: cannot load {args.model}: {refused}", file=sys.stderr)
        return EXIT_BAD_INPUT
    meta = info.metadata or {}
    classes, size = meta["classes"], int(meta["image_size"])
    paths, unread = image_files(args.images)
    for line in unread:
        print(f"{line}, skipped", file=sys.stderr)
    failures = len(unread)
    for start in range(0, len(paths), BATCH):
        failures += _classify(model, paths[start:start + BATCH], classes, size,
                              meta.get("color_mode", "rgb"))
    return 1 if failures else 0


def _classify(model: Any, paths: list[Path], classes: list[str], size: int,
              color_mode: str) -> int:
    """Print each photo's class and probability (a line on stderr for one that cannot be
    read); the count of those that could not."""
    files, pixels = [], []
    for path in paths:
        decoded = decode(str(path), size, color_mode)
        if decoded is None:
            why = "unreadable" if path.exists() else "no such file or folder"
            print(f"{shown(str(path))}: {why}, skipped", file=sys.stderr)
        else:
            files.append(path)
            pixels.append(decoded)
    if files:
        outputs = model.predict(np.stack(pixels).astype(np.float32), verbose=0)
        probabilities = class_probabilities(outputs)
        for path, index, row in zip(files, predicted_classes(outputs), probabilities, strict=True):
            print(f"{shown(str(path))}\t{classes[index]}\t{float(row[index]):.3f}")
    return len(paths) - len(files)


if __name__ == "__main__":
    sys.exit(main())
