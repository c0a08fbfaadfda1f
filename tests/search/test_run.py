"""The CLI: bad input exits 2 with one message; dry runs need no data."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.run import main

SPACES = Path(__file__).parents[2] / "spaces"


def test_broken_space_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {root: d}\nmodel: {dense_dropout: -1}\n")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: model.dense_dropout: must be >= 0.0, got -1.0"


def test_missing_data_exits_2_before_anything_starts(tmp_path: Path, capsys,
                                                      monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([str(SPACES / "cats_dogs.yaml"), "--storage-path", "r"]) == 2
    assert "data folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("name", ["digits", "cats_dogs", "rock_paper_scissors"])
def test_dry_run_without_data(name: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([str(SPACES / f"{name}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "does not exist" in out and "parameters" in out
    assert not (tmp_path / "data").exists()


def test_dry_run_reports_images_per_split(tiny_space_file, capsys) -> None:
    assert main([str(tiny_space_file()), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "validation  circle" in out and "small" in out and "diverges" in out


def test_epoch_budget_ends_the_search_and_closes_every_run(ray_local, tiny_space_file,
                                                           tmp_path: Path, capsys,
                                                           monkeypatch) -> None:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow writes a SQLite store's artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = str(tiny_space_file(num_samples=20))
    code = main([space, "--epoch-budget", "4",
                 "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")])
    assert code == 0, capsys.readouterr().out
    table = pd.read_parquet(next((tmp_path / "ray").glob("*/results.parquet")))
    assert len(table) < 20
    assert table["epochs_run"].sum() <= 4 + 1  # the other running trial may end its epoch
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    assert main([space, "--epoch-budget", "0"]) == 2
    assert "--epoch-budget must be >= 1" in capsys.readouterr().err
