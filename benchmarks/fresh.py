"""Run a part of a benchmark in a new Python process, so that it measures what a user's own
command would and not the benchmark process's history: a heap grown over the parts before
it, TensorFlow's gradient registry (`trainables.resources.fresh_session`), a Ray that has
run dozens of searches."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def in_new_process(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` run in a new (spawned) process, its result sent back."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(fn, *args, **kwargs).result()
