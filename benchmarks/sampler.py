"""The sampler's cost per suggestion as a study grows (issue 13, part 4: "measure TPE at
10,000 trials"): the scale benchmark's space (`benchmarks/curves.yaml`) on the search's own
journal storage, the study filled to each size with random draws and ASHA-shaped curves
(most trials pruned after 1 or 3 reports), then a few suggestions timed at that size with TPE
as the search makes it and with random sampling. A suggestion is Optuna's `ask` and the
space's draw on the trial, what `OptunaSearch` does in the driver for each new trial.
Prints a row per size; no Ray, no MLflow, no training."""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from search.folder import DriverJournal, DriverStorage
from search.sampling import DefineByRun
from search.space import load_space
from search.tpe import RanTrialsTPE

RUNGS = (1, 1, 1, 3, 3, 9)  # ASHA with grace 1 and factor 3 stops most at 1 and 3


def fill(study: optuna.Study, draw: DefineByRun, count: int, max_epochs: int,
         rng: random.Random) -> None:
    """Add `count` trials drawn by the study's sampler, each reporting a learning curve and
    ending pruned at a rung, or complete at `max_epochs` (one in seven)."""
    for _ in range(count):
        trial = study.ask()
        draw(trial)
        epochs, ceiling, value = rng.choice((*RUNGS, max_epochs)), rng.random(), 0.0
        for epoch in range(1, epochs + 1):
            value = ceiling * math.tanh(epoch * rng.random())
            trial.report(value, epoch)
        if epochs < max_epochs:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)


def suggestion_ms(study: optuna.Study, draw: DefineByRun, repeats: int) -> float:
    """The median milliseconds of `repeats` suggestions; each trial is then told failed, so
    it adds nothing the next suggestion models."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        trial = study.ask()
        draw(trial)
        times.append(time.perf_counter() - started)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sampler", description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(Path(__file__).parent / "curves.yaml")
    draw, rng = DefineByRun(space), random.Random(space.seed)
    with tempfile.TemporaryDirectory() as folder:
        storage = DriverStorage(DriverJournal(Path(folder) / "optuna.journal"))
        filler = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                     sampler=optuna.samplers.RandomSampler(seed=space.seed))
        samplers = {"tpe": RanTrialsTPE(seed=space.seed, n_startup_trials=10),
                    "random": optuna.samplers.RandomSampler(seed=space.seed)}
        print("trials in the study, milliseconds per suggestion (median of "
              f"{args.repeats}): {', '.join(samplers)}")
        size = 0
        for target in sorted(args.sizes):
            fill(filler, draw, target - size, space.search.asha.max_epochs, rng)
            row = []
            for sampler in samplers.values():
                study = optuna.load_study(study_name="s", storage=storage, sampler=sampler)
                row.append(suggestion_ms(study, draw, args.repeats))
            size = target + len(samplers) * args.repeats
            print(f"{target:>7,}  " + "  ".join(f"{ms:8.1f}" for ms in row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
