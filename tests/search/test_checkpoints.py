"""Which checkpoint a search registers, decided without training."""

from __future__ import annotations

from ray import tune

from search.checkpoints import best_checkpoint


def test_best_checkpoint_is_the_first_with_the_highest_val_accuracy(tmp_path) -> None:
    first, second, third = (tune.Checkpoint(str(tmp_path / str(i))) for i in range(3))
    assert best_checkpoint([(first, {"val_accuracy": 0.5}), (second, {"val_accuracy": 0.9}),
                            (third, {"val_accuracy": 0.9})]) == second


def test_no_checkpoint_without_the_metric(tmp_path) -> None:
    assert best_checkpoint([]) is None
    assert best_checkpoint([(tune.Checkpoint(str(tmp_path)), {"loss": 0.1})]) is None
