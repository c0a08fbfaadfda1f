"""The line a running search prints: trials done, running, stopped early and failed, the best
so far, the time spent and an estimate of the rest, in epochs: those ASHA can be expected to
let the trials run, at the pace of the epochs done.

`Progress` is the bookkeeping, testable without Ray; `ProgressCallback` feeds it from Ray
Tune's callback hooks in the driver and prints it when a trial ends, and every half minute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from search.console import say
from search.folder import SearchFolder
from search.objective import METRIC
from search.space import Asha

WAITING_S = 60.0  # with no trial started this long, the line says what the trials wait for


def _clock(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class _Running:
    """A running trial: when it started here, the epochs it runs unless ASHA stops it, the
    results it reported since and when the last came, and its last epoch (a resumed trial
    starts past 0). A trial started again in this search (more CPUs, a retry) keeps its
    last epoch and pace until it reports (`restarted`)."""

    began: float
    planned: int
    results: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    epoch: int = 0
    earlier_pace: float | None = None

    def pace(self) -> float | None:
        """Seconds per epoch: since its first result here, once it has two (its first epoch
        carries its start: the model built and traced, a new worker's imports), else since
        it started here, else before it started again."""
        if self.results > 1:
            return (self.last_at - self.first_at) / (self.results - 1)
        if self.results:
            return self.last_at - self.began
        return self.earlier_pace

    def reported(self, epoch: int, now: float) -> None:
        """It reported `epoch` at `now`."""
        if not self.results:
            self.first_at = now
        self.results, self.epoch, self.last_at = self.results + 1, epoch, now

    def left(self, now: float, epochs: float) -> float | None:
        """Its own time for `epochs` more at its pace, less what it has spent on the epoch it
        is in; None while it has no pace (no result yet, here or before it started again)."""
        pace = self.pace()
        if pace is None:
            return None
        since = now - (self.last_at if self.results else self.began)
        return max(0.0, pace * epochs - since)

    def restarted(self, now: float, planned: int) -> _Running:
        return _Running(now, planned, epoch=self.epoch, earlier_pace=self.pace())


@dataclass
class Progress:
    """What a search has done so far, out of `total` trials (or, with an `epoch_budget`, out
    of that many epochs in all, which then ends it)."""

    total: int
    started: float
    epoch_budget: int | None = None
    asks: str = ""  # what a trial asks for ("1 CPU and 1 GPU"), named while none can start
    asha: Asha = Asha()
    running: dict[str, _Running] = field(default_factory=dict)
    completed: int = 0
    stopped: int = 0
    failed: int = 0
    cut: int = 0  # ended by the epoch budget before their planned epochs (a resumed part's)
    epochs: int = 0  # results reported: one per epoch
    epochs_before: int = 0  # trained before this part was resumed: spent of a budget, not paced
    best: tuple[float, str] | None = None  # (val_accuracy, trial id)
    started_any: bool = False
    paced_at: float = 0.0  # when a trial last reported or ended
    first_result_at: float | None = None  # this part's first result
    start_up: float | None = None  # of this part, before its first epoch began: not paced
    epoch_timed: bool = False  # start_up timed by a trial's second epoch, not its first
    expected: float = 0.0  # the epochs the trials started here could be expected to run
    started_trials: int = 0  # the trials started here (one started again counted once)

    @property
    def done(self) -> int:
        return self.completed + self.stopped + self.failed + self.cut

    def start(self, trial_id: str, planned: int = 0, now: float = 0.0) -> None:
        """Trial `trial_id` started at `now`, to run `planned` epochs unless stopped."""
        before = self.running.get(trial_id)
        self.running[trial_id] = before.restarted(now, planned) if before else \
            _Running(now, planned)
        if before is None:
            self.expected += self.asha.epochs_left(planned)
            self.started_trials += 1
        self.started_any = True

    def result(self, trial_id: str, value: float, epoch: int = 0, now: float = 0.0,
               took: float | None = None) -> None:
        """Trial `trial_id` reported `value` for `epoch` at `now`, `took` seconds after its
        last report (or its start, in its worker: Tune's `time_this_iter_s`)."""
        self.epochs += 1
        self.paced_at = now
        if self.first_result_at is None:
            self.first_result_at = now
        running = self.running.get(trial_id)
        if running is not None:
            running.reported(epoch, now)
        if took is not None and not self.epoch_timed:
            # what came before the part's first epoch began is paid once; paced, it had the
            # first estimates at twice the time left. That epoch is taken to be what the
            # first result took in its worker (Ray's workers starting, their imports, left
            # out), then, once a trial reports its second epoch, what that one took (the
            # first's extra left out too: a worker's first TensorFlow graph, the data opened)
            self.start_up = max(0.0, self.first_result_at - took - self.started)
            self.epoch_timed = running is not None and running.results > 1
        if self.best is None or value > self.best[0]:
            self.best = (value, trial_id)

    def restored(self, trial_id: str, how: str | None, best: float | None,
                 epochs: int) -> None:
        """A trial that a resumed part brings back, having trained `epochs` epochs and
        reached `best`: ended (`how`, as in `end`, or cut: by an epoch budget), or to go on
        (None)."""
        self.epochs_before += epochs
        if how is not None:
            setattr(self, how, getattr(self, how) + 1)
        if best is not None and (self.best is None or best > self.best[0]):
            self.best = (best, trial_id)

    def end(self, trial_id: str, how: str, now: float = 0.0) -> None:
        """Trial `trial_id` ended at `now`; `how` is completed, stopped (early, by ASHA) or
        failed."""
        self.running.pop(trial_id, None)
        setattr(self, how, getattr(self, how) + 1)
        self.paced_at = now

    def _left(self, now: float) -> float | None:
        """Seconds left: the epochs left at the pace of those done so far (concurrency
        included), as the search stood at its last report or end, counted down since
        (measured at `now`, it would grow between two, for no news); None before anything
        can tell. With a budget, the epochs left of it. Without, the epochs ASHA can be
        expected to let each running trial run yet, and each trial not started the mean of
        those started (`Asha.epochs_left`); and at least what the slowest running trial
        needs at its own pace: the last trial of a search may run for minutes after the
        others. Once every trial has started, that is all that is left, unknown until each
        running trial has reported.

        (Counted in trials done, the estimate left out the epochs of the trials running,
        and took those ASHA stops first, which end first, for the mean trial: 40 trials of
        6-s epochs, 4 at a time, said 8:30 left when 2:36 was, as trials ended together.)"""
        at = self.paced_at
        pace = (at - self.started - (self.start_up or 0.0)) / self.epochs if self.epochs \
            else None
        if self.epoch_budget:
            left = self.epoch_budget - self.epochs_before - self.epochs
            return None if pace is None else max(0.0, pace * left - (now - at))
        yet = {t: self.asha.epochs_left(r.planned, r.epoch) for t, r in self.running.items()}
        own = [r.left(now, yet[t]) for t, r in self.running.items()]
        known = [left for left in own if left is not None]
        waiting = self.total - self.done - len(self.running)
        if self.running and waiting <= 0:
            return max(known) if len(known) == len(own) else None
        guesses = [] if pace is None or not self.started_trials else \
            [max(0.0, pace * (waiting * self.expected / self.started_trials + sum(yet.values()))
                 - (now - at))]
        return max(guesses + known, default=None)

    def line(self, now: float) -> str:
        elapsed = now - self.started
        left = self._left(now)
        over = self.epoch_budget is not None and \
            self.epochs_before + self.epochs >= self.epoch_budget
        eta = "done" if self.done >= self.total or over else \
            "estimating time left" if left is None else f"~{_clock(left)} left"
        if not self.running and not self.started_any and elapsed >= WAITING_S:
            # Tune waits for a node with what a trial asks for: a cluster's autoscaler may be
            # adding one, or no node will ever have it
            eta = f"no trial has started yet: waiting for a node with {self.asks} free " \
                  f"(search.resources)"
        best = f"best {METRIC} {self.best[0]:.4f} ({self.best[1]})" if self.best else \
            f"no {METRIC} yet"
        cut = f"{self.cut} cut short by the epoch budget, " if self.cut else ""
        return (f"[{_clock(elapsed)}] {self.done}/{self.total} trials done "
                f"({self.completed} completed, {self.stopped} stopped early, {cut}"
                f"{self.failed} failed), {len(self.running)} running; {best}; {eta}")


class ProgressCallback(Callback):
    """Prints `Progress.line()` when a trial ends and at least every `every_s` seconds."""

    def __init__(self, total: int, stopped: set[str], asha: Asha, folder: Path | None = None,
                 asks: str = "", every_s: float = 30.0):
        self.progress = Progress(total, time.monotonic(), None, asks, asha)
        self.stopped = stopped  # trial ids the scheduler stopped early (filled by it)
        self.folder = folder  # the search's, whose epoch budget is read as Tune begins
        self.every_s = every_s  # (no stream kept: Tune pickles its callbacks)
        self._printed = time.monotonic()
        self._restoring = False

    def setup(self, *args: Any, **info: Any) -> None:
        """Tune begins: a new part, or a resumed one with this callback unpickled as it was
        when the part was made, its clock another process's (and the resume's first line
        said that no trial had started for minutes, waiting for a node). The clock starts
        now, with the epoch budget given now; the trials Tune restored are counted at its
        first step."""
        p = self.progress
        budget = SearchFolder.load(self.folder).epoch_budget if self.folder else None
        self.progress = Progress(p.total, time.monotonic(), budget, p.asks, p.asha)
        self._printed = self.progress.started
        self._restoring = True

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._restoring:
            return
        self._restoring = False
        for trial in trials:
            last = trial.last_result or {}
            epochs = int(last.get("training_iteration", 0))
            if epochs or trial.status in ("TERMINATED", "ERROR"):  # else not started yet
                best = trial.metric_analysis.get(METRIC, {}).get("max")
                self.progress.restored(trial.trial_id, self._ended(trial, last), best, epochs)

    def _ended(self, trial: Any, last: dict[str, Any]) -> str | None:
        """How a trial Tune restored had ended (None: it goes on). By its epochs alone, a
        trial that Keras' early stopping ended, or the epoch budget, was stopped early."""
        if trial.status == "ERROR":
            return "failed"
        if trial.status != "TERMINATED":
            return None
        if trial.trial_id in self.stopped:  # the scheduler's, with its saved state's stops
            return "stopped"
        # Tune marks `done` the result of a trial that returned or that it stopped; the
        # budget ends the search around the trials still running
        return "completed" if last.get("done") else "cut"

    def _print(self) -> None:
        self._printed = time.monotonic()
        say(self.progress.line(self._printed))

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress.start(trial.trial_id, self.progress.asha.planned(trial.config),
                            time.monotonic())

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        if METRIC in result:
            self.progress.result(trial.trial_id, result[METRIC],
                                 result.get("training_iteration", 0), time.monotonic(),
                                 result.get("time_this_iter_s"))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self.progress.end(trial.trial_id,
                          "stopped" if trial.trial_id in self.stopped else "completed",
                          time.monotonic())
        self._print()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.progress.end(trial.trial_id, "failed", time.monotonic())
        self._print()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self._printed >= self.every_s:
            self._print()
