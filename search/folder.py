"""A search's folder under `--storage-path`: what it takes to resume or extend it.

    <storage>/<search name>/
        search.json       the space's name and values, the MLflow parent run, the Tune
                          experiments (parts), the epoch budget of the driver running it
        driver.lock       the host and pid of the driver running the search, while it runs
        optuna.journal    the Optuna study, shared by every part: the sampler learns from all
        part-1/ part-2/   one Ray Tune experiment each (the search, then each extension)
        results.parquet   the table of every trial of every part

Ray Tune can finish an interrupted experiment (`Tuner.restore`) but not add trials to one, so
an extension is a new Tune experiment whose searcher loads the same Optuna study.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Container, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from search.console import first_line

INDEX = "search.json"
LOCK = "driver.lock"
STUDY_NAME = "search"


class FolderError(Exception):
    """A search's folder cannot be made, found or held where it was asked."""


class ResumeError(FolderError):
    """There is no search to resume, or it cannot be resumed where it was asked."""


class StoppedBeforeSearch(KeyboardInterrupt):
    """A new search was stopped (Ctrl-C, SIGTERM) while its data was made ready or before its
    folder was made: no folder was left, so there is nothing to resume."""


@dataclass
class SearchFolder:
    path: Path
    space: str
    parent_run_id: str
    tracking_uri: str
    created: float = field(default_factory=time.time)
    parts: list[str] = field(default_factory=list)
    space_values: dict[str, str] = field(default_factory=dict)  # `search.space.describe`
    part_trials: dict[str, int] = field(default_factory=dict)  # the trials each part makes
    epoch_budget: int | None = None  # the --epoch-budget of the driver running it now
    budget_ended: list[str] = field(default_factory=list)  # parts an epoch budget ended

    @classmethod
    def create(cls, storage: Path, space: str, space_values: dict[str, str]) -> SearchFolder:
        """A new search's folder, `<space>-<date>-<time>` (`-2`, `-3`... for another search of
        the space started in the same second), locked by this driver; its parent run is set
        by the caller before `save`."""
        stamp = f"{space}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            storage.mkdir(parents=True, exist_ok=True)
            for n in range(1, 1000):
                path = storage / (stamp if n == 1 else f"{stamp}-{n}")
                try:
                    path.mkdir()
                except FileExistsError:
                    continue
                folder = cls(path, space, "", "", space_values=space_values)
                folder.lock()
                return folder
        except OSError as exc:  # not a folder, not writable, a file system full
            raise FolderError(f"cannot make the search's folder under --storage-path "
                              f"{storage}: {exc.strerror or exc}") from None
        raise FolderError(f"cannot make a folder for a new search under {storage}/")

    def lock(self) -> None:
        """Hold the search for this driver: a lock file naming its host and pid. A lock left by
        a driver that died on this host is taken over; one held by a live driver, or by a
        driver on another host (whose life cannot be checked from here), is a `ResumeError`."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        try:
            fd = os.open(self.path / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = self._holder()
            if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                (self.path / LOCK).unlink(missing_ok=True)
                return self.lock()
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
            raise ResumeError(
                f"{self.path} is being run by the driver with pid {holder.get('pid')} on "
                f"{holder.get('host')} (since {since}); one driver per search. If that driver "
                f"is gone, delete {self.path / LOCK}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)

    def unlock(self) -> None:
        """Give the search up (only a lock this process holds)."""
        if self._holder().get("pid") == os.getpid():
            (self.path / LOCK).unlink(missing_ok=True)

    def _holder(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.path / LOCK).read_text()))
        except (OSError, ValueError):
            return {}  # gone, or half-written by a driver killed at that instant

    @property
    def results_path(self) -> Path:
        return self.path / "results.parquet"

    def study_storage(self) -> JournalStorage:
        """The Optuna storage every part's searcher loads (a journal file: no server, written
        by the one driver, survives the driver being killed)."""
        return DriverStorage(DriverJournal(self.path / "optuna.journal"))

    def load_study(self) -> optuna.Study:
        return optuna.load_study(study_name=STUDY_NAME, storage=self.study_storage())

    def add_part(self, trials: int) -> str:
        """Name, record and return the next Tune experiment of this search, which makes
        `trials` trials."""
        part = f"part-{len(self.parts) + 1}"
        self.parts.append(part)
        self.part_trials[part] = trials
        self.save()
        return part

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        tmp = self.path / f".{INDEX}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path / INDEX)  # never a half-written index

    @classmethod
    def load(cls, path: Path) -> SearchFolder:
        """The search whose index is in `path`; an index that cannot be read (edited, cut
        short by a disk, another tool's) is a `ResumeError` naming it."""
        index = path / INDEX
        try:
            return cls(path=path, **json.loads(index.read_text()))
        except (OSError, ValueError, TypeError) as exc:  # TypeError: not our fields
            why = "not a search's index" if isinstance(exc, TypeError) else first_line(exc)
            raise ResumeError(f"cannot read {index}: {why}; move {path} out of "
                              f"{path.parent}/ to resume another search") from None

    @classmethod
    def latest(cls, storage: Path, space: str) -> SearchFolder:
        """The newest search of `space` under `storage`."""
        found = [cls.load(index.parent) for index in storage.glob(f"*/{INDEX}")]
        found = [f for f in found if f.space == space]
        if not found:
            raise ResumeError(f"no search of space {space!r} to resume under {storage}/ "
                              f"(pass the --storage-path the search used)")
        return max(found, key=lambda f: f.created)


class DriverJournal(JournalFileBackend):
    """Optuna's journal file, appended to without Optuna's lock file and fsync. The search's
    `lock` makes its driver the journal's one writer, and what a killed driver wrote stays in
    the OS's cache all the same: fsync guards only against the machine itself crashing, which
    Tune's own saved state, written without it, does not survive either. Lock and fsync at
    each of Optuna's writes (a dozen a trial) took a fifth of the driver's time at 2,000
    trials (README, "Scale"). A reader (`search.report` while the search runs) skips a line
    being written, as Optuna's does."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with open(self.path, "ab") as f:
            f.write(text.encode())


class DriverStorage(JournalStorage):
    """Optuna's journal storage, remembering that no trial waits in the study's queue. At
    every `ask` Optuna looks for an enqueued trial (the search's baselines) by filtering
    every trial of the study for WAITING ones: at thousands of trials that scan grew the
    sampler's cost per trial with the study (README, "Scale"). A trial only becomes WAITING
    as it is made so or set so, through this driver, the journal's one writer."""

    def __init__(self, backend: JournalFileBackend) -> None:
        super().__init__(backend)
        self._none_waiting = False  # since the last scan found none

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is not None and template_trial.state == TrialState.WAITING:
            self._none_waiting = False
        return super().create_new_trial(study_id, template_trial)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        if state == TrialState.WAITING:
            self._none_waiting = False
        return super().set_trial_state_values(trial_id, state, values)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        waiting = states == (TrialState.WAITING,)
        if waiting and self._none_waiting:
            return []
        trials: list[FrozenTrial] = super().get_all_trials(study_id, deepcopy, states)
        if waiting:
            self._none_waiting = not trials
        return trials


def _alive(pid: object) -> bool:
    """Whether a process with this pid runs on this host."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
