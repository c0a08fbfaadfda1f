"""`python -m benchmarks.backbones [--quick]`: the reports' backbone searches (blood cells and
gemstones tune a head on a frozen or last-block VGG16), on generated photos of the
gemstones report's shape: 10 classes, 30 training, 5 validation and 10 test photos per
class. VGG16 has random weights (the compute of ImageNet's, with no download).

1. At 224 px, as the report: a frozen-VGG16 trial's epoch, whole model on pixels (the path
   before the feature cache) against the trained part on features computed once; the
   one-time extraction and the cache's size; each checkpoint before and after. Both with
   0 and 4 trainable layers. Augmented trials train on pixels either way. Then the same for
   the blood-cells report's shape: its VGG16 baseline (flatten, dense 256, dropout 0.5,
   RMSprop, batch 50) at 150 px, 4 classes of 100 training and 20 validation photos (what
   2 CPUs train on pixels in about a minute an epoch).
2. The whole search, the same trials each way (same seed): as before (`search.feature_cache`
   off, a checkpoint every epoch), now (the cache on, the default checkpoint cadence), and
   now with `precision: mixed_bfloat16` (bfloat16 compute on float32 weights: fast where
   the CPU has AVX512_BF16 or AMX; ASHA and TPE then follow other results), ASHA as in the
   space: its wall time and the search folder's peak size, watched while it runs. At 64 px
   and 12 trials of up to 12 epochs (`--quick`: 8 trials of up to 9), so that the path
   before the cache fits in minutes on 2 cores.

3. The 30-trial search's folder at 224 px, projected from part 1's checkpoint sizes, the
   most checkpoints a trial held in part 2 and the most trials that held any at once (a
   search of that size on pixels takes hours here).

4. The checkpoint cadence: 12 trials of the gemstones search at 224 px, all frozen and
   unaugmented (so on features, where a checkpoint costs most against an epoch), each epoch
   checkpointed (`search.checkpoint_every_s: 0`, as before the cadence) against the default
   (at each new best, else once a minute), on one cache extracted first.

5. Precision: model 2's trial at 224 px (part 1's figures) in float32 against
   `precision: mixed_bfloat16`.

6. Part 3 measured, not projected: the 30-trial search at 224 px, its folder watched while
   it runs. ASHA stops trials at 1 and 3 epochs (not the space's 5 to 50) and the trials
   compute in `mixed_bfloat16` (weights, optimizer state and so checkpoints stay float32,
   the same bytes), so that it fits in about a quarter of an hour on 2 cores.

`--epochs-only` runs part 1 alone (about a quarter of an hour; the searches take most of an
hour), `--search-only` part 2, `--cadence-only` part 4, `--precision-only` part 5,
`--peak-only` part 6 (run only so: it takes as long as the rest). Ends with
lines for scripts: `epoch_speedup=`, `blood_cells_epoch_speedup=`, `search_speedup=`,
`search_speedup_mixed_bfloat16=`, `peak_folder_mb=`, `largest_checkpoint_mb=`,
`projected_peak_224px_mb=`, `cadence_speedup=`, `precision_epoch_speedup=` (and
`peak_224px_mb=`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.trials import epoch_rows
from search.checkpoints import CHECKPOINT_PREFIX
from search.driver import Options, run_search
from search.space import Fixed, SearchSettings, Space, load_space
from search.trainable import load_trial_data
from trainables import checkpoint
from trainables.config import TrialConfig
from trainables.data import list_images
from trainables.features import features, frozen_key
from trainables.models import Parts, compile_model, join
from trainables.resources import configure_tensorflow
from trainables.train import train

HERE = Path(__file__).parent
SPACES = HERE.parent / "spaces"
PER_CLASS = {"train": 30, "validation": 5, "test": 10}  # the gemstones report's counts
N_CLASSES = 10
BLOOD_CELLS_PER_CLASS = {"train": 100, "validation": 20, "test": 1}  # 4 classes
CADENCE_TRIALS = 12
MIXED = "mixed_bfloat16"  # the precision parts 2 and 5 measure against float32
PEAK_TRIALS, PEAK_EPOCHS = 30, 3  # part 6


def write_photos(root: Path, per_class: dict[str, int] = PER_CLASS,
                 n_classes: int = N_CLASSES, seed: int = 0) -> Path:
    """JPEG photos, 256 px, `per_class` of each of `n_classes` per split: a coloured blob of
    the class's hue and size on a noisy background (left as they are if already written)."""
    if (root / "test" / f"class{n_classes - 1}").is_dir():
        return root
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    for split, n in per_class.items():
        for c in range(n_classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([25 * c, 255 - 20 * c, 120 + 10 * (c % 3)])
            for i in range(n):
                pixels = rng.normal(110, 45, (256, 256, 3))
                cy, cx = rng.integers(60, 196, 2)
                blob = (yy - cy) ** 2 + (xx - cx) ** 2 < (20 + 4 * c + rng.integers(0, 8)) ** 2
                pixels[blob] = colour + rng.normal(0, 20, 3)
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    folder / f"{i:03d}.jpg", quality=90)
    return root


def _size_mb(folder: Path) -> float:
    """What the files under `folder` hold, in MB; a file deleted while they are counted (the
    pruner runs meanwhile) counts nothing."""
    total = 0
    for f in folder.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            total += f.stat().st_size if f.is_file() else 0
    return total / 2**20


def epoch_figures(space: Space, config: TrialConfig, cache: Path) -> dict[str, Any]:
    """One trial of `config` on `space`'s photos, on pixels and on cached features."""
    trainable_layers = config.backbone_trainable_layers
    space = with_search(space, cache)
    data = load_trial_data(space, list_images(space.data, space.seed), config)
    out: dict[str, Any] = {"trainable_layers": trainable_layers}

    def timed(feature_cache: bool, epochs: int) -> tuple[list[float], Parts]:
        """Each epoch's seconds, and the trained model's parts."""
        marks = [time.perf_counter()]
        parts = train(config, data, lambda m, _: marks.append(time.perf_counter()),
                      epochs=epochs, feature_cache=feature_cache)
        return list(np.diff(marks)), parts

    seconds, parts = timed(False, 1)
    out["pixels_epoch_s"] = seconds[0]
    started = time.perf_counter()
    key = frozen_key(config, parts.frozen)
    cached = [features(parts.frozen, data.train, key), features(parts.frozen, data.validation,
                                                                  key)]
    out["extraction_s"] = time.perf_counter() - started
    out["cache_mb"] = sum(a.images.nbytes for a in cached) / 2**20
    out["images"] = sum(len(a.labels) for a in cached)
    seconds, parts = timed(True, 4)
    out["features_epoch_s"] = float(np.median(seconds[1:]))  # after the first
    with tempfile.TemporaryDirectory() as folder:
        checkpoint.save(parts.trained, Path(folder), 4)  # what a trial's checkpoint holds
        out["checkpoint_mb"] = _size_mb(Path(folder))
        out["registrable_mb"] = (Path(folder) / checkpoint.MODEL_FILE).stat().st_size / 2**20
        whole = join(parts)  # the checkpoint before: the whole model and its optimizer
        compile_model(whole, config, parts.trained.optimizer)
        whole.save(Path(folder) / "whole.keras")
        out["whole_checkpoint_mb"] = (Path(folder) / "whole.keras").stat().st_size / 2**20
    return out


def with_search(space: Space, cache: Path, **settings: Any) -> Space:
    """`space` with its caches under `cache` and the given `search` settings."""
    return dataclasses.replace(
        space, data=dataclasses.replace(space.data, cache_dir=cache),
        search=dataclasses.replace(space.search, **settings))


def search_figures(space: Space, folder: Path) -> dict[str, Any]:
    """The search run once into `folder`, its folder watched."""
    storage, peak, held, holding = folder / "ray", [0.0], [0], [0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            if storage.exists():
                peak[0] = max(peak[0], _size_mb(storage))
                trials = Counter(c.parent for c in storage.glob(f"*/*/*/{CHECKPOINT_PREFIX}*"))
                held[0] = max([held[0], *trials.values()])
                holding[0] = max(holding[0], len(trials))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        outcome = run_search(space, Options(f"sqlite:///{folder / 'mlflow.db'}", storage))
    finally:
        done.set()
        watcher.join()
    wall_s = time.perf_counter() - started
    table, rows = outcome.table, epoch_rows(outcome.results_path)
    return {"wall_s": wall_s, "trials": len(table),
            "epochs": int(table["epochs_run"].sum()), "peak_folder_mb": peak[0],
            "most_held": held[0], "most_trials_holding": holding[0],
            "final_folder_mb": _size_mb(storage),
            "checkpoints": int(rows["checkpoint_dir_name"].notna().sum()),
            "checkpoint_s": float(rows["checkpoint_s"].sum()),
            "on_features": int((table["trained_on"] == "features").sum()),
            "best_val_accuracy": float(table["best_val_accuracy"].max()),
            "test_accuracy": outcome.held_out_accuracy}


def cadence_figures(space: Space, folder: Path) -> dict[float, dict[str, Any]]:
    """The gemstones search at 224 px with its trials frozen and unaugmented (all on
    features), checkpointing every epoch (`checkpoint_every_s: 0`, as before the cadence)
    and at the default, on one cache whose features are extracted first."""
    space = dataclasses.replace(
        space, params={**space.params, "backbone_trainable_layers": Fixed(0),
                       "augment": Fixed(False)},
        baselines={"model2": space.baselines["model2"]},
        search=dataclasses.replace(space.search, num_samples=CADENCE_TRIALS))
    cache = folder / "cache"
    config = space.baselines["model2"]
    data = load_trial_data(with_search(space, cache), list_images(space.data, space.seed),
                           config)
    for pooling in ("flatten", "global_avg"):  # each extracts features once, for both runs
        train(config.replace(head_pooling=pooling), data, lambda m, _: None, epochs=1)
    return {every_s: search_figures(with_search(space, cache, checkpoint_every_s=every_s),
                                    folder / f"every-{every_s:g}")
            for every_s in (0.0, SearchSettings().checkpoint_every_s)}


def blood_cells_space(space: Space) -> Space:
    """`space` (the gemstones-shaped benchmark space) on 4 classes of photos at 150 px, with
    the blood cells report's VGG16 baseline (random weights)."""
    baseline = load_space(SPACES / "blood_cells.yaml").baselines["vgg16_frozen"]
    root = Path(space.data.root).with_name("bench_blood_cells")
    return dataclasses.replace(
        space, data=dataclasses.replace(space.data, root=root),
        baselines={"vgg16_frozen": baseline.replace(backbone_weights="none", seed=space.seed)})


def smaller(space: Space, image_size: int, num_samples: int, max_epochs: int) -> Space:
    asha = dataclasses.replace(space.search.asha, max_epochs=max_epochs, grace_period=3)
    return dataclasses.replace(
        space, params={**space.params, "image_size": Fixed(image_size)},
        baselines={n: b.replace(image_size=image_size) for n, b in space.baselines.items()},
        search=dataclasses.replace(space.search, num_samples=num_samples, asha=asha))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backbones", description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs-only", action="store_true", help="part 1 alone")
    p.add_argument("--search-only", action="store_true", help="part 2 alone")
    p.add_argument("--cadence-only", action="store_true", help="part 4 alone")
    p.add_argument("--precision-only", action="store_true", help="part 5 alone")
    p.add_argument("--peak-only", action="store_true", help="part 6 alone")
    p.add_argument("--search-shape", type=int, nargs=3, metavar=("PX", "TRIALS", "EPOCHS"),
                   help="part 2's image size, trials and ASHA max epochs (grace 3; "
                        "default 64 12 12)")
    p.add_argument("--same-trials", action="store_true",
                   help="part 2 with random sampling and no early stop: the same trials "
                        "and epochs on every side")
    args = p.parse_args(argv)
    configure_tensorflow(float(os.cpu_count() or 1), 0.0)
    space = load_space(HERE / "gemstones.yaml")
    write_photos(Path(space.data.root))
    if args.cadence_only:
        return cadence(space)
    if args.precision_only:
        return precision(space)
    if args.peak_only:
        return peak(space)
    if args.search_only:
        shape = tuple(args.search_shape) if args.search_shape else None
        print_search_lines(whole_search(space, args.quick, shape, args.same_trials))
        return 0
    blood = blood_cells_space(space)
    write_photos(Path(blood.data.root), BLOOD_CELLS_PER_CLASS, 4)
    report = {"model2": space, "vgg16_frozen": blood}
    with tempfile.TemporaryDirectory() as tmp:
        print("1. a trial of the gemstones report's model 2 at 224 px (frozen VGG16 + flatten, "
              f"dense 256, dense 128; Adam), then of the blood cells report's VGG16 baseline at "
              f"150 px (flatten, dense 256; RMSprop), {os.cpu_count()} CPUs")
        epochs = {name: [epoch_figures(shape, shape.baselines[name].replace(
            backbone_trainable_layers=n), Path(tmp) / "cache") for n in (0, 4)]
            for name, shape in report.items()}
        for e in epochs["model2"] + epochs["vgg16_frozen"]:
            print(f"  {e['trainable_layers']} trainable layers: epoch on pixels "
                  f"{e['pixels_epoch_s']:.1f} s, on features {e['features_epoch_s']:.2f} s "
                  f"({e['pixels_epoch_s'] / e['features_epoch_s']:.0f}x); extraction once "
                  f"{e['extraction_s']:.1f} s for {e['images']} images, cache "
                  f"{e['cache_mb']:.0f} MB; checkpoint {e['checkpoint_mb']:.1f} MB, "
                  f"{e['registrable_mb']:.1f} MB without the optimizer's state (the whole "
                  f"model's before: {e['whole_checkpoint_mb']:.1f} MB)")
    frozen = {name: e[0]["pixels_epoch_s"] / e[0]["features_epoch_s"]
              for name, e in epochs.items()}
    speedups = (f"epoch_speedup={frozen['model2']:.1f}\n"
                f"blood_cells_epoch_speedup={frozen['vgg16_frozen']:.1f}")
    if args.epochs_only:
        print(f"\n{speedups}")
        return 0
    runs = whole_search(space, args.quick)
    # at 224 px a flatten head is 12x larger than at 64: from part 1's checkpoints and what
    # the search above held at once, what the report's 30 trials would need at most (ended
    # trials hold a checkpoint only while none beats them, however many trials the search has)
    kept = max(e["registrable_mb"] for e in epochs["model2"])
    running = max(e["checkpoint_mb"] for e in epochs["model2"])
    concurrent, r = space.search.max_concurrent, runs["now"]
    ended = max(0, r["most_trials_holding"] - concurrent)
    projected = ended * kept + concurrent * r["most_held"] * running
    print(f"\n3. projected peak of the 30-trial search at 224 px (report 5's head): {ended} "
          f"ended trials x {kept:.0f} MB (a best without its optimizer's state) + "
          f"{concurrent} running x {r['most_held']} checkpoints x {running:.0f} MB = "
          f"{projected:.0f} MB")
    print(f"\n{speedups}")
    print_search_lines(runs)
    print(f"largest_checkpoint_mb={running:.1f}")
    print(f"projected_peak_224px_mb={projected:.0f}")
    cadence(space)
    return precision(space)


def whole_search(space: Space, quick: bool, shape: tuple[int, int, int] | None = None,
                 same_trials: bool = False) -> dict[str, dict[str, Any]]:
    """Part 2, printed: the search's figures before, now, and now in mixed bfloat16; `shape`
    is (image size, trials, ASHA's max epochs), by default 64 px, 12 trials, 12 epochs.
    `same_trials`: random sampling and no early stop, so that every side trains the same
    trials for the same epochs (TPE and ASHA follow the results, which differ by side)."""
    size, n, max_epochs = shape or ((64, 8, 9) if quick else (64, 12, 12))
    small = smaller(space, size, n, max_epochs)
    if same_trials:
        small = dataclasses.replace(small, search=dataclasses.replace(
            small.search, sampler="random",
            asha=dataclasses.replace(small.search.asha, grace_period=max_epochs)))
    print(f"\n2. the whole search: {n} trials at {size} px, "
          f"{small.search.sampler}, ASHA up to {max_epochs} epochs, grace "
          f"{small.search.asha.grace_period}, 2 at a time")
    return {"before": _search_side(small, "before", feature_cache=False,
                                   checkpoint_every_s=0.0),
            "now": _search_side(small, "now"),
            MIXED: _search_side(with_precision(small, MIXED), f"now, {MIXED}")}


def _search_side(space: Space, label: str, **settings: Any) -> dict[str, Any]:
    """`space` searched once with the given `search` settings, on a cache of its own;
    its figures, printed."""
    with tempfile.TemporaryDirectory() as tmp:
        r = search_figures(with_search(space, Path(tmp) / "cache", **settings), Path(tmp))
    print(f"  {label}: {r['wall_s']:.0f} s, {r['trials']} trials ({r['on_features']} on "
          f"features), {r['epochs']} epochs, {r['checkpoints']} checkpoints taking "
          f"{r['checkpoint_s']:.0f} s, folder peak {r['peak_folder_mb']:.1f} MB (at the end "
          f"{r['final_folder_mb']:.1f} MB), at most {r['most_held']} checkpoints a trial and "
          f"{r['most_trials_holding']} trials holding any at once, best val "
          f"{r['best_val_accuracy']:.3f}, test {r['test_accuracy']:.3f}")
    return r


def print_search_lines(runs: dict[str, dict[str, Any]]) -> None:
    before, now, mixed = (runs[side]["wall_s"] for side in ("before", "now", MIXED))
    print(f"search_speedup={before / now:.2f}")
    print(f"search_speedup_{MIXED}={before / mixed:.2f}")
    print(f"peak_folder_mb={runs['now']['peak_folder_mb']:.1f}")


def cadence(space: Space) -> int:
    """Part 4, printed."""
    print(f"\n4. checkpoint cadence: {CADENCE_TRIALS} trials of the gemstones search at 224 px, "
          "frozen and unaugmented (on features), ASHA as in the space, 2 at a time")
    with tempfile.TemporaryDirectory() as tmp:
        runs = cadence_figures(space, Path(tmp))
    for every_s, r in runs.items():
        print(f"  checkpoint_every_s {every_s:g}: {r['wall_s']:.0f} s, {r['trials']} trials, "
              f"{r['epochs']} epochs, {r['checkpoints']} checkpoints taking "
              f"{r['checkpoint_s']:.0f} s, folder peak {r['peak_folder_mb']:.0f} MB (at most "
              f"{r['most_held']} checkpoints a trial), best val "
              f"{r['best_val_accuracy']:.3f}, test {r['test_accuracy']:.3f}")
    before, after = runs.values()
    print(f"cadence_speedup={before['wall_s'] / after['wall_s']:.2f}")
    return 0


def with_precision(space: Space, precision: str) -> Space:
    """`space` with every trial, baselines included, computing in `precision`."""
    return dataclasses.replace(
        space, params={**space.params, "precision": Fixed(precision)},
        baselines={n: b.replace(precision=precision) for n, b in space.baselines.items()})


def precision(space: Space) -> int:
    """Part 5, printed: a trial in float32 against mixed bfloat16."""
    print(f"\n5. precision: float32 against {MIXED}. The gemstones report's model 2 at 224 px "
          f"(frozen VGG16), {os.cpu_count()} CPUs")
    config = space.baselines["model2"]
    epochs = {}
    for p in ("float32", MIXED):
        with tempfile.TemporaryDirectory() as tmp:
            epochs[p] = e = epoch_figures(space, config.replace(precision=p), Path(tmp))
        print(f"  {p}: epoch on pixels {e['pixels_epoch_s']:.1f} s, extraction once "
              f"{e['extraction_s']:.1f} s for {e['images']} images, cache "
              f"{e['cache_mb']:.0f} MB, epoch on features {e['features_epoch_s']:.2f} s")
    print(f"precision_epoch_speedup="
          f"{epochs['float32']['pixels_epoch_s'] / epochs[MIXED]['pixels_epoch_s']:.2f}")
    return 0


def peak(space: Space) -> int:
    """Part 6, printed: the 30-trial search at 224 px, its folder's peak measured."""
    asha = dataclasses.replace(space.search.asha, max_epochs=PEAK_EPOCHS, grace_period=1)
    space = with_precision(dataclasses.replace(space, search=dataclasses.replace(
        space.search, num_samples=PEAK_TRIALS, asha=asha)), MIXED)
    print(f"\n6. the {PEAK_TRIALS}-trial search at 224 px, measured: ASHA up to {PEAK_EPOCHS} "
          f"epochs, grace 1, {MIXED} compute, 2 at a time")
    r = _search_side(space, "now")
    print(f"peak_224px_mb={r['peak_folder_mb']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
