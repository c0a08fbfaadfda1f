"""Ray for the driver: started, or joined, as a search needs it (`init_ray`), and started
while the driver's own imports load in a thread (`start_ray_importing`).

The driver imports TensorFlow and Keras (about 5 s of one core) and then starts Ray (about
3 s, most of it Ray's own processes on the other core): one after the other they were the
first 9 s of every search. Started together they take little more than the longer of the
two (README, Figures)."""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import FrameType

import ray

from search.cli import STOPS, term_as_ctrl_c
from search.cluster import ClusterError, check_address
from search.console import first_line
from search.space import TrialResources


def init_ray(address: str | None) -> None:
    """Start Ray, or connect to `address`, unless a Ray is already up; then, in the main
    thread, SIGTERM and SIGHUP stop the search as Ctrl-C does. Workers' output stays out of
    the terminal: each trial writes to the search's log (`search.trainable`), the rest to
    Ray's session logs. A cluster that is not there is a `ClusterError`."""
    if not ray.is_initialized():
        _start(address)
    if threading.current_thread() is threading.main_thread():
        term_as_ctrl_c()  # over ray.init's SIGTERM handlers (`_sigterm_back_from_ray`)


def _start(address: str | None) -> None:
    # TensorFlow's C++ start-up lines stay out of the trials' logs: set where the local Ray's
    # workers inherit it (cluster.yaml sets it on each node). A job-level runtime_env would
    # carry it everywhere but makes every worker wait on Ray's runtime-env agent first
    # (1.3 s before the first trials here).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    check_address(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # Ray's errors share no type: a ConnectionError for `auto` with
        # no cluster running; a local start's OSError (its temporary folder), or its
        # plain Exception when its processes did not come up in time
        where = f"Ray at --address {address}" if address else \
            "Ray could not start on this machine"
        raise ClusterError(f"{where}: {first_line(exc)}") from None


def check_fits(resources: TrialResources, where: str) -> None:
    """Fail now if no node of the Ray this driver is on could run a trial, which asks for
    `resources` (`search.resources` in `where`): Tune would wait for such a node forever,
    the progress line saying only that nothing runs. For a search on this machine, whose
    nodes are all there is; a cluster's autoscaler may yet add the node a trial needs."""
    nodes = _alive_nodes()
    if any(node.get("CPU", 0) >= resources.cpu and node.get("GPU", 0) >= resources.gpu
           for node in nodes):
        return
    largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)),
                  default={})
    has = TrialResources(largest.get("CPU", 0), largest.get("GPU", 0))
    raise ClusterError(f"{where}: search.resources: a trial asks for {resources}, but this "
                       f"machine has {has}; ask for less, or run on a cluster that has them "
                       f"(--address)")


def node_cpus() -> list[float]:
    """The CPUs of each live node of the Ray this driver is on."""
    return [node.get("CPU", 0.0) for node in _alive_nodes()]


def _alive_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def start_ray_importing(address: str | None, module: str) -> bool:
    """Start Ray (`init_ray`) while `module` (the driver, with TensorFlow) is imported in a
    thread; return whether Ray was started here (False where one was up already): a command
    that then fails before its search shuts down what it started (`ray.shutdown`). Ray starts
    in this thread, the main one: Ray's processes die with the thread that started them.
    What fails, the start or the import, raises here once the import has ended; so does a
    stop (Ctrl-C, SIGTERM, SIGHUP) that came meanwhile, as KeyboardInterrupt (`_stops_held`)."""
    started = not ray.is_initialized()
    with _stops_held() as stops, ThreadPoolExecutor(1, thread_name_prefix="import") as pool:
        loading = pool.submit(importlib.import_module, module)
        if started:
            _start(address)
            _sigterm_back_from_ray(stops)
        loading.result()
    return started


def _sigterm_back_from_ray(stops: list[int]) -> None:
    """Python's handler back on SIGTERM, over the one that ray.init's C++ core worker puts
    there (absl's failure signal handler). That one logs the signal, passes it on to Python's,
    and sets an alarm that aborts the process 3 s later, expecting it to die; this driver,
    stopping as Ctrl-C does, outlived it and ended in SIGABRT. The alarm of a SIGTERM that
    came in the last milliseconds of ray.init, between the two, is cancelled."""
    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM))
    if signal.SIGTERM in stops:
        signal.alarm(0)


@contextmanager
def _stops_held() -> Iterator[list[int]]:
    """Ctrl-C, SIGTERM and SIGHUP noted, not acted on, until Ray has started and the import
    has ended; then, once SIGTERM and SIGHUP stop the search as Ctrl-C does, a stop noted
    raises KeyboardInterrupt. Raised at once, in the middle of ray.init or of the wait for
    the import, a stop left the driver hung (the import thread waiting on an import lock
    the cut-short code held). A second stop acts at once: a start that hangs can still be
    stopped. Yields the stops noted."""
    noted: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        if noted:
            raise KeyboardInterrupt
        noted.append(signum)

    before = {stop: signal.getsignal(stop) for stop in STOPS}
    for stop, handler in before.items():
        if handler is not signal.SIG_IGN:
            signal.signal(stop, note)
    # ray.init first sets a SIGTERM handler of its own that exits at once, through this
    # function of Ray's, looked up at each call (ray/_private/worker.py)
    ray_utils = ray._private.utils
    sets_ray_handler = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield noted
    finally:
        ray_utils.set_sigterm_handler = sets_ray_handler
        term_as_ctrl_c()  # in place of `note`, never the default between them
        signal.signal(signal.SIGINT, before[signal.SIGINT])
    if noted:
        raise KeyboardInterrupt
