"""What a trial's checkpoint folder holds: what training changes, in files a search can thin.

`model.keras` is the trained part (the head and any fine-tuned backbone layers; the whole
model when nothing is frozen) without its optimizer, `optimizer.npz` the optimizer's state,
and `state.json` the epoch. Only a trial that goes on training needs the optimizer's state
(for Adam, twice the weights); a checkpoint kept only to register the model gives it up
(`search/checkpoints.py` deletes the file) and still gives the whole model, with `join` and
the frozen part its config rebuilds.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from trainables.config import TrialConfig
from trainables.models import compile_model

MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.keras", "optimizer.npz", "state.json"


def save(trained: keras.Model, folder: Path, epoch: int) -> None:
    """Write the compiled trained part, its optimizer's state and `epoch` into `folder`."""
    # a .keras file of a compiled model holds its optimizer too: save an uncompiled model of
    # the same layers (keras.models.clone_model compiles its clone)
    keras.Model(trained.inputs, trained.outputs, name=trained.name).save(folder / MODEL_FILE)
    state: dict[str, np.ndarray] = {}
    trained.optimizer.save_own_variables(state)
    np.savez(folder / OPTIMIZER_FILE, **state)  # type: ignore[arg-type]  # numpy's stub
    (folder / STATE_FILE).write_text(json.dumps({"epoch": epoch}))


def load_trained(folder: Path) -> keras.Model:
    """The trained part's weights, uncompiled: what registering the model needs."""
    return keras.models.load_model(folder / MODEL_FILE)


def resume(folder: Path, config: TrialConfig) -> tuple[keras.Model, int]:
    """The trained part compiled with its optimizer as it was, and the epoch it reached."""
    trained = load_trained(folder)
    compile_model(trained, config)
    with np.load(folder / OPTIMIZER_FILE) as state:
        trained.optimizer.load_own_variables(dict(state))
    return trained, json.loads((folder / STATE_FILE).read_text())["epoch"]
