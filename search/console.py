"""The terminal shows the search, not the machinery.

While a search runs (`to_log`), whatever Ray, Tune, Optuna, MLflow and TensorFlow write (their
loggers, Python's stdout and stderr, and what C++ code writes to file descriptors 1 and 2,
workers' lines forwarded by Ray included) goes to `search.log` in the search's folder. The
progress line and what a user must act on go to the terminal through `say`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

LOG_FILE = "search.log"
LOGGERS = ("ray", "optuna", "mlflow", "absl", "tensorflow", "py.warnings")

_terminal: TextIO | None = None  # where `say` writes while `to_log` holds stdout


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An error in one line: the first of its message (its type's name if it has none)."""
    return (str(exc).strip() or type(exc).__name__).splitlines()[0][:limit]


def say(text: str) -> None:
    """Print a line on the terminal, even while `to_log` holds stdout."""
    print(text, file=_terminal or sys.stdout, flush=True)


@contextlib.contextmanager
def to_log(path: Path) -> Iterator[None]:
    """Send everything but `say` to `path` (appended) until the block ends."""
    global _terminal
    with path.open("a", buffering=1) as log, _terminal_kept() as terminal:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        loggers = [logging.getLogger(name) for name in LOGGERS]
        saved = [(logger, logger.handlers[:], logger.propagate) for logger in loggers]
        for logger in loggers:
            logger.handlers, logger.propagate = [handler], False
        _terminal = terminal
        try:
            with _descriptors_to(log), contextlib.redirect_stdout(log), \
                    contextlib.redirect_stderr(log):
                yield
        finally:
            _terminal = None
            for logger, handlers, propagate in saved:
                logger.handlers, logger.propagate = handlers, propagate


@contextlib.contextmanager
def silenced(told: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Drop what the block writes (TensorFlow's start-up lines as it is imported), unless it
    fails: then show it, but for the errors in `told`, whose one line says what is wrong
    (and for a stop, Ctrl-C or SIGTERM, which is no failure of the block)."""
    with tempfile.TemporaryFile("w+") as noise:
        try:
            with _descriptors_to(noise):
                yield
        except told:
            raise
        except Exception:
            noise.seek(0)
            sys.stderr.write(noise.read())
            raise


def tensorflow_started() -> None:
    """TensorFlow imported and its devices made, without its C++ lines on the terminal
    (start-up lines; on a machine without a GPU a CUDA error line, on one with a line per
    GPU made): for a command that prints its answers in the process that runs TensorFlow."""
    with silenced():
        import tensorflow as tf

        tf.config.list_logical_devices()  # the devices made now, not at the first op


@contextlib.contextmanager
def _terminal_kept() -> Iterator[TextIO]:
    """Python's stdout as it is now; a copy of it when it is file descriptor 1 itself, which
    `_descriptors_to` is about to point elsewhere."""
    try:
        real = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # a StringIO, pytest's capture
        real = False
    if not real:
        yield sys.stdout
        return
    sys.stdout.flush()
    with os.fdopen(os.dup(1), "w", buffering=1) as copy:
        yield copy


@contextlib.contextmanager
def _descriptors_to(log: TextIO) -> Iterator[None]:
    """File descriptors 1 and 2 on `log` (C++ code writes there, past Python)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
