"""The epoch budget (`--epoch-budget`): a Tune stopper that ends a search once its trials
have trained so many epochs in all, counted from the results the search's folder holds, so
that a resumed search counts what it trained before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.stopper import Stopper

from search.folder import SearchFolder


class EpochBudget(Stopper):
    """Ends the whole search once its trials have trained the epoch budget of the driver
    running it (`SearchFolder.epoch_budget` of `folder`; None: no budget) in all (each report
    is one epoch), so searches can be compared, or run, at a fixed compute budget. The
    epochs of the search's earlier parts and runs count too. A part Tune resumes unpickles
    this as the part was made, so at its first report it reads the budget given now and
    counts the epochs the trials in `folder` have reported: a resumed budgeted search had
    trained its budget again, and one resumed with a larger budget (or none) stopped at once
    at the old one, to be stopped again at each resume."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.epochs: int | None = None
        self.spent: int | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        # Tune asks before its logger writes this report
        if self.spent is None:
            self.epochs = SearchFolder.load(self.folder).epoch_budget
            self.spent = epochs_reported(self.folder) if self.epochs is not None else 0
        self.spent += 1
        return False

    def stop_all(self) -> bool:
        return self.epochs is not None and self.spent is not None and self.spent >= self.epochs


def epochs_reported(folder: Path) -> int:
    """The epochs the trials of the search in `folder` have reported, in all its parts: the
    lines of their results (Tune's result.json, one report a line)."""
    return sum(path.read_bytes().count(b"\n") for path in folder.glob("part-*/*/result.json"))


def spent(folder: Path, epoch_budget: int | None) -> bool:
    """Whether the search in `folder` has trained its epoch budget, if it has one."""
    return epoch_budget is not None and epochs_reported(folder) >= epoch_budget
