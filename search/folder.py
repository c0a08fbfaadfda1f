"""A search's folder under `--storage-path`: what it takes to resume or extend it.

    <storage>/<search name>/
        search.json       the space's name, the MLflow parent run, the Tune experiments (parts)
        optuna.journal    the Optuna study, shared by every part: the sampler learns from all
        part-1/ part-2/   one Ray Tune experiment each (the search, then each extension)
        results.parquet   the table of every trial of every part

Ray Tune can finish an interrupted experiment (`Tuner.restore`) but not add trials to one, so
an extension is a new Tune experiment whose searcher loads the same Optuna study.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

INDEX = "search.json"
STUDY_NAME = "search"


class ResumeError(Exception):
    """There is no search to resume, or it cannot be resumed where it was asked."""


@dataclass
class SearchFolder:
    path: Path
    space: str
    parent_run_id: str
    tracking_uri: str
    created: float = field(default_factory=time.time)
    parts: list[str] = field(default_factory=list)

    @property
    def results_path(self) -> Path:
        return self.path / "results.parquet"

    def study_storage(self) -> JournalStorage:
        """The Optuna storage every part's searcher loads (a journal file: no server, safe for
        the one driver that writes it, survives the driver being killed)."""
        return JournalStorage(JournalFileBackend(str(self.path / "optuna.journal")))

    def clear_stale_lock(self) -> None:
        """A driver killed while writing the journal leaves its lock behind, and Optuna would
        wait 30 s before breaking it. Call only where no other driver can run this search."""
        (self.path / "optuna.journal.lock").unlink(missing_ok=True)

    def load_study(self) -> optuna.Study:
        return optuna.load_study(study_name=STUDY_NAME, storage=self.study_storage())

    def add_part(self) -> str:
        """Name, record and return the next Tune experiment of this search."""
        part = f"part-{len(self.parts) + 1}"
        self.parts.append(part)
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
        return cls(path=path, **json.loads((path / INDEX).read_text()))

    @classmethod
    def latest(cls, storage: Path, space: str) -> SearchFolder:
        """The newest search of `space` under `storage`."""
        found = [cls.load(index.parent) for index in storage.glob(f"*/{INDEX}")]
        found = [f for f in found if f.space == space]
        if not found:
            raise ResumeError(f"no search of space {space!r} to resume under {storage}/ "
                              f"(pass the --storage-path the search used)")
        return max(found, key=lambda f: f.created)
