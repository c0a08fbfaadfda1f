"""Model building (every report baseline, pinned parameter counts) and the training loop."""

from __future__ import annotations

import gc
import hashlib
import http.server
import io
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework.func_graph import FuncGraph

from search.space import load_space
from trainables import checkpoint
from trainables.augment import augmentation
from trainables.config import TrialConfig
from trainables.features import features, frozen_key
from trainables.images import Arrays
from trainables.models import (
    Parts,
    augmented,
    build_model,
    build_parts,
    frozen_part,
    join,
)
from trainables.resources import fresh_session
from trainables.train import TrialData, TrialFailed, train
from trainables.weights import pretrained

SPACES = Path(__file__).parents[2] / "spaces"
# Parameter counts of the reports' models as this builder makes them (weights=None).
EXPECTED = {
    ("cats_dogs", "report1_model1"): 813_217,
    ("cats_dogs", "report1_model2"): 831_585,
    ("cats_dogs", "report1_model4"): 185_473,
    ("cats_dogs", "report2_pytorch"): 1_035_762,
    ("rock_paper_scissors", "model1"): 5_631_267,
    ("rock_paper_scissors", "model2"): 20_164_163,
    ("rock_paper_scissors", "model3"): 20_165_219,
    ("blood_cells", "model_a"): 504_228,
    ("blood_cells", "model_b"): 606_596,
    ("blood_cells", "vgg16_frozen"): 16_813_124,
    ("gemstones", "model1"): 21_140_042,
    ("gemstones", "model2"): 21_171_658,
    ("digits", "small_cnn"): 66_410,
}


@pytest.mark.parametrize("space_name, baseline", sorted(EXPECTED))
def test_report_baselines_build_with_stable_parameter_counts(space_name: str,
                                                             baseline: str) -> None:
    space = load_space(SPACES / f"{space_name}.yaml")
    config = space.baselines[baseline].replace(backbone_weights="none")
    model = build_model(config, len(space.data.classes), space.data.channels)
    assert model.count_params() == EXPECTED[(space_name, baseline)]


def test_report1_model2_layers_exactly() -> None:
    config = load_space(SPACES / "cats_dogs.yaml").baselines["report1_model2"]
    model = build_model(config, 2, 3)
    convs = [layer for layer in model.layers if layer.name.startswith("conv_") and
             "relu" not in layer.name]
    assert [(c.filters, c.kernel_size, c.padding) for c in convs] == \
        [(32, (3, 3), "valid"), (32, (3, 3), "valid"), (64, (3, 3), "valid")]
    assert model.output_shape == (None, 1) and model.input_shape == (None, 128, 128, 3)


def test_frozen_and_fine_tuned_backbone() -> None:
    space = load_space(SPACES / "blood_cells.yaml")
    frozen = build_model(space.baselines["vgg16_frozen"].replace(backbone_weights="none"), 4, 3)
    tuned = build_model(space.baselines["vgg16_finetune"].replace(backbone_weights="none"), 4, 3)
    n_frozen = sum(int(np.prod(w.shape)) for w in frozen.trainable_weights)
    n_tuned = sum(int(np.prod(w.shape)) for w in tuned.trainable_weights)
    # block5: three 3x3x512x512 convs with biases become trainable
    assert n_tuned - n_frozen == 3 * (3 * 3 * 512 * 512 + 512)


def test_stack_too_deep_for_image_is_a_clear_error() -> None:
    config = TrialConfig(image_size=16, conv_blocks=4, conv_filters=(8,) * 4,
                         conv_kernel_size=(3,) * 4)
    assert config.feature_map_size() < 1
    with pytest.raises(ValueError, match="too small for 4 conv blocks"):
        build_model(config, 2, 3)


def test_mixed_precision_computes_in_it_and_keeps_float32_weights_and_output() -> None:
    """`precision: mixed_bfloat16`: the layers compute in bfloat16 on float32 weights; the
    output layer computes in float32; the next model a worker builds has Keras' default
    again; and features computed in bfloat16 are cached apart from float32 ones."""
    config = TrialConfig(image_size=32, backbone="vgg16", backbone_weights="none",
                         dense_units=(8,), precision="mixed_bfloat16")
    parts = build_parts(config, 3, 3)
    conv = parts.frozen.get_layer("backbone_frozen").get_layer("block1_conv1")
    assert (conv.compute_dtype, conv.variable_dtype) == ("bfloat16", "float32")
    dense, head = parts.trained.get_layer("dense_0"), parts.trained.get_layer("head")
    assert (dense.compute_dtype, head.compute_dtype) == ("bfloat16", "float32")
    assert join(parts).predict(tiny_photos(3).train.images, verbose=0).dtype == np.float32
    plain = build_parts(config.replace(precision="float32"), 3, 3)
    assert plain.trained.get_layer("dense_0").compute_dtype == "float32"
    assert frozen_key(config, parts.frozen) != frozen_key(config.replace(precision="float32"),
                                                         plain.frozen)


@pytest.mark.parametrize("precision, itemsize", [("float32", 4), ("mixed_bfloat16", 2)])
def test_features_are_cached_in_the_dtype_the_frozen_part_computes_in(
        tmp_path: Path, precision: str, itemsize: int, monkeypatch) -> None:
    """A bfloat16 frozen part's features are cached as bfloat16: half of float32's space,
    read back from the memory-mapped file as the part computed them. The file is written a
    chunk at a time (two here), as NumPy would have saved the whole."""
    monkeypatch.setattr("trainables.features.CHUNK", 4)
    config = TrialConfig(image_size=32, backbone="vgg16", backbone_weights="none",
                         precision=precision)
    frozen = frozen_part(config, 3)
    split = tiny_photos(6).train
    arrays = Arrays(split.images, split.labels, (), tmp_path / "train.npy")
    features(frozen, arrays, frozen_key(config, frozen))  # computed and written
    cached = features(frozen, arrays, frozen_key(config, frozen)).images  # read back
    assert cached.dtype.itemsize == itemsize and str(cached.dtype) == str(frozen.output.dtype)
    np.testing.assert_array_equal(
        cached, frozen.predict(split.images.astype("float32"), batch_size=32, verbose=0))
    [file] = tmp_path.glob("train-features-*.npy")
    assert file.stat().st_size - cached.nbytes < 256  # NumPy's header alone besides


def tiny_data(n: int = 48, size: int = 10, classes: int = 2) -> TrialData:
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int32) % classes
    images = rng.integers(0, 50, (n, size, size, 3)).astype(np.uint8)
    images[labels == 1, 2:8, 2:8] = 220  # class 1 has a bright square
    arrays = Arrays(images, labels, ())
    return TrialData(arrays, arrays, classes)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_train_reports_every_epoch(head: str) -> None:
    config = TrialConfig(image_size=10, conv_blocks=1, conv_filters=(4,),
                         conv_kernel_size=(3,), dense_units=(8,), batch_size=8, head=head,
                         augment=True, rotation=10.0, zoom=0.1, horizontal_flip=True,
                         steps_per_epoch=3, validation_steps=2)
    reports = []
    train(config, tiny_data(), lambda m, model: reports.append(m), epochs=3)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert set(reports[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                               "step_s", "trace_s", "trained_on"}
    assert reports[0]["trained_on"] == "pixels"  # no frozen part
    assert all(r["step_s"] > 0 for r in reports)
    assert reports[0]["trace_s"] > 0 and reports[1]["trace_s"] == reports[2]["trace_s"] == 0


@pytest.mark.parametrize("head, backbone, precision", [
    ("softmax", "none", "float32"), ("sigmoid", "none", "float32"),
    ("softmax", "vgg16", "float32"),  # a frozen part on pixels
    ("softmax", "none", "mixed_float16")])  # the loss scale's own variables
def test_training_makes_no_variable_inside_its_traced_steps(head: str, backbone: str,
                                                            precision: str) -> None:
    """A variable made inside a traced step makes TensorFlow trace it twice (0.5 s of a
    one-epoch trial): the metric and the optimizer are built before `fit`."""
    frozen = backbone != "none"
    config = TrialConfig(image_size=32 if frozen else 10, conv_blocks=1, conv_filters=(4,),
                         conv_kernel_size=(3,), dense_units=(8,), batch_size=8, head=head,
                         backbone=backbone, backbone_weights="none",
                         augment=frozen, horizontal_flip=True, precision=precision)
    made_in_trace = []

    def creator(next_creator: Any, **kwargs: Any) -> Any:
        if tf.inside_function():
            made_in_trace.append(kwargs.get("name"))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        reports: list[dict] = []
        train(config, tiny_photos(12) if frozen else tiny_data(), lambda m, _: reports.append(m),
              epochs=2)
    assert [r["epoch"] for r in reports] == [1, 2] and reports[0]["trained_on"] == "pixels"
    assert made_in_trace == []


def test_augmenting_in_the_training_step_trains_the_trained_part() -> None:
    """Where TensorFlow sees a GPU a trial augments in its training step (the input pipeline
    runs on the trial's CPUs and would starve the GPU); forced here. The trial trains, its
    validation sees the images as they are (the last val_accuracy is the returned model's on
    them), and a model holding the augmentation is never compiled with XLA, which has no
    kernel for its transform."""
    config = TrialConfig(image_size=10, conv_blocks=1, conv_filters=(4,),
                         conv_kernel_size=(3,), dense_units=(8,), batch_size=8,
                         augment=True, rotation=10.0, zoom=0.1, horizontal_flip=True)
    data, reports = tiny_data(), []
    parts = train(config, data, lambda m, _: reports.append(m), epochs=2, augment_in_model=True)
    assert [(r["epoch"], r["trained_on"]) for r in reports] == [(1, "pixels"), (2, "pixels")]
    predicted = join(parts).predict(data.validation.images.astype("float32"), verbose=0)
    assert reports[-1]["val_accuracy"] == pytest.approx(
        np.mean(predicted.argmax(axis=1) == data.validation.labels))
    layer = augmentation(config)
    assert layer is not None
    model = augmented(join(parts), layer)
    with pytest.warns(UserWarning, match="doesn't support `jit_compile=True`"):
        model.compile(loss="sparse_categorical_crossentropy", jit_compile=True)
    assert model.jit_compile is False


def test_diverging_loss_fails_the_trial() -> None:
    config = TrialConfig(image_size=10, conv_blocks=1, conv_filters=(4,),
                         conv_kernel_size=(3,), dense_units=(8,), optimizer="sgd",
                         learning_rate=1e30, batch_size=8)
    with pytest.raises(TrialFailed, match="not finite"):
        train(config, tiny_data(), lambda m, model: None, epochs=3)


def test_a_fresh_session_frees_the_graphs_the_trials_before_it_traced() -> None:
    """A reused worker runs trial after trial: the graphs a trial traced must not outlive it
    (TensorFlow's gradient registry kept each trial's training step, 2 to 5 MB)."""
    config = TrialConfig(image_size=10, conv_blocks=1, conv_filters=(4,),
                         conv_kernel_size=(3,), dense_units=(8,), batch_size=8)
    before = {id(o) for o in gc.get_objects() if isinstance(o, FuncGraph)}
    train(config, tiny_data(), lambda m, model: None, epochs=1)
    traced = [weakref.ref(o) for o in gc.get_objects()
              if isinstance(o, FuncGraph) and id(o) not in before]
    assert traced
    fresh_session()
    gc.collect()
    assert [ref() for ref in traced] == [None] * len(traced)


def tiny_photos(n: int = 36, size: int = 32) -> TrialData:
    """Three classes of RGB pictures large enough for a backbone (32 px, its minimum)."""
    rng = np.random.default_rng(1)
    labels = np.arange(n, dtype=np.int32) % 3
    images = rng.integers(0, 255, (n, size, size, 3)).astype(np.uint8)
    images[labels == 1, 8:24, 8:24] = 250
    images[labels == 2, ::4] = 0
    train_split = Arrays(images, labels, ())
    return TrialData(train_split, Arrays(images[::2], labels[::2], ()), 3)


@pytest.mark.parametrize("backbone, trainable_layers, cut_below, precision", [
    ("vgg16", 0, "block5_pool", "float32"),  # all frozen: the head trains on its output
    ("vgg16", 4, "block4_pool", "float32"),  # block5 fine-tuned: cut just below it
    ("vgg16", 4, "block4_pool", "mixed_bfloat16"),  # bfloat16 features, cached as float32
    ("mobilenet_v2", 0, "out_relu", "float32"),  # batch norm in the frozen part
    # cut below block 16's residual-free start
    ("mobilenet_v2", 9, "block_16_expand_BN", "float32"),
])
def test_the_frozen_part_computed_once_trains_the_same_model(
        backbone: str, trainable_layers: int, cut_below: str, precision: str) -> None:
    """Training the trained part on cached features and the whole model on pixels give the
    same metrics at the same seed; the whole model joined from the parts predicts what the
    trained part predicts on the frozen part's output."""
    config = TrialConfig(image_size=32, backbone=backbone, backbone_weights="none",
                         backbone_trainable_layers=trainable_layers, dense_units=(16,),
                         dense_dropout=0.25, batch_size=8, learning_rate=1e-3,
                         precision=precision)
    runs = {}
    for feature_cache in (True, False):
        reports: list[dict] = []
        parts = train(config, tiny_photos(), lambda m, _, r=reports: r.append(m), epochs=2,
                      feature_cache=feature_cache)
        runs[feature_cache] = reports
    on_features, on_pixels = runs[True], runs[False]
    assert [r["trained_on"] for r in on_features + on_pixels] == ["features"] * 2 + ["pixels"] * 2
    for a, b in zip(on_features, on_pixels, strict=True):
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert parts.frozen.get_layer("backbone_frozen").layers[-1].name == cut_below
    assert not parts.frozen.trainable_weights
    pixels = tiny_photos().train.images[:6].astype("float32")
    whole = join(parts)
    np.testing.assert_allclose(whole.predict(pixels, verbose=0),
                               parts.trained.predict(parts.frozen.predict(pixels, verbose=0),
                                                     verbose=0), atol=1e-6)
    # the parts hold every weight of the model, once
    assert whole.count_params() == build_model(config, 3, 3).count_params()


@pytest.mark.parametrize("trainable_layers", [0, 4])
def test_an_augmented_trial_validates_on_the_cached_features_as_on_pixels(
        trainable_layers: int) -> None:
    """Its training images are augmented, so it trains on pixels; its validation images are
    not, so it validates the trained part on their cached features: the same metrics, each
    epoch, as validating the whole model on pixels, and early stopping reads them."""
    config = TrialConfig(image_size=32, backbone="vgg16", backbone_weights="none",
                         backbone_trainable_layers=trainable_layers, dense_units=(16,),
                         batch_size=8, learning_rate=1e-3, augment=True, rotation=10.0,
                         horizontal_flip=True, early_stopping_patience=1)
    runs = {}
    for feature_cache in (True, False):
        reports: list[dict] = []
        train(config, tiny_photos(), lambda m, _, r=reports: r.append(m), epochs=3,
              feature_cache=feature_cache)
        runs[feature_cache] = reports
    assert len(runs[True]) == len(runs[False]) >= 2
    for a, b in zip(runs[True], runs[False], strict=True):
        assert a["trained_on"] == b["trained_on"] == "pixels"
        for name in ("loss", "accuracy", "val_accuracy"):
            assert a[name] == pytest.approx(b[name], abs=1e-6), name
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["step_s"] > 0


def test_a_checkpoint_holds_the_trained_part_only(tmp_path: Path) -> None:
    """The frozen VGG16 of report 5's model 2 is not in its checkpoint: the head and its
    optimizer state are."""
    space = load_space(SPACES / "gemstones.yaml")
    config = space.baselines["model2"].replace(backbone_weights="none", image_size=64)
    parts = build_parts(config, 10, 3)
    assert parts.trained.count_params() == 2048 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert parts.frozen.count_params() == 14_714_688  # VGG16 without its top


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])  # with its loss scale
def test_a_checkpoint_resumes_with_its_optimizer_and_registers_without_it(
        tmp_path: Path, precision: str) -> None:
    """Resume gets the trained part and its optimizer's state back as they were; a checkpoint
    that gave up its optimizer state still gives the whole model."""
    config = TrialConfig(image_size=32, backbone="vgg16", backbone_weights="none",
                         dense_units=(256,), batch_size=8, learning_rate=1e-3,
                         precision=precision)
    parts = train(config, tiny_photos(), lambda m, trained: checkpoint.save(trained, tmp_path,
                                                                            m["epoch"]),
                  epochs=1)
    trained, epoch = checkpoint.resume(tmp_path, config)
    assert epoch == 1
    for got, want in [(trained.weights, parts.trained.weights),
                      (trained.optimizer.variables, parts.trained.optimizer.variables)]:
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Adam keeps two numbers per weight: the model file holds the weights alone
    model_bytes = (tmp_path / checkpoint.MODEL_FILE).stat().st_size
    assert (tmp_path / checkpoint.OPTIMIZER_FILE).stat().st_size > 1.5 * model_bytes
    (tmp_path / checkpoint.OPTIMIZER_FILE).unlink()  # as the search does once none resumes
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.MODEL_FILE,
                                                          checkpoint.STATE_FILE]
    whole = join(Parts(frozen_part(config, 3), checkpoint.load_trained(tmp_path)))
    pixels = tiny_photos().train.images[:4].astype("float32")
    np.testing.assert_allclose(whole.predict(pixels, verbose=0),
                               join(parts).predict(pixels, verbose=0), atol=1e-6)


def hdf5(values: np.ndarray) -> bytes:
    """An HDF5 file, as Keras keeps weights in, holding `values` as `weights`."""
    file = io.BytesIO()
    with h5py.File(file, "w") as f:
        f["weights"] = values
    return file.getvalue()


WEIGHTS = np.random.default_rng(0).random(1 << 19)
BLOB = hdf5(WEIGHTS)  # a weights file, 4 MB


@pytest.fixture
def slow_weights() -> Iterator[str]:
    """The address of `BLOB` on a local server that sends it in 0.8 s, as a download runs."""
    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BLOB)))
            self.end_headers()
            for start in range(0, len(BLOB), 1 << 18):
                self.wfile.write(BLOB[start:start + (1 << 18)])
                time.sleep(0.05)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/weights"
    server.shutdown()


def fetch(url: str, home: Path, file_hash: str | None = None) -> bytes:
    """What `keras.applications` does to get its weights: Keras' `get_file` into the
    `models` folder of Keras' cache `home` (which must exist, else Keras falls back to
    /tmp/.keras); the bytes it gives."""
    return Path(keras.utils.get_file("weights.h5", url, cache_dir=str(home),
                                     cache_subdir="models", file_hash=file_hash)).read_bytes()


def test_imagenet_weights_are_fetched_by_one_trial_of_a_node_at_a_time(
        tmp_path: Path, slow_weights: str) -> None:
    """Two trials building a backbone with ImageNet weights at once, the second starting
    when the first has downloaded two thirds: through Keras' own `get_file` (with the file's
    hash, as `keras.applications` fetches VGG16's), both get the whole file. Without the
    lock the second found half a file, downloaded it again over the first's download, and
    the first's check of its download failed."""
    downloads = tmp_path / "keras" / "models"
    downloads.mkdir(parents=True)
    target = downloads / "weights.h5"

    def build(weights: str) -> bytes:
        return fetch(slow_weights, downloads.parent, hashlib.sha256(BLOB).hexdigest())

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(pretrained, build, "imagenet", lock=tmp_path / "lock",
                            downloads=downloads)
        while not first.done() and (not target.exists() or
                                    target.stat().st_size < len(BLOB) * 2 // 3):
            time.sleep(0.01)
        assert not first.done()  # the first trial is still downloading
        second = pool.submit(pretrained, build, "imagenet", lock=tmp_path / "lock",
                             downloads=downloads)
        assert first.result() == BLOB and second.result() == BLOB


KILLED_MID_DOWNLOAD = """
import sys
from pathlib import Path
from tests.trainables.test_models import fetch
from trainables.weights import pretrained
url, downloads, lock = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
pretrained(lambda weights: fetch(url, downloads.parent), "imagenet", lock=lock,
           downloads=downloads)
"""


def test_weights_cut_short_by_a_killed_trial_are_fetched_again(
        tmp_path: Path, slow_weights: str) -> None:
    """A trial killed (SIGKILL) a third into downloading weights that Keras has no hash for
    (MobileNetV2's) leaves part of the file; the next trial to build that backbone gets the
    whole file, not the part (which Keras took as whole: every later trial failed on a
    truncated file)."""
    downloads = tmp_path / "keras" / "models"
    downloads.mkdir(parents=True)
    (downloads / "other.h5").write_bytes(b"weights fetched before")
    partial = downloads / "weights.h5"
    child = subprocess.Popen([sys.executable, "-c", KILLED_MID_DOWNLOAD, slow_weights,
                              str(downloads), str(tmp_path / "lock")],
                             cwd=Path(__file__).parents[2])
    while child.poll() is None and (not partial.exists() or
                                    partial.stat().st_size < len(BLOB) // 3):
        time.sleep(0.01)
    assert child.poll() is None, "the trial ended before it had downloaded a third"
    child.kill()
    child.wait()
    assert 0 < partial.stat().st_size < len(BLOB)  # what the killed trial left
    got = pretrained(lambda weights: fetch(slow_weights, downloads.parent), "imagenet",
                     lock=tmp_path / "lock", downloads=downloads)
    assert got == BLOB
    assert (downloads / "other.h5").read_bytes() == b"weights fetched before"


def test_weights_cut_short_before_the_lock_are_fetched_again(
        tmp_path: Path, slow_weights: str) -> None:
    """A weights file cut short that no lock's note names (a notebook stopped mid-download, a
    search run before the lock) is taken as whole by Keras where it has no hash for it, and
    the build fails loading it: the build deletes it, fetches it again and succeeds. A whole
    file beside it is kept."""
    downloads = tmp_path / "keras" / "models"
    downloads.mkdir(parents=True)
    (downloads / "weights.h5").write_bytes(BLOB[:len(BLOB) // 3])
    other = hdf5(np.arange(3.0))
    (downloads / "other.h5").write_bytes(other)

    def build(weights: str) -> np.ndarray:  # fetches, then loads with h5py as Keras does
        fetch(slow_weights, downloads.parent)
        with h5py.File(downloads / "weights.h5", "r") as f:
            return np.asarray(f["weights"])

    got = pretrained(build, "imagenet", lock=tmp_path / "lock", downloads=downloads)
    np.testing.assert_array_equal(got, WEIGHTS)
    assert (downloads / "other.h5").read_bytes() == other
