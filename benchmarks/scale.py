"""What the driver costs as a search grows: the real driver (`search.driver.run_search`) with
the curve trial standing in for Keras (`search.curve_trial`), a real `mlflow server` over HTTP
on localhost (`mlflow/start-server.sh`), thousands of trials of up to 20 epochs, as many at
once as the machine holds (fractional CPUs).

The driver runs in this process, so its parts are timed by wrapping their methods for the
run: the sampler (Optuna and its journal), the scheduler (ASHA), MLflow (the trial-run
logger), Tune's snapshots, and this project's own callbacks. `python -m benchmarks.scale
--trials 2000` prints the figures and three lines for scripts: `results_per_s=`,
`trial_cost_growth=` and `overhead_vs_ideal=`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import resource
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow.utils.rest_utils as rest
from ray.tune.execution.tune_controller import TuneController

from search import driver
from search.curve_trial import curve_trial
from search.driver import Options, run_search
from search.progress import ProgressCallback
from search.pruner import CheckpointPruner
from search.searcher import PruningOptunaSearch, RecordingASHA
from search.snapshots import SnapshotKeeper
from search.space import Asha, Fixed, load_space
from search.trial_logger import TrialRunLogger

HERE = Path(__file__).parent
REPO = HERE.parent
# driver parts timed, by what they are to a reader: (class, method names)
PARTS = {
    "sampler (Optuna, journal)": (PruningOptunaSearch,
                                  ("suggest", "on_trial_result", "on_trial_complete")),
    "scheduler (ASHA)": (RecordingASHA, ("on_trial_result",)),
    "MLflow (trial runs)": (TrialRunLogger, ("log_trial_start", "log_trial_result",
                                             "log_trial_end", "on_trial_recover")),
    # the part's end waits there until every queued write of the trial runs is sent
    "MLflow (writes still queued as a part ends)": (TrialRunLogger, ("on_experiment_end",)),
    "after the trials: MLflow checked against Ray": (driver, ("mend_trial_runs",)),
    "after the trials: the parent run's results and views": (driver, ("record_results",)),
    "Tune's snapshots": (TuneController, ("checkpoint",)),
    "checkpoint pruner": (CheckpointPruner, ("on_checkpoint", "on_trial_complete",
                                             "on_step_end")),
    "snapshot keeper": (SnapshotKeeper, ("on_step_end",)),
    "progress line": (ProgressCallback, ("on_trial_start", "on_trial_result",
                                         "on_trial_complete", "on_step_end")),
}


@dataclasses.dataclass
class Meter:
    """What the wrapped methods saw: seconds per part, MLflow requests, and one event per
    trial start, result and end (wall clock, the driver's CPU seconds, its RSS)."""
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))
    methods: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))
    calls: Counter[str] = dataclasses.field(default_factory=Counter)
    requests: Counter[str] = dataclasses.field(default_factory=Counter)  # by endpoint
    events: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)
    rss_mb: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (ended, MB)
    ended: int = 0
    # the worker processes results came from: fewer than the trials allowed at once where
    # Tune dropped the workers it started for them (README, "What stands in the way")
    workers: set[int] = dataclasses.field(default_factory=set)

    def event(self, kind: str) -> None:
        # counted, not found again among the events: a scan at each end was the driver's
        # cost growing with the study, in the very figure that measures it
        self.events.append((kind, time.perf_counter(), time.process_time()))
        if kind == "end":
            self.ended += 1
            if self.ended % 100 == 0:
                self.rss_mb.append((self.ended, _rss_mb()))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.contextmanager
def metered() -> Iterator[Meter]:
    """Time the driver's parts, count MLflow's HTTP requests and record trial events while
    the block runs; the methods are put back after."""
    meter = Meter()
    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, part: str, event: str | None = None) -> None:
        original = owner.__dict__[name]

        def timed(*args: Any, **kwargs: Any) -> Any:
            if event:
                meter.event(event)
            if event == "result":  # log_trial_result(self, iteration, trial, result)
                meter.workers.add(args[3]["pid"])
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                meter.seconds[part] += elapsed
                meter.methods[f"{owner.__name__}.{name}"] += elapsed
                meter.calls[f"{owner.__name__}.{name}"] += 1

        saved.append((owner, name, original))
        setattr(owner, name, timed)

    events = {"log_trial_start": "start", "log_trial_result": "result", "log_trial_end": "end"}
    for part, (owner, names) in PARTS.items():
        for name in names:
            wrap(owner, name, part, events.get(name) if owner is TrialRunLogger else None)
    original_request: Callable[..., Any] = rest.http_request

    def counted(host_creds: Any, endpoint: str, *args: Any, **kwargs: Any) -> Any:
        meter.requests["/".join(endpoint.split("/")[-2:])] += 1  # runs/log-batch, ...
        return original_request(host_creds, endpoint, *args, **kwargs)

    rest.http_request = counted
    try:
        yield meter
    finally:
        rest.http_request = original_request
        for owner, name, original in saved:
            setattr(owner, name, original)


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """The project's tracking server script, on a free localhost port, until the block ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_STORE": str(folder / "store"), "MLFLOW_PORT": str(port)}
    with (folder / "mlflow.log").open("w") as log:
        server = subprocess.Popen(["bash", str(REPO / "mlflow" / "start-server.sh")], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def run(trials: int, concurrent: int, epochs: int = 20, epoch_s: float = 0.05,
        checkpoint_every_s: float | None = None, sampler: str | None = None) -> dict[str, Any]:
    """One search of `trials` curve trials, `concurrent` at a time on this machine's CPUs,
    with `search.checkpoint_every_s` if given (0: a checkpoint every epoch) and
    `search.sampler` if given (tpe or random; default: the space's)."""
    cpus = os.cpu_count() or 1
    space = load_space(HERE / "curves.yaml")
    if checkpoint_every_s is None:
        checkpoint_every_s = space.search.checkpoint_every_s
    space = dataclasses.replace(
        space, params={**space.params, "epochs": Fixed(epochs)},
        search=dataclasses.replace(
            space.search, num_samples=trials, max_concurrent=concurrent,
            checkpoint_every_s=checkpoint_every_s,
            sampler=sampler or space.search.sampler,
            resources=dataclasses.replace(space.search.resources,
                                          cpu=round(cpus / concurrent, 3)),
            asha=Asha(max_epochs=epochs, grace_period=1, reduction_factor=3)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        space = dataclasses.replace(space, data=dataclasses.replace(
            space.data, root=folder / "data", cache_dir=folder / "cache"))
        with mlflow_server(folder) as url, metered() as meter, \
                contextlib.redirect_stdout(None):
            started = time.perf_counter()
            outcome = run_search(space, Options(url, folder / "ray"),
                                 curve_trial(epoch_s=epoch_s), register=None)
            ended = time.perf_counter()
    return summarise(meter, outcome.table, started, ended, concurrent, epoch_s)


def summarise(meter: Meter, table: Any, started: float, ended: float, concurrent: int,
              epoch_s: float) -> dict[str, Any]:
    """The figures: per fifth of the trials (by the order they ended), results per second
    and the driver's CPU seconds per result and per trial; the whole run's against ideal,
    and how much of it came before the first trial and after the last."""
    wall = ended - started
    ends = [i for i, (kind, _, _) in enumerate(meter.events) if kind == "end"]
    fifths = []
    bounds = [0] + [ends[len(ends) * k // 5 - 1] for k in range(1, 6)]
    for k in range(5):
        window = meter.events[bounds[k]:bounds[k + 1] + 1]
        kinds = Counter(kind for kind, _, _ in window)
        seconds = window[-1][1] - window[0][1]
        cpu = window[-1][2] - window[0][2]
        fifths.append({"fifth": k + 1, "trials_ended": kinds["end"],
                       "results": kinds["result"],
                       "results_per_s": kinds["result"] / seconds,
                       "driver_cpu_ms_per_result": 1000 * cpu / max(kinds["result"], 1),
                       "driver_cpu_ms_per_trial": 1000 * cpu / max(kinds["end"], 1)})
    results = sum(1 for kind, _, _ in meter.events if kind == "result")
    ideal = results * epoch_s / concurrent
    growth = [(n, mb) for n, mb in meter.rss_mb]
    per_1000 = (growth[-1][1] - growth[0][1]) / ((growth[-1][0] - growth[0][0]) / 1000) \
        if len(growth) > 1 else float("nan")
    return {
        "trials": len(table), "results": results, "wall_s": wall, "ideal_s": ideal,
        "before_first_trial_s": meter.events[0][1] - started,
        "after_last_trial_s": ended - meter.events[-1][1],
        "overhead_vs_ideal": wall / ideal - 1, "results_per_s": results / wall,
        "fifths": fifths, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_growth_mb_per_1000_trials": per_1000,
        "mlflow_requests_per_result": meter.requests.total() / results,
        "mlflow_requests_per_trial": {endpoint: n / len(table)
                                      for endpoint, n in meter.requests.most_common()},
        "checkpoints": meter.calls["CheckpointPruner.on_checkpoint"],
        "part_seconds": dict(meter.seconds), "method_seconds": dict(meter.methods),
        "trial_cost_growth": fifths[-1]["driver_cpu_ms_per_trial"]
        / fifths[0]["driver_cpu_ms_per_trial"],
        "concurrent": concurrent, "epoch_s": epoch_s, "workers": len(meter.workers),
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"{r['trials']} trials, {r['results']} results (epochs), {r['concurrent']} at once, "
          f"{r['epoch_s'] * 1000:.0f} ms per epoch")
    print(f"wall {r['wall_s']:.0f} s against ideal {r['ideal_s']:.0f} s "
          f"(trials' own time / concurrency): overhead {r['overhead_vs_ideal']:.0%}")
    print(f"of which {r['before_first_trial_s']:.0f} s before the first trial started (Ray, "
          f"the search's folder and parent run) and {r['after_last_trial_s']:.0f} s after the "
          f"last ended (results, Optuna's views, MLflow checked against Ray)")
    print(f"results per second: {r['results_per_s']:.0f} over the run; "
          f"{r['checkpoints']} of the results carried a checkpoint")
    print(f"the trials ran in {r['workers']} worker processes ({r['concurrent']} allowed at "
          f"once)")
    print("by fifth of the trials (in the order they ended):")
    for f in r["fifths"]:
        print(f"  {f['fifth']}: {f['results_per_s']:6.0f} results/s, driver CPU "
              f"{f['driver_cpu_ms_per_result']:6.1f} ms per result, "
              f"{f['driver_cpu_ms_per_trial']:7.1f} ms per trial")
    growth = r["rss_growth_mb_per_1000_trials"]
    print(f"driver peak RSS {r['peak_rss_mb']:.0f} MB, " + (
        f"growing {growth:.0f} MB per 1,000 trials" if math.isfinite(growth) else
        "its growth not measured (sampled every 100 trials: needs 200 or more)"))
    print(f"MLflow requests per result: {r['mlflow_requests_per_result']:.2f}; per trial: "
          + ", ".join(f"{endpoint} {n:.2f}" for endpoint, n in
                      r["mlflow_requests_per_trial"].items() if n >= 0.01))
    print("driver wall seconds in:")
    for part, seconds in sorted(r["part_seconds"].items(), key=lambda kv: -kv[1]):
        print(f"  {seconds:8.1f} s {seconds / r['wall_s']:6.1%}  {part}")
    print("the costliest methods:")
    for method, seconds in sorted(r["method_seconds"].items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {seconds:8.1f} s  {method}")


def print_lines(r: dict[str, Any]) -> None:
    print(f"results_per_s={r['results_per_s']:.1f}")
    print(f"trial_cost_growth={r['trial_cost_growth']:.2f}")
    print(f"overhead_vs_ideal={r['overhead_vs_ideal']:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--concurrent", type=int, default=8)
    p.add_argument("--epoch-s", type=float, default=0.05)
    p.add_argument("--checkpoint-every-s", type=float, default=None,
                   help="search.checkpoint_every_s (0: every epoch; default: the space's)")
    p.add_argument("--sampler", choices=["tpe", "random"], default=None,
                   help="search.sampler (default: the space's, tpe)")
    args = p.parse_args(argv)
    r = run(args.trials, args.concurrent, epoch_s=args.epoch_s,
            checkpoint_every_s=args.checkpoint_every_s, sampler=args.sampler)
    print_report(r)
    print_lines(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
