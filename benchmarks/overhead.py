"""Where a search's core time goes, on the default space with a fixed seed: inside training
and evaluation steps, or elsewhere; how busy the trial slots are; and each worker's memory
trial after trial."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.trials import core_time, peak_rss_by_worker, read_trials, slot_busy
from search.driver import Options, run_search
from search.space import Space


def run(space: Space) -> dict[str, Any]:
    """The search run once, from a cold cache of decoded images (so data preparation is
    counted and the cache holds only what this search decoded)."""
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        space = dataclasses.replace(space, data=dataclasses.replace(space.data,
                                                                    cache_dir=cache))
        uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        started = time.perf_counter()
        outcome = run_search(space, Options(uri, Path(folder) / "ray"))
        wall = time.perf_counter() - started
        trials = read_trials(outcome.results_path, uri, outcome.parent_run_id)
        cache_files = sorted(p.name for p in cache.glob("*.npy"))
    cpus = float(os.cpu_count() or 1)
    parts = core_time(trials, wall, cpus, space.search.trial_resources([cpus]).cpu)
    return {
        "wall_s": wall, "cpus": cpus, "trials": len(outcome.table), "parts": parts,
        "overhead_share": parts["training and evaluation steps"] / (wall * cpus),
        "slot_busy": slot_busy(trials, space.search.max_concurrent),
        "rss": peak_rss_by_worker(trials.epochs),
        "cache_files": cache_files,
    }
