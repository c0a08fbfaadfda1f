"""A registered model is data, not code: our models load with pickle off, in Keras' safe mode,
without this package; `search.predict` refuses a model that would run code on load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np

from search.predict import main as predict
from search.predict import unsafe
from trainables.config import TrialConfig
from trainables.models import build_model

# loads saved models as a user's server would: this package cannot be imported, MLflow's
# pickle deserialization is off, Keras' safe mode on
LOAD_ELSEWHERE = """
import importlib.abc, os, sys
class NotThisPackage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("search", "trainables"):
            raise ImportError(f"{name} must not be needed to load a model")
sys.meta_path.insert(0, NotThisPackage())
os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
import mlflow, numpy as np
images = np.load(sys.argv[1])
for folder in sys.argv[2:]:
    model = mlflow.tensorflow.load_model(folder, keras_model_kwargs={"safe_mode": True})
    np.save(f"{folder}.npy", model.predict(images, verbose=0))
"""
BACKBONES = ("vgg16", "mobilenet_v2", "efficientnet_b0")


def test_models_load_without_pickle_or_this_package(tmp_path: Path) -> None:
    """Each backbone's preprocessing included (the CNNs' model is the end-to-end search's),
    and a model that computes in bfloat16, its layers' dtype policies kept."""
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    configs = {backbone: TrialConfig(image_size=32, backbone=backbone, backbone_weights="none",
                                     dense_units=(8,)) for backbone in BACKBONES}
    configs["vgg16_bfloat16"] = configs["vgg16"].replace(precision="mixed_bfloat16")
    expected = {}
    for name, config in configs.items():
        model = build_model(config, 3, 3)
        # requirements stated, as the driver states them (inferring them loads the model)
        mlflow.tensorflow.save_model(model, tmp_path / name, pip_requirements=["keras"])
        assert not list((tmp_path / name).rglob("*.cloudpickle"))
        expected[name] = model.predict(images, verbose=0)
    subprocess.run([sys.executable, "-I", "-c", LOAD_ELSEWHERE, str(tmp_path / "images.npy"),
                    *(str(tmp_path / name) for name in configs)], check=True,
                   capture_output=True)
    for name in configs:
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), expected[name],
                                   rtol=1e-5, atol=1e-6)
    # float32 and bfloat16 are not the same model: had the policy been lost on load, the
    # bfloat16 model would have predicted the float32 one's values
    assert not np.allclose(expected["vgg16_bfloat16"], expected["vgg16"], rtol=1e-5, atol=1e-6)


class WritesAMarker:
    """What an attacker registers: unpickling it touches a file (it could do anything)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_predict_refuses_a_model_that_needs_pickle(tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    marker = tmp_path / "code-ran"
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    with mlflow.start_run():
        mlflow.tensorflow.log_model(model, name="model", registered_model_name="evil",
                                    pip_requirements=["keras"],
                                    custom_objects={"evil": WritesAMarker(marker)},
                                    metadata={"classes": ["a", "b"], "image_size": 8})
    marker.unlink(missing_ok=True)  # MLflow may load the model it logs
    photos = tmp_path / "photos"
    photos.mkdir()
    keras.utils.save_img(photos / "a.png", np.zeros((8, 8, 3)))
    capsys.readouterr()
    assert predict(["models:/evil/1", str(photos), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: cannot load models:/evil/1: it needs pickled Python objects " \
                  "(MLflow's cloudpickle), which run code", err
    assert not marker.exists()


def test_a_model_no_search_registered_is_refused_with_one_line(tmp_path: Path, capsys) -> None:
    """A model logged by hand into a shared registry says nothing of its classes and image
    size: one line, not a KeyError's traceback."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        mlflow.tensorflow.log_model(build_model(TrialConfig(image_size=32), 2, 3), name="model",
                                    registered_model_name="by_hand", pip_requirements=["keras"])
    capsys.readouterr()
    assert predict(["models:/by_hand/1", str(tmp_path), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: cannot load models:/by_hand/1: its metadata has no classes and no " \
                  "image_size: it was not registered by a search (whose models carry them)", err


def test_a_model_that_names_code_to_import_is_refused() -> None:
    assert "names 'os' as its Keras module" in unsafe({"tensorflow": {"keras_module": "os"}})
    assert "ships Python code" in unsafe({"tensorflow": {"code": "code"}})
    assert "not a Keras model" in unsafe({"python_function": {}})
    assert unsafe({"tensorflow": {"keras_module": "tensorflow.keras"}}) is None


def test_a_store_mlflow_cannot_use_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    # no PostgreSQL driver here (or no database at port 1): was a traceback
    assert predict(["models:/x/1", str(tmp_path), "--tracking-uri",
                    "postgresql://127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MLflow cannot use the tracking store postgresql://127.0.0.1:1/db"
                          ": "), err
    assert len(err.splitlines()) == 1
