"""`python -m benchmarks.run [scale|short] [--quick]`: the benchmarks, a table of each, and
lines for scripts at the end (`overhead_share=`, `pipeline_speedup=`,
`compute_to_match_random=`, the scale benchmark's `results_per_s=`, `trial_cost_growth=`,
`overhead_vs_ideal=`, and the full run's `short_speedup=`). `--quick` (under 25 minutes on 2
cores): 2 seeds of digits, 1 of shapes, a smaller pipeline set, 100 curve trials; the full
run: 5 seeds of each, 2,000 curve trials, and short trials against KerasTuner
(`benchmarks/short.py`, seeds 1-3). `scale` and `short` run that benchmark alone."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks import efficiency, overhead, pipeline, scale, short
from benchmarks.fresh import in_new_process
from benchmarks.shapes import write_shapes
from search.space import Fixed, Space, load_space

HERE = Path(__file__).parent


def machine() -> str:
    import optuna
    import ray
    import tensorflow as tf

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Ray {ray.__version__}, Optuna {optuna.__version__}")


def larger(space: Space) -> Space:
    """`space` with 4x the trials, 9x the pixels and 2x the epochs."""
    asha = dataclasses.replace(space.search.asha, max_epochs=16)
    return dataclasses.replace(
        space, params={**space.params, "image_size": Fixed(48), "epochs": Fixed(16)},
        search=dataclasses.replace(space.search, num_samples=32, asha=asha))


def print_overhead(o: dict[str, Any]) -> None:
    core = o["wall_s"] * o["cpus"]
    print(f"wall {o['wall_s']:.1f} s x {o['cpus']:.0f} CPUs = {core:.0f} core-s, "
          f"{o['trials']} trials")
    for part, seconds in o["parts"].items():
        print(f"  {seconds:7.1f} core-s {seconds / core:6.1%}  {part}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("which", nargs="?", choices=["all", "scale", "short"], default="all")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    trials = 100 if args.quick else 2000
    if args.which == "scale":
        return scale.main(["--trials", str(trials)])
    if args.which == "short":
        return short.main([])
    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]
    pd.set_option("display.width", 140)
    print(f"machine: {machine()}\n")

    digits = load_space(Path("spaces/digits.yaml"))
    # each search part in a new process, as a user's command runs: in one process parts 1, 3
    # and 5 shared one Ray and the heap and TensorFlow state the parts before them left
    print("1. overhead: the default search (spaces/digits.yaml, seed 0)")
    o = in_new_process(overhead.run, digits)
    print_overhead(o)
    print(f"trial slots busy: {o['slot_busy']:.1%} of the time from first trial start to "
          f"last trial end")
    print("peak RSS per worker process, trial after trial (MB):")
    for pid, group in o["rss"].groupby("pid"):
        print(f"  pid {pid}: " + ", ".join(f"{v:.0f}" for v in group["peak_rss_mb"]))
    print(f"decoded data set copies in the cache: {len(o['cache_files'])} "
          f"(one per split and image size)")
    print("\nthe same space, larger: 32 trials of 48-px images for up to 16 epochs (how the "
          "share grows as per-search and per-trial costs spread)")
    print_overhead(in_new_process(overhead.run, larger(digits)))

    print("\n2. input pipeline: JPEGs, 150 px -> 64 px, augmented, batches of 32")
    with tempfile.TemporaryDirectory() as folder:
        pl = pipeline.run(Path(folder), per_class=500 if args.quick else 1500)
    print(f"{pl['images']} images x {pl['epochs']} epochs: ours "
          f"{pl['ours_images_per_s']:.0f} images/s (the first epoch decodes), "
          f"ImageDataGenerator {pl['image_data_generator_images_per_s']:.0f} images/s, "
          f"speedup {pl['speedup']:.1f}x")
    print("speedup over the first k epochs: " + ", ".join(
        f"{k}: {x:.1f}x" for k, x in pl["speedup_over_first"].items()))

    print(f"\n3. search efficiency, seeds {seeds}, each search given the epochs Hyperband "
          f"spends")
    shapes = load_space(HERE / "shapes.yaml")
    write_shapes(Path(shapes.data.root))
    # quick: one seed of the slower shapes set, to stay under 20 minutes
    runs = [in_new_process(efficiency.run, [digits], seeds),
            in_new_process(efficiency.run, [shapes], seeds if not args.quick else seeds[:1])]
    table = pd.concat([t for t, _ in runs], ignore_index=True)
    summary = table.groupby(["space", "method"]).agg(
        best_val_median=("best_val_accuracy", "median"),
        best_val_min=("best_val_accuracy", "min"), best_val_max=("best_val_accuracy", "max"),
        test_median=("test_accuracy", "median"), test_min=("test_accuracy", "min"),
        test_max=("test_accuracy", "max"), epochs=("epochs", "median"),
        wall_s=("wall_s", "median"))
    print(summary.round(4).to_string())
    print("\nbest val_accuracy against epochs spent (median over seeds):")
    budget = int(table.loc[table["method"] == "hyperband", "epochs"].max())
    print(efficiency.curve_table([c for _, cs in runs for c in cs],
                                 [8, 16, 32, 48, 64, 80, budget]).round(4).to_string())
    match = table["compute_to_match_random"].dropna()
    print("epochs TPE+ASHA took to reach random search's best, as a share of random's: "
          + ", ".join(f"{v:.2f}" for v in match))

    print(f"\n4. scale: {trials} curve trials through the real driver and an MLflow server")
    # after the parts above, on their Ray and in their process, the same 2,000 trials took
    # 314 s against 207 s alone
    sc = in_new_process(scale.run, trials, concurrent=8)
    scale.print_report(sc)
    speedup = None
    if not args.quick:
        print("\n5. short trials against KerasTuner, at equal epochs (digits, seeds 1-3)")
        speedup = short.report(in_new_process(short.run, short.short_space(digits), [1, 2, 3]))

    print(f"\noverhead_share={o['overhead_share']:.3f}")
    print(f"pipeline_speedup={pl['speedup']:.2f}")
    print(f"compute_to_match_random={match.median():.3f}")
    scale.print_lines(sc)
    if speedup is not None:
        print(f"short_speedup={speedup:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
