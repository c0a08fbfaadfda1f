"""One owner per search: a new search's folder of its own, a lock naming the driver that
holds it, no resume of a search whose space changed, and its study in Optuna's journal."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import write_space
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from search.folder import LOCK, STUDY_NAME, FolderError, ResumeError, SearchFolder
from search.run import main
from search.space import describe, load_space


def test_searches_started_in_the_same_second_get_folders_of_their_own(tmp_path: Path) -> None:
    folders = [SearchFolder.create(tmp_path, "s", {}) for _ in range(3)]
    assert len({f.path for f in folders}) == 3
    assert [f.path.name.count("-") for f in folders][1:] == [3, 3]  # s-date-time-2, -3


def test_a_storage_path_that_cannot_hold_folders_is_a_folder_error(tmp_path: Path) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("")
    for storage in (taken, taken / "below"):
        with pytest.raises(FolderError, match=f"^cannot make the search's folder under "
                                              f"--storage-path {storage}: "):
            SearchFolder.create(storage, "x", {})


def test_an_index_keeps_each_parts_trials_and_one_written_before_them_loads(
        tmp_path: Path) -> None:
    folder = SearchFolder.create(tmp_path, "s", {})
    folder.add_part(40)
    assert SearchFolder.load(folder.path).part_trials == {"part-1": 40}
    index = json.loads((folder.path / "search.json").read_text())
    del index["part_trials"]  # as searches before 2026-12-05 wrote it
    (folder.path / "search.json").write_text(json.dumps(index))
    assert SearchFolder.load(folder.path).parts == ["part-1"]


@pytest.mark.parametrize(("index", "why"), [
    ('{"space": "s", "cre', "Unterminated string"),  # cut short: a disk, a copy
    ('{"space": "s", "notes": "mine"}', "not a search's index"),  # edited, another tool's
    ("[1, 2]", "not a search's index"),
])
def test_an_index_that_cannot_be_read_is_a_resume_error_naming_it(tmp_path: Path, index: str,
                                                                  why: str) -> None:
    """A search.json under the storage path that cannot be read stops a resume with its
    name, not a traceback: it may be the newest search's, so it is not passed over."""
    SearchFolder.create(tmp_path, "s", {}).save()
    broken = SearchFolder.create(tmp_path, "s", {}).path
    (broken / "search.json").write_text(index)
    with pytest.raises(ResumeError, match=f"^cannot read {broken / 'search.json'}: {why}.*; "
                                          f"move {broken} out of {tmp_path}/ to resume "
                                          f"another search$"):
        SearchFolder.latest(tmp_path, "s")


def test_a_live_driver_holds_its_search_and_a_dead_one_lets_go(tmp_path: Path) -> None:
    folder = SearchFolder.create(tmp_path, "s", {})
    holder = json.loads((folder.path / LOCK).read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
    with pytest.raises(ResumeError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        SearchFolder(folder.path, "s", "", "").lock()
    folder.unlock()
    assert not (folder.path / LOCK).exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (folder.path / LOCK).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": int(dead.stdout), "since": 0}))
    folder.lock()  # the driver that held it is gone: taken over
    assert json.loads((folder.path / LOCK).read_text())["pid"] == os.getpid()
    folder.unlock()
    (folder.path / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": 0}))
    with pytest.raises(ResumeError, match="on elsewhere"):  # its life cannot be checked
        folder.lock()


def test_the_study_is_optunas_journal_and_a_line_being_written_is_not_read(
        tmp_path: Path) -> None:
    folder = SearchFolder.create(tmp_path, "s", {})
    study = optuna.create_study(study_name=STUDY_NAME, storage=folder.study_storage(),
                                direction="maximize")
    for x in (0.1, 0.7):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.report(x / 2, 1)
        study.tell(trial, x)
    journal = folder.path / "optuna.journal"
    assert not (folder.path / "optuna.journal.lock").exists()  # one writer: no lock
    with journal.open("ab") as f:
        f.write(b'{"op_code":')  # a line that a live driver is writing
    for storage in (folder.study_storage(),  # and Optuna's own reader, with its lock
                    JournalStorage(JournalFileBackend(str(journal)))):
        loaded = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        assert [t.value for t in loaded.trials] == [0.1, 0.7]
        assert loaded.trials[1].intermediate_values == {1: 0.35}
        assert loaded.trials[1].params == study.trials[1].params


def test_asks_pop_enqueued_trials_as_optunas_storage_does_without_scanning_for_none(
        tmp_path: Path, monkeypatch) -> None:
    scans = []
    replay = optuna.storages.journal._storage.JournalStorageReplayResult
    all_trials = replay.get_all_trials
    monkeypatch.setattr(replay, "get_all_trials", lambda self, study_id, states: scans.append(
        states) or all_trials(self, study_id, states))

    def asked(storage: JournalStorage) -> list[tuple[int, float]]:
        study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(0))
        study.enqueue_trial({"x": 0.5})  # the baselines, before the search
        numbers = []
        for step in range(6):
            if step == 3:
                study.enqueue_trial({"x": 0.25})  # one more, later
            trial = study.ask()
            numbers.append((trial.number, trial.suggest_float("x", 0, 1)))
            study.tell(trial, 0.0)
        return numbers

    ours = asked(SearchFolder.create(tmp_path, "s", {}).study_storage())
    waiting_scans = scans.count((TrialState.WAITING,))
    assert ours == asked(JournalStorage(JournalFileBackend(str(tmp_path / "optuna's"))))
    assert ours[0] == (0, 0.5) and ours[3] == (3, 0.25)  # each popped by the next ask
    # Optuna scans at each of the 6 asks; here only until a scan finds none waiting
    assert scans.count((TrialState.WAITING,)) - waiting_scans == 6 and waiting_scans == 4


def _begun(tmp_path: Path) -> tuple[Path, SearchFolder]:
    """A space, and a search of it as a driver begins one (its folder and index)."""
    space = write_space(tmp_path, num_samples=2, epochs=2)
    folder = SearchFolder.create(tmp_path / "ray", "faults", describe(load_space(space)))
    folder.parent_run_id, folder.tracking_uri = "0" * 32, "sqlite://"
    folder.save()
    return space, folder


def test_a_second_driver_cannot_resume_a_running_search(tmp_path: Path, capsys) -> None:
    space, _ = _begun(tmp_path)
    assert main([str(space), "--resume", "--storage-path", str(tmp_path / "ray"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err
    assert f"is being run by the driver with pid {os.getpid()}" in err and LOCK in err, err


def test_a_resume_whose_space_changed_is_refused_naming_the_change(tmp_path: Path,
                                                                   capsys) -> None:
    space, folder = _begun(tmp_path)
    folder.unlock()
    space.write_text(space.read_text().replace("batch_size: 8", "batch_size: 16"))
    assert main([str(space), "--resume", "--storage-path", str(tmp_path / "ray"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err
    assert "the space changed since the search" in err, err
    assert "params.batch_size.value: 8 -> 16" in err, err
    # more trials are what a resume may ask for
    assert main([str(space), "--resume", "--num-samples", "5", "--dry-run"]) == 0
