"""Tune's experiment snapshot, kept one step back so that a cut-short copy is not the end.

Tune saves its state (the trials, the searcher, the search generator) in the driver's staging
folder, then copies those files over the ones in the experiment folder. A driver killed during
the copy leaves part of a file, and `Tuner.restore` fails on it. `SnapshotKeeper`, a Tune
callback in the driver, copies each new snapshot from the staging folder (complete whenever a
callback runs: Tune writes it in the same thread) to a numbered folder of `KEPT`, marked done
once whole; `mend` puts the newest done copy back where the current snapshot is cut short.

Each trial's `result.json` is written the same way, in the staging folder, and copied to the
experiment folder at most every `SyncConfig.sync_period` (5 minutes). When a trial starts
again (a retry, or more CPUs: `search.growth`), Tune's JSON logger copied the experiment
folder's file back over the one it writes: the results of up to 5 minutes before the restart
were lost, and with them the results table's epochs (a trial restarted after its first epoch
of 200 s had "3 epochs" as 2). `TrialResultLogger` copies it back only where the staging
folder has none (a resumed driver's).
"""

from __future__ import annotations

import json
import os
import pickletools
import shutil
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.logger import JsonLoggerCallback

from search.folder import ResumeError
from search.saved_state import NewestStateFile, written_since

KEPT = "kept-snapshots"  # in the experiment folder
DONE = "done"  # written last in a kept copy: the copy is whole
# the files of one snapshot, each named by its driver session (a resume starts another)
PICKLE = b"\x80"  # the PROTO opcode every pickle since protocol 2 starts with
PATTERNS = ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json")


class TrialResultLogger(JsonLoggerCallback):
    """Tune's JSON logger (each trial's results, which the results table is read from), that
    keeps what it wrote when a trial starts again."""

    def _restore_from_remote(self, file_name: str, trial: Any) -> None:
        if not Path(trial.local_path, file_name).exists():
            super()._restore_from_remote(file_name, trial)


class SnapshotKeeper(Callback):
    """Keeps a whole copy of Tune's latest snapshot in the experiment folder."""

    def __init__(self) -> None:
        self._since = time.time_ns()  # when this Tune began (`setup`)
        self._state: NewestStateFile | None = None  # the staging folder's state file
        self._kept: int | None = None  # the staging snapshot's time when last kept

    def setup(self, *args: Any, **info: Any) -> None:
        """Tune begins (a resumed part too, with this callback unpickled): the state files
        written in its staging folder from now on are its own."""
        self._since = time.time_ns()
        self._state = None

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._keep_new(trials)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._keep_new(trials)  # after Tune's last snapshot, written as the part ends

    def _keep_new(self, trials: list[Any]) -> None:
        """Keep the staging snapshot if Tune wrote it since the last time."""
        if not trials:
            return
        storage = trials[0].storage
        if self._state is None:
            self._state = NewestStateFile(storage.experiment_driver_staging_path, None,
                                          written_since(self._since))
        state = self._state.path()
        if state is None:
            return
        written = os.stat(state).st_mtime_ns
        if written == self._kept:
            return
        self._kept = written
        keep(snapshot_files(Path(storage.experiment_driver_staging_path), Path(state)),
             Path(storage.experiment_fs_path) / KEPT)


def snapshot_files(folder: Path, state: Path | None = None) -> list[Path]:
    """The snapshot files in `folder`, of the newest session only: that of `state`, Tune's
    newest state file there, if the caller has found it (the folder holds a folder per
    trial: not listed again)."""
    if state is None:
        states = sorted(folder.glob(PATTERNS[0]))
        if not states:
            return []
        state = states[-1]
    session = state.name.removeprefix("experiment_state-").removesuffix(".json")
    return [path for pattern in PATTERNS
            for path in folder.glob(pattern.replace("*", session))]


def keep(files: list[Path], kept: Path) -> None:
    """Copy `files` to a new numbered folder of `kept`, mark it done, then drop older ones: a
    kill at any point leaves at least one whole copy once the first is done."""
    folders = sorted((int(f.name) for f in kept.glob("[0-9]*")), reverse=True)
    target = kept / str((folders[0] + 1) if folders else 1)
    target.mkdir(parents=True)
    for path in files:
        shutil.copyfile(path, target / path.name)
    (target / DONE).touch()
    for number in folders:
        shutil.rmtree(kept / str(number))


def mend(experiment: Path) -> str | None:
    """Put the last kept snapshot back if the current one in `experiment` is cut short (its
    broken files removed). Returns what was done, to tell the user; None if nothing was."""
    current = snapshot_files(experiment)
    broken = [path for path in current if not whole(path)]
    if not broken:
        return None
    done = sorted((f for f in (experiment / KEPT).glob("[0-9]*") if (f / DONE).exists()),
                  key=lambda f: int(f.name))
    if not done:
        raise ResumeError(f"Tune's saved state {broken[0]} is cut short (the driver was "
                            f"killed while writing it) and no earlier copy was kept")
    for path in current:
        path.unlink()
    for path in snapshot_files(done[-1]):
        shutil.copyfile(path, experiment / path.name)
    return (f"Tune's saved state of {experiment.name} was cut short (the driver was killed "
            f"while writing it): resuming from the copy kept before it")


def whole(path: Path) -> bool:
    """Whether a snapshot file is complete: JSON that parses, a pickle whose opcodes run to
    their STOP (read, not run: no object is built). Tune's `search_gen_state-*.json` is a
    pickle, so the content decides, not the name."""
    data = path.read_bytes()
    try:
        if not data.startswith(PICKLE):
            json.loads(data)
        else:
            for _ in pickletools.genops(data):
                pass
    except ValueError:  # json's errors are ValueErrors; genops raises one at the cut
        return False
    return True
