"""What Ray Tune runs in a worker process for a Keras trial: `run_trial`, in a module a worker
imports without Keras. It imports the trial (`search.trainable`) on the worker's first trial,
with the optional packages Keras imports when they are installed hidden from it.

Keras imports scikit-learn, matplotlib and IPython at its own import, where installed, for its
scikit-learn wrappers, its image gallery and its file editor; a trial uses none of them. That
was a second of CPU and 100 MB of every worker process, before its first trial: importing the
trial took 3.4 to 3.7 s and peaked at 780 MB here, against 2.4 s and 680 MB with them hidden.
Keras takes a hidden package as not installed, as its own code provides for; it is importable
again once Keras is in.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search.space import Space
from trainables.data import Listing

KERAS_EXTRAS = ("sklearn", "matplotlib", "IPython")


@contextlib.contextmanager
def hidden(packages: tuple[str, ...]) -> Iterator[None]:
    """Inside the block, importing any of `packages` not imported yet fails as if it were not
    installed (a None in `sys.modules`, Python's own way to say so); after it, they import."""
    absent = [name for name in packages if name not in sys.modules]
    for name in absent:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in absent:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]


def run_trial(params: dict[str, Any], *, space: Space, listing: Listing,
              search_folder: Path) -> None:
    """Ray Tune function trainable: the Keras trial (`search.trainable.run_trial`), its
    `started_at` taken before its import, which Tune times as part of its first epoch."""
    started_at = time.time()
    with hidden(KERAS_EXTRAS):
        from search import trainable
    trainable.run_trial(params, space=space, listing=listing, search_folder=search_folder,
                        started_at=started_at)
