"""A real search on tiny generated images: Ray Tune, Optuna, ASHA, TensorFlow and MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from conftest import write_class_folders
from mlflow.tracking import MlflowClient

from search.predict import main as predict
from search.run import main


def test_search_end_to_end(ray_local, tiny_space_file, tmp_path: Path, capsys) -> None:
    space = tiny_space_file(num_samples=5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main([str(space), "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "registered model: models:/tiny/1" in out

    client = MlflowClient(uri)
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
    assert 0.0 <= best.data.metrics["test_accuracy"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(best.info.run_id)}
    assert {"test_confusion_matrix.png", "test_classification_report.json"} <= artifacts
    mlflow.set_tracking_uri(uri)
    model = mlflow.tensorflow.load_model("models:/tiny/1")
    assert model.output_shape == (None, 3)

    # the parent carries the overview; the table is also in Ray's storage
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.parquet", "results.csv", "val_accuracy_curves.png"} <= parent_artifacts
    tables = list((tmp_path / "ray").glob("*/results.parquet"))
    assert len(tables) == 1
    table = pd.read_parquet(tables[0])
    assert len(table) == 5 and set(table["status"]) <= {"completed", "stopped", "failed"}
    assert table.loc[table["baseline"] == "diverges", "status"].item() == "failed"
    assert {"epochs_run", "best_val_accuracy", "wall_s", "learning_rate"} <= set(table.columns)

    # the registry alone is enough to classify new photos; unreadable ones are skipped
    photos = tmp_path / "photos"
    write_class_folders(photos, 2, seed=9)
    (photos / "circle" / "broken.jpg").write_bytes(b"not an image")
    capsys.readouterr()
    assert predict(["models:/tiny/latest", str(photos), "--tracking-uri", uri]) == 1
    captured = capsys.readouterr()
    lines = [ln.split("\t") for ln in captured.out.splitlines()]
    assert len(lines) == 6 and all(ln[1] in {"circle", "square", "stripes"} for ln in lines)
    assert all(0.0 <= float(ln[2]) <= 1.0 for ln in lines)
    assert "broken.jpg: unreadable, skipped" in captured.err
