"""`python -m benchmarks.gpu [--quick]`: what the reports' backbone trials cost on one GPU, and
what sharing the GPU among trials buys. It builds the trials' own models
(`trainables.models`, `trainables.augment`) on whichever Keras backend `KERAS_BACKEND` names,
with random weights and random images: the compute of ImageNet's weights and real photos,
with no download and no files.

1. Per report shape, with 0 and 4 trainable layers, one process holding the whole GPU:
   - gemstones (report 5): its model 1 (augmented) and model 2 heads at 224 px, 350 training
     images, batch 32;
   - blood cells (report 3): its VGG16 baseline's head at 150 px, 9,957 training images (the
     report's count), batch 50;
   an epoch on pixels with the report's augmentation (what an augmented trial pays every
   epoch), an epoch on pixels without it (what an unaugmented trial paid before the feature
   cache), the one-time extraction of the training split's features (its first call, with
   the compilation) and an epoch of the trained part on them; what a trial on features pays
   besides its epochs (building and compiling its model, its first epoch with the step's
   compilation, a checkpoint as each epoch writes it); and the most GPU memory the process
   used (what `resources: {gpu: ...}` must leave a trial).
2. Sharing: 1, 2 and 4 trial processes at once, each capped to its share of the GPU's memory
   (`resources: {gpu: 1/n}`), each training augmented gemstones epochs (model 1): the images
   per second of all of them together, over the time all were past their first epoch.

The augmentation runs inside the training step, on the GPU, as a trial's does wherever
TensorFlow sees a GPU (`trainables.train`).

Ends with lines for scripts: `gpu_features_speedup=` (gemstones, frozen: an epoch on pixels
over one on features) and `gpu_share4_throughput=` (4 sharing processes' images per second
over one process's alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPACES = Path(__file__).parent.parent / "spaces"


@dataclass(frozen=True)
class Shape:
    space: str
    baseline: str  # the report's model whose head and optimizer the trial has
    augmented_baseline: str  # the one whose augmentation the augmented epoch uses
    images: int
    n_classes: int


SHAPES = {
    "gemstones": Shape("gemstones.yaml", "model2", "model1", 350, 10),
    "blood_cells": Shape("blood_cells.yaml", "vgg16_frozen", "model_a_augmented", 9957, 4),
}
SHARE_IMAGES = 1024  # per epoch of a sharing process
SHARE_S = 40  # how long the sharing processes train together, after their start
AUGMENT_KEYS = ("rotation", "width_shift", "height_shift", "shear", "zoom", "horizontal_flip",
                "fill_mode")


def _config(shape: Shape, baseline: str, trainable_layers: int, quick: bool) -> Any:
    """The report's `baseline` as a trial of VGG16 with random weights and `trainable_layers`,
    with the augmentation of the shape's augmented baseline when `baseline` has none."""
    from search.space import load_space

    space = load_space(SPACES / shape.space)
    config = space.baselines[baseline].replace(
        backbone="vgg16", backbone_weights="none", backbone_trainable_layers=trainable_layers)
    if quick:
        config = config.replace(image_size=32)
    if config.augment:
        return config
    source = space.baselines[shape.augmented_baseline]
    return config.replace(augment=True, **{k: getattr(source, k) for k in AUGMENT_KEYS})


def _data(config: Any, n: int, n_classes: int) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    size = config.image_size
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8).astype(np.float32)
    return images, rng.integers(0, n_classes, n).astype(np.int32)


def _model(config: Any, n_classes: int, on: str) -> tuple[Any, Any]:
    """A freshly built, compiled trial model to train `on` "augmented" pixels, "pixels" or
    "features", and its frozen part."""
    from trainables.augment import augmentation
    from trainables.models import augmented, build_parts, compile_model, join

    parts = build_parts(config, n_classes, 3)
    compile_model(parts.trained, config)
    if on == "features":
        return parts.trained, parts.frozen
    whole = join(parts)
    if on == "augmented":  # in the training step, as a trial on a GPU augments
        augment = augmentation(config)
        assert augment is not None, "an augmented trial's config augments"
        whole = augmented(whole, augment)
    compile_model(whole, config, parts.trained.optimizer)
    return whole, parts.frozen


def _epochs(model: Any, x: Any, y: Any, batch_size: int, epochs: int,
            until: float = float("inf")) -> list[float]:
    """When each epoch of `model.fit` ended (time.time()), for `epochs` epochs or until the
    first to end past `until`."""
    import keras

    ends: list[float] = []

    def mark(*_: Any) -> None:
        ends.append(time.time())
        model.stop_training = ends[-1] > until

    marks = keras.callbacks.LambdaCallback(on_epoch_end=mark)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, callbacks=[marks], verbose=0)
    return ends


def _steady_epoch_s(ends: list[float]) -> float:
    """Median epoch after the first (which compiles the step)."""
    import numpy as np

    return float(np.median(np.diff(ends)))


def _peak_memory_mb() -> float | None:
    """The most GPU memory this process used so far (None without a GPU)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        return float(stats.get("peak_bytes_in_use", 0)) / 2**20
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return float(tf.config.experimental.get_memory_info("GPU:0")["peak"]) / 2**20
    return None


def measure(shape_name: str, trainable_layers: int, quick: bool) -> dict[str, Any]:
    """Part 1 for one shape and trainable-layer count, in this process."""
    import keras

    shape = SHAPES[shape_name]
    augmented = _config(shape, shape.baseline, trainable_layers, quick)
    config = augmented.replace(augment=False)
    n = 64 if quick else shape.images
    x, y = _data(config, n, shape.n_classes)
    batch, out = config.batch_size, {"shape": shape_name, "trainable_layers": trainable_layers,
                                     "images": n, "image_size": config.image_size}
    for on, cfg in (("augmented", augmented), ("pixels", config)):
        model, _ = _model(cfg, shape.n_classes, on)
        out[f"{on}_epoch_s"] = _steady_epoch_s(_epochs(model, x, y, batch, 3))
        keras.backend.clear_session()
    started = time.perf_counter()
    model, frozen = _model(config, shape.n_classes, "features")
    out["build_s"] = time.perf_counter() - started
    started = time.perf_counter()
    features = frozen.predict(x, batch_size=batch, verbose=0)
    out["extraction_s"] = time.perf_counter() - started
    out["features_mb"] = features.nbytes / 2**20
    started = time.time()
    ends = _epochs(model, features, y, batch, 4)
    out["first_epoch_s"], out["features_epoch_s"] = ends[0] - started, _steady_epoch_s(ends)
    out["checkpoint_s"] = _checkpoint_s(model)
    out["peak_memory_mb"] = _peak_memory_mb()
    return out


def _checkpoint_s(trained: Any) -> float:
    """Median seconds of three checkpoints of the trained part, as a trial writes one each
    epoch (`trainables.checkpoint`), to a local disk."""
    import numpy as np

    from trainables import checkpoint

    seconds = []
    with tempfile.TemporaryDirectory() as folder:
        for epoch in range(3):
            started = time.perf_counter()
            checkpoint.save(trained, Path(folder), epoch)
            seconds.append(time.perf_counter() - started)
    return float(np.median(seconds))


def share(quick: bool, until: float) -> dict[str, Any]:
    """Part 2's work for one process: augmented gemstones epochs (model 1, frozen VGG16)
    until the time `until`."""
    shape = SHAPES["gemstones"]
    config = _config(shape, "model1", 0, quick)
    n = 64 if quick else SHARE_IMAGES
    x, y = _data(config, n, shape.n_classes)
    model, _ = _model(config, shape.n_classes, "augmented")
    return {"images": n, "ends": _epochs(model, x, y, config.batch_size, 100_000, until),
            "peak_memory_mb": _peak_memory_mb()}


def _capped_env(share_of_gpu: float) -> dict[str, str]:
    """The environment of a process holding `share_of_gpu` of the GPU. A trial's cap
    (`trainables.resources`): TensorFlow sets it in the child; JAX reads it from here."""
    from trainables.resources import gpu_memory_limit_mb, gpu_total_mb

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    total = gpu_total_mb()
    limit = gpu_memory_limit_mb(share_of_gpu, total) if total else None
    if limit is not None and total:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{limit / total:.4f}"
    return env


def _run_children(argvs: list[list[str]], share_of_gpu: float) -> list[dict[str, Any]]:
    """Run `python -m benchmarks.gpu ARGV...` processes at once; each one's last line, as JSON."""
    children = [subprocess.Popen([sys.executable, "-m", "benchmarks.gpu", *argv],
                                 stdout=subprocess.PIPE, text=True, env=_capped_env(share_of_gpu))
                for argv in argvs]
    outs = [child.communicate()[0] for child in children]
    for argv, child in zip(argvs, children, strict=True):
        if child.returncode:
            raise SystemExit(f"benchmarks.gpu {' '.join(argv)} exited {child.returncode}")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def throughput(runs: list[dict[str, Any]]) -> float:
    """Images per second of all `runs` together, over the time every one of them was past its
    first epoch and none had ended: the epochs that lie wholly inside that window."""
    start = max(r["ends"][0] for r in runs)
    end = min(r["ends"][-1] for r in runs)
    if end <= start:
        raise SystemExit(f"the {len(runs)} sharing processes never trained at once: "
                         "give them longer (SHARE_S)")
    images = sum(r["images"] for r in runs for a, b in zip(r["ends"], r["ends"][1:], strict=False)
                 if a >= start and b <= end)
    return float(images / (end - start))


def _mb(value: float | None) -> str:
    return "(no GPU)" if value is None else f"{value:.0f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny images, to check it runs")
    p.add_argument("--measure", nargs=2, metavar=("SHAPE", "LAYERS"), help=argparse.SUPPRESS)
    p.add_argument("--share", nargs=2, type=float, metavar=("SHARE", "UNTIL"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    if args.measure or args.share:
        import keras

        if keras.backend.backend() == "tensorflow":
            from trainables.resources import configure_tensorflow

            gpu = args.share[0] if args.share else 1.0
            configure_tensorflow(max(1.0, (os.cpu_count() or 1) * gpu), gpu)
        result = (measure(args.measure[0], int(args.measure[1]), args.quick) if args.measure
                  else share(args.quick, args.share[1]))
        print(json.dumps(result))
        return 0

    print("1. one trial process holding the whole GPU: seconds per epoch")
    rows = [_run_children([["--measure", s, str(n), *quick]], 1.0)[0]
            for s in SHAPES for n in (0, 4)]
    for r in rows:
        print(f"  {r['shape']} at {r['image_size']} px, {r['images']} images, "
              f"{r['trainable_layers']} trainable layers: augmented {r['augmented_epoch_s']:.2f} "
              f"s, on pixels {r['pixels_epoch_s']:.2f} s, on features "
              f"{r['features_epoch_s']:.3f} s ({r['pixels_epoch_s'] / r['features_epoch_s']:.0f}x)"
              f"; extraction once {r['extraction_s']:.1f} s ({r['features_mb']:.0f} MB); "
              f"peak GPU memory {_mb(r['peak_memory_mb'])}; on features: model built in "
              f"{r['build_s']:.1f} s, first epoch {r['first_epoch_s']:.1f} s, a checkpoint "
              f"{r['checkpoint_s']:.2f} s")
    print("\n2. n trial processes sharing the GPU, each capped to 1/n of its memory, augmented "
          "gemstones epochs (model 1, 224 px)")
    alone = 0.0
    for n in (1, 2, 4):
        until = time.time() + SHARE_S
        runs = _run_children([["--share", str(1 / n), str(until), *quick]] * n, 1 / n)
        rate = throughput(runs)
        alone = alone or rate
        print(f"  {n}: {rate:.0f} images/s in all ({rate / alone:.2f}x one alone), peak GPU "
              f"memory per process {_mb(max(r['peak_memory_mb'] or 0 for r in runs) or None)}")
    frozen = rows[0]
    print(f"\ngpu_features_speedup={frozen['pixels_epoch_s'] / frozen['features_epoch_s']:.1f}")
    print(f"gpu_share4_throughput={rate / alone:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
