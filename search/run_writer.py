"""The writes to a search's trial runs, sent to MLflow from threads beside the driver's loop.

A request to a tracking server takes tens of milliseconds, and the driver made one per
result: at a few results per second it waited on MLflow more than it did anything else. Here
the driver only queues what a trial's run must get; a thread takes everything queued for a
run since its last request and sends it as one `log_batch` (MLflow's limits per batch kept),
runs written in parallel, each run's writes in the order given. No Ray here: this is tested
on a SQLite store alone.

Writes still queued when the driver is killed are lost, as a result between Ray's record and
its logging always could be: `--resume` writes what MLflow missed from Ray's results
(`search.tracking.mend_trial_runs`)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from search.tracking import PARALLEL_REQUESTS

# MLflow's limits on one log_batch: entities in all, and params and tags each
MAX_ENTITIES, MAX_PARAMS, MAX_TAGS = 1000, 100, 100


@dataclasses.dataclass
class Pending:
    """What one trial's run is yet to get, in the order it is written."""
    create: tuple[str, dict[str, str], int] | None = None  # a run to make: name, tags, start
    reopen: bool = False  # a run from before, to mark RUNNING again
    params: list[Param] = dataclasses.field(default_factory=list)
    metrics: list[Metric] = dataclasses.field(default_factory=list)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    end: tuple[str, int] | None = None  # (status, end time in ms)


class RunWriter:
    """The trials' runs of one search, by trial id, written in the background. `runs` holds
    the runs that exist already (a resumed search's)."""

    def __init__(self, client: MlflowClient, experiment_id: str, runs: dict[str, str]):
        self._client = client
        self._experiment_id = experiment_id
        self.runs = dict(runs)  # trial id -> run id, filled in as runs are made
        self._made: set[str] = set()  # trial ids whose run this writer made
        # trial ids whose run this writer made and ended: everything given for it is written
        self.whole: set[str] = set()
        self._pending: dict[str, Pending] = {}
        self._writing = False  # a round of requests is under way
        self._changed = threading.Condition()
        self._closed = False
        self.error: Exception | None = None  # the first failed write: writing stops
        self._pool = ThreadPoolExecutor(PARALLEL_REQUESTS, thread_name_prefix="mlflow-writer")
        threading.Thread(target=self._loop, name="mlflow-runs", daemon=True).start()

    def start(self, trial_id: str, run_name: str, tags: dict[str, str],
              params: dict[str, str]) -> None:
        """A trial starts: make its run with `tags` and `params`, or reopen the one it has."""
        with self._changed:
            pending = self._queued(trial_id)
            if trial_id in self.runs:
                pending.reopen = True
            else:
                pending.create = (run_name, tags, int(time.time() * 1000))
                pending.params.extend(Param(k, v) for k, v in params.items())

    def log(self, trial_id: str, metrics: Sequence[Metric] = (),
            tags: dict[str, str] | None = None) -> None:
        """Metrics and tags for a trial's run."""
        with self._changed:
            pending = self._queued(trial_id)
            pending.metrics.extend(metrics)
            pending.tags.update(tags or {})

    def end(self, trial_id: str, status: str) -> None:
        """A trial's run ends with `status`, at this moment."""
        with self._changed:
            self._queued(trial_id).end = (status, int(time.time() * 1000))

    def flush(self) -> None:
        """Wait until everything queued so far is written; raise the write that failed."""
        with self._changed:
            self._changed.wait_for(lambda: self.error is not None
                                   or not (self._pending or self._writing))
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Write everything queued (raising the write that failed), then stop the threads."""
        try:
            self.flush()
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()
            self._pool.shutdown(wait=False)

    def _queued(self, trial_id: str) -> Pending:
        self._changed.notify_all()
        return self._pending.setdefault(trial_id, Pending())

    def _loop(self) -> None:
        """Rounds of requests: each takes what is queued, one run per thread, and the next
        waits for it, so a run's writes land in order while the next ones gather."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed
                                       or (bool(self._pending) and self.error is None))
                if self._closed:
                    return
                taken, self._pending, self._writing = self._pending, {}, True
            try:
                for _ in self._pool.map(self._write, taken.items()):
                    pass
            except Exception as exc:  # MLflow's client retried for minutes first
                self.error = exc
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()

    def _write(self, item: tuple[str, Pending]) -> None:
        trial_id, p = item
        if p.create is not None:
            name, run_tags, start = p.create
            self.runs[trial_id] = self._client.create_run(
                self._experiment_id, start_time=start, tags=run_tags, run_name=name).info.run_id
            self._made.add(trial_id)
        run_id = self.runs[trial_id]
        if p.reopen:
            self._client.update_run(run_id, status="RUNNING")
        tags = [RunTag(k, v) for k, v in p.tags.items()]
        params, metrics = p.params, p.metrics
        while params or metrics or tags:
            batch_params, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
            batch_tags, tags = tags[:MAX_TAGS], tags[MAX_TAGS:]
            room = MAX_ENTITIES - len(batch_params) - len(batch_tags)
            batch_metrics, metrics = metrics[:room], metrics[room:]
            self._client.log_batch(run_id, metrics=batch_metrics, params=batch_params,
                                   tags=batch_tags)
        if p.end is not None:
            status, at = p.end
            self._client.set_terminated(run_id, status, end_time=at)
            if trial_id in self._made:  # its writes land in order: the end comes last
                self.whole.add(trial_id)
