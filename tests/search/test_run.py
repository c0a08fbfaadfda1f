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
