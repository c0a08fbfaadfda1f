"""The line a running search prints: trials done, running, stopped early and failed, the best
so far, the time spent and an estimate of the rest.

`Progress` is the bookkeeping, testable without Ray; `ProgressCallback` feeds it from Ray
Tune's callback hooks in the driver and prints it when a trial ends, and every half minute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from search.console import say
from search.objective import METRIC

WAITING_S = 60.0  # with no trial started this long, the line says what the trials wait for


def _clock(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Progress:
    """What a search has done so far, out of `total` trials (or, with an `epoch_budget`, out
    of that many epochs in all, which then ends it)."""

    total: int
    started: float
    epoch_budget: int | None = None
    asks: str = ""  # what a trial asks for ("1 CPU and 1 GPU"), named while none can start
    running: set[str] = field(default_factory=set)
    completed: int = 0
    stopped: int = 0
    failed: int = 0
    epochs: int = 0  # results reported: one per epoch
    best: tuple[float, str] | None = None  # (val_accuracy, trial id)
    started_any: bool = False

    @property
    def done(self) -> int:
        return self.completed + self.stopped + self.failed

    def start(self, trial_id: str) -> None:
        self.running.add(trial_id)
        self.started_any = True

    def result(self, trial_id: str, value: float) -> None:
        self.epochs += 1
        if self.best is None or value > self.best[0]:
            self.best = (value, trial_id)

    def end(self, trial_id: str, how: str) -> None:
        """`how` is completed, stopped (early, by ASHA) or failed."""
        self.running.discard(trial_id)
        setattr(self, how, getattr(self, how) + 1)

    def line(self, now: float) -> str:
        elapsed = now - self.started
        # the pace so far (concurrency included): epochs against the epoch budget, if there
        # is one, else finished trials against all
        done, of = (self.epochs, self.epoch_budget) if self.epoch_budget else \
            (self.done, self.total)
        eta = "done" if self.done >= self.total or done >= of else \
            "estimating time left" if not done else f"~{_clock(elapsed / done * (of - done))} left"
        if not self.running and not self.started_any and elapsed >= WAITING_S:
            # Tune waits for a node with what a trial asks for: a cluster's autoscaler may be
            # adding one, or no node will ever have it
            eta = f"no trial has started yet: waiting for a node with {self.asks} free " \
                  f"(search.resources)"
        best = f"best {METRIC} {self.best[0]:.4f} ({self.best[1]})" if self.best else \
            f"no {METRIC} yet"
        return (f"[{_clock(elapsed)}] {self.done}/{self.total} trials done "
                f"({self.completed} completed, {self.stopped} stopped early, "
                f"{self.failed} failed), {len(self.running)} running; {best}; {eta}")


class ProgressCallback(Callback):
    """Prints `Progress.line()` when a trial ends and at least every `every_s` seconds."""

    def __init__(self, total: int, stopped: set[str], epoch_budget: int | None = None,
                 asks: str = "", every_s: float = 30.0):
        self.progress = Progress(total, time.monotonic(), epoch_budget, asks)
        self.stopped = stopped  # trial ids the scheduler stopped early (filled by it)
        self.every_s = every_s  # (no stream kept: Tune pickles its callbacks)
        self._printed = time.monotonic()

    def _print(self) -> None:
        self._printed = time.monotonic()
        say(self.progress.line(self._printed))

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress.start(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        if METRIC in result:
            self.progress.result(trial.trial_id, result[METRIC])

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self.progress.end(trial.trial_id,
                          "stopped" if trial.trial_id in self.stopped else "completed")
        self._print()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress.end(trial.trial_id, "failed")
        self._print()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self._printed >= self.every_s:
            self._print()
