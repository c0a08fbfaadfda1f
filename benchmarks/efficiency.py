"""Search efficiency at equal compute (epochs trained in all): this search (TPE + ASHA)
against random search without early stopping, KerasTuner Hyperband on the same model space,
and the space's baselines alone. Hyperband runs first: its epochs (fixed by the space's
`max_epochs` and reduction factor) are the budget of the two other searches."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.fresh import in_new_process
from benchmarks.hyperband import run_hyperband
from benchmarks.trials import curve, read_trials
from search.driver import Options, run_search
from search.prepare import prepare_data
from search.space import Space

METHODS = ("hyperband", "tpe_asha", "random", "baselines")
# one method's run on one space and seed: (space, seed, method, best val_accuracy by epochs)
Curve = tuple[str, int, str, pd.DataFrame]


def _variant(space: Space, method: str, seed: int) -> Space:
    s = space.search
    no_stops = dataclasses.replace(s.asha, grace_period=s.asha.max_epochs)  # ASHA never stops
    search = {
        # the epoch budget ends it; TPE models after 3 trials, as a search of ~10 would
        "tpe_asha": dataclasses.replace(s, num_samples=1000, startup_trials=3),
        "random": dataclasses.replace(s, num_samples=1000, sampler="random", asha=no_stops),
        "baselines": dataclasses.replace(s, num_samples=len(space.baselines), asha=no_stops),
    }[method]
    return dataclasses.replace(space, search=search, seed=seed)


def _hyperband(space: Space, folder: Path) -> dict[str, Any]:
    """KerasTuner's Hyperband on `space`, timed from its data's preparation to its best
    model's test accuracy."""
    started = time.perf_counter()
    out = run_hyperband(space, prepare_data(space), folder)
    return {**out, "wall_s": time.perf_counter() - started}


def run_method(space: Space, method: str, seed: int, budget: int | None,
               folder: Path) -> dict[str, Any]:
    """One method on one space and seed: its curve (best val_accuracy against epochs), the
    best val and test accuracy within `budget` epochs (None: Hyperband's own schedule), and
    its wall time."""
    if method == "hyperband":
        # each in a new process, its imports not timed: in one process KerasTuner's searches
        # slow down one after the other (the same search took 45, 48, 52 and 55 s, its
        # memory 80 MB more each time: TensorFlow's gradient registry keeps every traced
        # step, `trainables.resources.fresh_session`), which would charge it for the
        # benchmark's history
        out = in_new_process(_hyperband, dataclasses.replace(space, seed=seed), folder / "kt")
        epochs, best = [], []
        spent, top = 0, 0.0
        for n, score in out["curve"]:
            spent, top = spent + n, max(top, score)
            epochs.append(spent)
            best.append(top)
        points = pd.DataFrame({"epochs": epochs, "best": best})
        test, wall = out["test_accuracy"], out["wall_s"]
    else:
        variant = _variant(space, method, seed)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        started = time.perf_counter()
        outcome = run_search(variant, Options(uri, folder / "ray", epoch_budget=budget))
        points = curve(read_trials(outcome.results_path, uri, outcome.parent_run_id).epochs)
        test, wall = outcome.held_out_accuracy, time.perf_counter() - started
    within = points[points["epochs"] <= budget] if budget else points
    return {"method": method, "seed": seed, "epochs": int(points["epochs"].max()),
            "best_val_accuracy": float(within["best"].max()) if len(within) else float("nan"),
            "test_accuracy": test, "wall_s": wall,
            "curve": points}


def compute_to_match(ours: pd.DataFrame, target: float, budget: int) -> float:
    """Epochs `ours` needed to reach `target`, as a fraction of `budget` (inf: never)."""
    reached = ours[ours["best"] >= target - 1e-9]
    return float(reached["epochs"].iloc[0] / budget) if len(reached) else float("inf")


def curve_table(curves: list[Curve], marks: list[int]) -> pd.DataFrame:
    """Best validation accuracy against compute: for each space and method, the median over
    seeds of the best reached within each number of epochs in `marks`."""
    rows = [{"space": space, "method": method, "seed": seed,
             **{m: points.loc[points["epochs"] <= m, "best"].max() for m in marks}}
            for space, seed, method, points in curves]
    return pd.DataFrame(rows).groupby(["space", "method"])[marks].median()


def run(spaces: list[Space], seeds: list[int],
        methods: tuple[str, ...] = METHODS) -> tuple[pd.DataFrame, list[Curve]]:
    """Each of `methods` (Hyperband first: its epochs are the others' budget) on every space
    and seed. Returns the runs table and the curves."""
    rows: list[dict[str, Any]] = []
    curves: list[Curve] = []
    for space in spaces:
        for seed in seeds:
            results: dict[str, dict[str, Any]] = {}
            for method in methods:
                budget = results["hyperband"]["epochs"] if results else None
                with tempfile.TemporaryDirectory() as folder:
                    result = run_method(space, method, seed, budget, Path(folder))
                results[method] = result
                curves.append((space.name, seed, method, result.pop("curve")))
                rows.append({"space": space.name, **result})
                print(f"  {space.name} seed {seed} {method}: best val "
                      f"{result['best_val_accuracy']:.4f}, test {result['test_accuracy']:.4f}, "
                      f"{result['epochs']} epochs, {result['wall_s']:.0f} s", flush=True)
            if "random" not in results:
                continue
            ours = next(c for s, sd, m, c in curves
                        if (s, sd, m) == (space.name, seed, "tpe_asha"))
            ours_row = rows[-len(methods) + methods.index("tpe_asha")]
            ours_row["compute_to_match_random"] = compute_to_match(
                ours, results["random"]["best_val_accuracy"], results["random"]["epochs"])
    return pd.DataFrame(rows), curves
