"""Short trials against KerasTuner, at equal epochs: KerasTuner's Hyperband (`max_epochs` 9,
factor 3: 75 epochs on digits) and this search (TPE + ASHA, the same `max_epochs` and factor,
grace period 1) given the epochs Hyperband spent, seed after seed. Both train the same models
with the same data pipeline (`benchmarks.hyperband`); what differs is the search around them.
Prints each run, the median wall time and test accuracy of each, and `short_speedup=`
(Hyperband's median wall time over this search's)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from benchmarks import efficiency
from search.space import Fixed, Space, load_space


def short_space(space: Space, checkpoint_every_s: float | None = None) -> Space:
    """`space` with the issue's Hyperband schedule: up to 9 epochs, ASHA's rungs at 1, 3, 9;
    and `search.checkpoint_every_s` if given (0: a checkpoint every epoch)."""
    asha = dataclasses.replace(space.search.asha, max_epochs=9, grace_period=1,
                               reduction_factor=3)
    every = space.search.checkpoint_every_s if checkpoint_every_s is None else checkpoint_every_s
    return dataclasses.replace(space, params={**space.params, "epochs": Fixed(9)},
                               search=dataclasses.replace(space.search, asha=asha,
                                                          checkpoint_every_s=every))


def run(space: Space, seeds: list[int]) -> pd.DataFrame:
    """Hyperband, then this search with Hyperband's epochs, for each seed: one row per run."""
    table, _ = efficiency.run([space], seeds, methods=("hyperband", "tpe_asha"))
    return table


def report(table: pd.DataFrame) -> float:
    """Print the medians over seeds; return Hyperband's median wall time over ours."""
    summary = table.groupby("method").agg(wall_s=("wall_s", "median"),
                                          test_accuracy=("test_accuracy", "median"),
                                          epochs=("epochs", "median"))
    print(summary.round(4).to_string())
    return float(summary.loc["hyperband", "wall_s"] / summary.loc["tpe_asha", "wall_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.short", description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--checkpoint-every-s", type=float, default=None,
                   help="search.checkpoint_every_s (0: every epoch; default: the space's)")
    args = p.parse_args(argv)
    space = short_space(load_space(Path("spaces/digits.yaml")), args.checkpoint_every_s)
    print(f"short trials: digits, seeds {args.seeds}, KerasTuner Hyperband against this "
          f"search at Hyperband's epochs")
    speedup = report(run(space, args.seeds))
    print(f"short_speedup={speedup:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
