"""A real search on tiny generated images: Ray Tune, Optuna, ASHA, TensorFlow and MLflow, then
what a user does after it (the report, classifying new photos)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import (
    CLASSES,
    free_port,
    stop_mlflow_server,
    wait_for_server,
    write_class_folders,
    write_tiny_space,
)
from mlflow.tracking import MlflowClient

from search.predict import main as predict
from search.report import main as report
from search.snapshots import KEPT
from search.space import load_space
from search.tracking import BEST_TRIAL_ID, TRIAL_ID
from trainables.checkpoint import OPTIMIZER_FILE, STATE_FILE
from trainables.data import list_images
from trainables.images import decode, load_arrays


def _accuracy(model, space_file: Path, split: str) -> float:
    """`model`'s accuracy on a split of the space's data, computed here, apart from the search."""
    space = load_space(space_file)
    listing = list_images(space.data, space.seed)
    arrays = load_arrays(listing.splits[split], 12, space.data.color_mode, space.data.cache_dir)
    predicted = model.predict(arrays.images.astype(np.float32), verbose=0).argmax(axis=1)
    return float(np.mean(predicted == arrays.labels))


def test_search_records_every_trial_and_registers_the_best(finished_search) -> None:
    assert finished_search.exit_code == 0, finished_search.out
    assert "registered model: models:/tiny/1" in finished_search.out
    assert "5/5 trials done" in finished_search.out  # the progress line
    assert "ms/step" not in finished_search.out  # no Keras progress bars from MLflow's predict
    cache = re.search(r"^cache \(.*\): (.+), ([\d.]+) MB on this machine$",
                      finished_search.out, re.MULTILINE)
    assert cache is not None, finished_search.out
    decoded = sum(f.stat().st_size for f in Path(cache[1]).iterdir())
    assert cache[2] == f"{decoded / 2**20:.1f}" and decoded > 0

    client = MlflowClient(finished_search.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "search"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and len(children) == 5
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert parent.info.status == "FINISHED"

    # the diverging baseline failed with its reason; the search went on
    by_baseline = {c.data.params.get("baseline"): c for c in children}
    failed = by_baseline["diverges"]
    assert failed.info.status == "FAILED" and "not finite" in failed.data.tags["error"]
    small = by_baseline["small"]
    assert small.info.status == "FINISHED"
    history = client.get_metric_history(small.info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(1, len(history) + 1))
    assert small.data.params["conv_filters_0"] == "8"
    assert "conv_filters_1" not in small.data.params  # one block: no second block's filters

    # the best model: evaluated on test, logged, registered
    version = client.get_model_version("tiny", "1")
    best = client.get_run(version.run_id)
    assert best.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert best.data.tags[TRIAL_ID] == parent.data.tags[BEST_TRIAL_ID]
    # per-class metrics under names MLflow takes; the class names as they are in the model
    assert {"test_f1_circle", "test_f1_Tiger_s Eye"} <= set(best.data.metrics)
    mlflow.set_tracking_uri(finished_search.tracking_uri)
    assert mlflow.models.get_model_info("models:/tiny/1").metadata["classes"] == list(CLASSES)
    artifacts = {a.path for a in client.list_artifacts(best.info.run_id)}
    assert {"test_confusion_matrix.png", "test_classification_report.json"} <= artifacts
    model = mlflow.tensorflow.load_model("models:/tiny/1")
    assert model.output_shape == (None, 3)
    # the registered model is the best trial's best epoch: on the validation split it scores
    # the best val_accuracy of the search, and its logged test accuracy is what it scores
    curves = {c.data.tags[TRIAL_ID]: [m.value for m in client.get_metric_history(
        c.info.run_id, "val_accuracy")] for c in children}
    best_val = max(max(curve, default=0.0) for curve in curves.values())
    assert _accuracy(model, finished_search.space, "validation") == \
        pytest.approx(best_val, abs=1e-6)
    test_accuracy = _accuracy(model, finished_search.space, "test")
    assert best.data.metrics["test_accuracy"] == pytest.approx(test_accuracy, abs=1e-6)
    assert parent.data.metrics["test_accuracy"] == pytest.approx(test_accuracy, abs=1e-6)
    requirements = Path(mlflow.artifacts.download_artifacts(
        "models:/tiny/1/requirements.txt")).read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {"mlflow", "tensorflow", "keras"}
    assert not any(r.startswith("keras-search") for r in requirements)  # not on PyPI

    # the parent carries the overview and Optuna's views; the table is also in Ray's storage
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.parquet", "results.csv", "val_accuracy_curves.png",
            "optuna_intermediate_values.png", "optuna_optimization_history.png"} \
        <= parent_artifacts
    tables = list(finished_search.storage.glob("*/results.parquet"))
    assert len(tables) == 1
    table = pd.read_parquet(tables[0])
    assert len(table) == 5 and set(table["status"]) <= {"completed", "stopped", "failed"}
    assert table.loc[table["baseline"] == "diverges", "status"].item() == "failed"
    assert {"epochs_run", "best_val_accuracy", "wall_s", "learning_rate"} <= set(table.columns)

    # the best trial (and any equal to it) keeps one checkpoint: its first epoch of best
    # val_accuracy, without the optimizer's state; the trials it beat keep none, nor does a
    # trial that diverged before its first report
    trial_folders = [p for p in finished_search.storage.glob("*/part-1/*")
                     if p.is_dir() and p.name != KEPT]
    assert {p.name for p in trial_folders} == set(table["trial_id"]) == set(curves)
    assert len(trial_folders) == 5 and table["epochs_run"].max() > 2
    assert [] in curves.values()  # the diverging baseline's
    not_saved = 0
    for folder in trial_folders:
        kept, curve = list(folder.glob("checkpoint_*")), curves[folder.name]
        assert len(kept) == (1 if curve and max(curve) == best_val else 0), (folder.name, curve)
        if kept:
            assert not (kept[0] / OPTIMIZER_FILE).exists()
            epoch = json.loads((kept[0] / STATE_FILE).read_text())["epoch"]
            assert epoch == curve.index(max(curve)) + 1, (folder.name, epoch, curve)
        # it checkpointed each epoch of a new best val_accuracy, and any other only once a
        # minute had passed since its last (search.checkpoint_every_s's default)
        rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
        not_saved += sum(not row["checkpoint_dir_name"] for row in rows)
        best, saved_at = -1.0, -60.0
        for row in rows:
            if row["val_accuracy"] > best:
                assert row["checkpoint_dir_name"], (folder.name, row["epoch"])
            elif row["checkpoint_dir_name"]:
                assert row["time_total_s"] - saved_at > 50, (folder.name, row["epoch"])
            if row["checkpoint_dir_name"]:
                saved_at = row["time_total_s"]
            best = max(best, row["val_accuracy"])
    assert not_saved > 0  # these trials take seconds: some epochs were not checkpointed


def test_report_reads_the_search_back_from_mlflow(finished_search, capsys) -> None:
    uri = finished_search.tracking_uri
    assert report([str(finished_search.space), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "search tiny: 5 trials" in out
    assert "baseline small" in out and "baseline diverges" in out
    # a baseline that failed before its first epoch ended says why, not "best is +nan"
    assert re.search(r"baseline diverges +failed: .*metrics not finite", out), out
    assert "+nan" not in out
    # some trials failed, not all: the summary names their commonest failure
    assert re.search(r"the commonest failure \(\d+ of \d+\): .*metrics not finite", out), out
    assert "registered model: models:/tiny/1" in out
    assert "results.parquet" in out and "test_confusion_matrix.png" in out
    assert "the model: models:/tiny/1 -> models:/m-" in out
    # the experiment's name works as well as the space file; a wrong name is a clear error
    assert report(["tiny", "--tracking-uri", uri]) == 0
    capsys.readouterr()
    assert report(["nope", "--tracking-uri", uri]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err


def test_registered_model_classifies_new_photos(finished_search, tmp_path: Path, capsys,
                                                monkeypatch) -> None:
    monkeypatch.setattr("search.predict.BATCH", 3)  # the photos in batches, a broken one among
    photos = tmp_path / "photos"
    write_class_folders(photos, 2, seed=9)
    (photos / "circle" / "broken.jpg").write_bytes(b"not an image")
    files = sorted(photos.rglob("*.png"))
    (photos / "circle" / "._000.png").write_bytes(b"a Mac's shadow file")  # not photos
    (photos / ".ipynb_checkpoints").mkdir()
    (photos / ".ipynb_checkpoints" / "000-checkpoint.png").write_bytes(files[0].read_bytes())
    odd = tmp_path / "odd"  # a folder the system cannot list (for a user: a stale mount)
    odd.mkdir()
    (odd / "photo.png").symlink_to("n" * 300)  # a name past the system's limit
    uri = finished_search.tracking_uri
    assert predict(["models:/tiny/latest", str(photos), str(tmp_path / "typo.png"), str(odd),
                    "--tracking-uri", uri]) == 1
    captured = capsys.readouterr()
    printed = {Path(path).relative_to(photos): (cls, p) for path, cls, p in
               (ln.split("\t") for ln in captured.out.splitlines())}
    assert "broken.jpg: unreadable, skipped" in captured.err
    assert "typo.png: no such file or folder, skipped" in captured.err
    assert re.search(r"odd: cannot be read \(.*File name too long.*\), skipped", captured.err)
    # each photo's class and probability, as the registered model gives them
    mlflow.set_tracking_uri(uri)
    outputs = mlflow.tensorflow.load_model("models:/tiny/1").predict(
        np.stack([decode(str(f), 12, "rgb") for f in files]).astype(np.float32), verbose=0)
    assert printed == {f.relative_to(photos): (CLASSES[row.argmax()], f"{row.max():.3f}")
                       for f, row in zip(files, outputs, strict=True)}


def test_predict_prints_its_answers_and_no_line_of_tensorflows_own(finished_search,
                                                                  tmp_path: Path) -> None:
    # TensorFlow's C++ start-up lines go past Python: only a process of its own shows them
    photos = tmp_path / "photos"
    write_class_folders(photos, 1, seed=9)
    done = subprocess.run([sys.executable, "-m", "search.predict", "models:/tiny/latest",
                           str(photos), "--tracking-uri", finished_search.tracking_uri],
                          cwd=finished_search.space.parent, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == len(list(photos.rglob("*.png")))
    assert done.stderr == "", done.stderr[-3000:]

def test_mlflow_serves_the_registered_model_over_http(finished_search, tmp_path: Path) -> None:
    """`mlflow models serve`, as people put a registered model behind an API: with pickle
    deserialization off, it answers a real request with images."""
    photos = write_class_folders(tmp_path / "photos", 2, seed=11)
    files = sorted(photos.rglob("*.png"))
    images = np.stack([decode(str(f), 12, "rgb") for f in files]).astype(np.float32)
    port, log = free_port(), tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": finished_search.tracking_uri,
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/tiny/1",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, server, log)
        request = urllib.request.Request(
            f"{url}/invocations", json.dumps({"inputs": images.tolist()}).encode(),
            {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.array(json.load(response)["predictions"])
    finally:
        stop_mlflow_server(server)
    mlflow.set_tracking_uri(finished_search.tracking_uri)
    local = mlflow.tensorflow.load_model("models:/tiny/1").predict(images, verbose=0)
    assert served.shape == (len(files), len(CLASSES))
    np.testing.assert_allclose(served, local, rtol=1e-5, atol=1e-6)
    assert [CLASSES[i] for i in served.argmax(axis=1)] == \
        [CLASSES[i] for i in local.argmax(axis=1)]


def test_the_terminal_shows_the_search_and_the_log_holds_the_rest(tmp_path: Path) -> None:
    """A search as a user runs it: the progress line, the summary, and no machinery (no
    TensorFlow or Ray start-up lines, no tracebacks of a trial that failed as it should, no
    Ray paths); the search's log, named by the summary, has those."""
    space = write_tiny_space(tmp_path, num_samples=3)  # the diverging baseline fails
    done = subprocess.run(
        [sys.executable, "-m", "search.run", str(space), "--tracking-uri",
         f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage-path", str(tmp_path / "ray")],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    for machinery in ("Traceback", "cuInit", "cudart", "absl", "Checkpoint successfully",
                      "tune_controller", "View run", "Successfully registered", " INFO ",
                      "WARNING", "(raylet)", "run_trial pid"):
        assert machinery not in out, f"{machinery!r} on the terminal:\n{out[-3000:]}"
    assert "3/3 trials done" in out and "registered model: models:/tiny/1" in out, out
    assert len(out.splitlines()) <= 15, out
    log = Path(re.search(r"log \(Ray, Tune, TensorFlow, MLflow\): (\S+)", out)[1])
    text = log.read_text()
    assert "Trial task failed" in text and "not finite" in text  # Tune's traceback
    assert "Checkpoint successfully created" in text  # a trial's own lines
