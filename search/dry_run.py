"""`--dry-run`: check a space without training: its data (if present) and its baselines."""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from search.console import first_line
from search.space import Fixed, Space, SpaceError, extreme_draw
from search.space.params import contains
from search.space.space import weights_files
from search.weights_check import check_weights_files
from trainables.data import DataError, list_images
from trainables.models import build_model


def dry_run(space: Space) -> None:
    """Print what the space searches and what each trial gets on this machine, the images per
    split and class (or why there are none), and every baseline's parameter count. Builds
    models without pretrained weights; a baseline too large to allocate, or a weights file
    of another backbone, is a `SpaceError`."""
    check_weights_files(space)
    searched = sorted(n for n, p in space.params.items() if not isinstance(p, Fixed))
    print(f"space {space.name} ({space.source}): searches {', '.join(searched) or 'nothing'}")
    cpus = os.cpu_count() or 1
    s = space.search
    print(f"trials: {s.num_samples}, {s.max_concurrent} at a time, each with "
          f"{s.trial_resources([float(cpus)])} on this machine ({cpus} CPUs)")
    note = bfloat16_note(space, _cpu_flags())
    if note:
        print(note)
    deepest = extreme_draw(space, deepest=True)
    too_small = deepest.too_small() if deepest else None
    if too_small:
        print(f"note: some models the space draws cannot be built ({too_small}): the search "
              f"draws such a trial's config again")
    classes = space.data.classes
    try:
        listing = list_images(space.data, space.seed)
        classes = listing.classes
        print(f"data {space.data.root}:")
        print(f"  {'split':<12}{'class':<20}{'images':>8}")
        for split, cls, n in listing.counts():
            print(f"  {split:<12}{cls:<20}{n:>8}")
        if listing.ignored:
            print(f"  ({listing.ignored} files ignored: not images, or no class in the name)")
    except DataError as exc:
        later = " (written on the first run)" if space.data.generate else ""
        print(f"data: {exc}{later}")
    if not space.baselines:
        print("no baselines")
        return
    if classes is None:
        print("baselines not built: no data and no data.classes to size the output layer")
        return
    print(f"{'baseline':<24}{'parameters':>14}")
    for name, config in space.baselines.items():
        try:
            model = build_model(config.replace(backbone_weights="none"), len(classes),
                                space.data.channels)
        except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
            raise SpaceError(f"{space.source}: baselines.{name}: the model does not fit in "
                             f"memory: {first_line(exc, 200)}") from None
        print(f"{name:<24}{model.count_params():>14,}")


def bfloat16_note(space: Space, cpu_flags: set[str]) -> str | None:
    """A note for a space that trains backbones in float32 on CPUs that compute bfloat16 on
    AMX (`cpu_flags`, as Linux names them), where `mixed_bfloat16` is several times faster."""
    _, backbones = weights_files(space.params)
    if (not backbones or contains(space.params["precision"], "mixed_bfloat16")
            or space.search.resources.gpu or "amx_bf16" not in cpu_flags):
        return None
    return ("note: this machine's CPU computes bfloat16 on AMX: `train: {precision: "
            "mixed_bfloat16}` trained a VGG16 epoch 5.3x faster than float32 on 2 such cores "
            "(close to float32's numbers, not the same; README, \"Pretrained backbones\")")


def _cpu_flags() -> set[str]:
    """This machine's CPU flags (Linux; none elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags")
            for flag in line.partition(":")[2].split()}
