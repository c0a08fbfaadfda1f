"""Which checkpoints a search keeps: the one it registers, decided without training, and how
few a running search holds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from conftest import write_space
from ray import tune

from search.checkpoints import best_checkpoint
from search.run import main


def test_best_checkpoint_is_the_first_with_the_highest_val_accuracy(tmp_path) -> None:
    first, second, third = (tune.Checkpoint(str(tmp_path / str(i))) for i in range(3))
    assert best_checkpoint([(first, {"val_accuracy": 0.5}), (second, {"val_accuracy": 0.9}),
                            (third, {"val_accuracy": 0.9})]) == second


def test_no_checkpoint_without_the_metric(tmp_path) -> None:
    assert best_checkpoint([]) is None
    assert best_checkpoint([(tune.Checkpoint(str(tmp_path)), {"loss": 0.1})]) is None


def test_a_running_search_holds_few_checkpoints_per_trial(ray_local, tmp_path: Path,
                                                          monkeypatch) -> None:
    """Watched while it runs, no trial ever holds more than its best, its latest, the one the
    saved snapshot names and the one being written; when it ends, its best and latest."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")  # snapshots as a longer search has
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, num_samples=2, epochs=25)
    storage = tmp_path / "ray"
    most: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for trial in storage.glob("*/part-*/run_trial_*"):
                n = len(list(trial.glob("checkpoint_*")))
                most[trial.name] = max(most.get(trial.name, 0), n)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert main([str(space), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                     "--storage-path", str(storage)]) == 0
    finally:
        done.set()
        watcher.join()
    assert len(most) == 2 and 1 <= max(most.values()) <= 4, most
    trials = list(storage.glob("*/part-*/run_trial_*"))
    assert all(1 <= len(list(t.glob("checkpoint_*"))) <= 2 for t in trials)
