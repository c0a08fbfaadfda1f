"""Which checkpoints a search keeps: the one it registers, decided without training, and what
each trial holds while a real local Tune runs a stand-in trainable."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from ray import cloudpickle, tune
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.tune.execution.tune_controller import TuneController
from ray.tune.trainable.metadata import _TrainingRunMetadata

from search import saved_state
from search.cadence import Cadence
from search.checkpoints import (
    CHECKPOINT_PREFIX,
    beaten,
    best_checkpoint,
    best_score,
    kept,
    kept_checkpoint,
    prune,
    thin,
)
from search.pruner import CheckpointPruner
from search.saved_state import NewestStateFile, SavedViews, written_since
from trainables.checkpoint import MODEL_FILE, OPTIMIZER_FILE, STATE_FILE

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers run stand_in

# one trial's val_accuracy by epoch: its best comes early and is never beaten
ACCURACIES = (0.5, 0.9, 0.6, 0.7, 0.65, 0.8, 0.7, 0.75, 0.6, 0.85, 0.7, 0.8, 0.7, 0.6)


def test_best_checkpoint_is_the_first_with_the_highest_val_accuracy(tmp_path) -> None:
    first, second, third = (tune.Checkpoint(str(tmp_path / str(i))) for i in range(3))
    assert best_checkpoint([(first, {"val_accuracy": 0.5}), (second, {"val_accuracy": 0.9}),
                            (third, {"val_accuracy": 0.9})]) == second


def test_a_trial_checkpoints_at_each_new_best_and_otherwise_once_its_interval_passed() -> None:
    cadence = Cadence(every_s=60)
    # (val_accuracy, seconds) of each epoch -> whether it is checkpointed
    epochs = [(0.5, 1), (0.5, 2), (0.4, 30), (0.6, 31), (0.6, 32), (0.6, 90), (0.55, 91),
              (0.55, 150), (0.7, 151)]
    assert [cadence.due(score, now) for score, now in epochs] == \
        [True, False, False, True, False, False, True, False, True]
    every_epoch = Cadence(every_s=0)
    assert all(every_epoch.due(score, now) for score, now in epochs)


def test_no_checkpoint_without_the_metric(tmp_path) -> None:
    assert best_checkpoint([]) is None
    assert best_checkpoint([(tune.Checkpoint(str(tmp_path)), {"loss": 0.1})]) is None


def test_finished_trials_below_the_best_are_beaten_and_equals_all_stay(tmp_path) -> None:
    checkpoint = tune.Checkpoint(str(tmp_path))
    assert best_score([(checkpoint, {"val_accuracy": 0.5}), (checkpoint, {"val_accuracy": 0.7})]) \
        == 0.7
    scores = {"a": 0.9, "b": 0.95, "c": 0.95, "d": best_score([(checkpoint, {"loss": 0.1})])}
    assert beaten(scores) == {"a", "d"}
    assert beaten({"a": 0.9}) == set() and beaten({}) == set()


def test_a_checkpoint_goes_once_no_view_keeps_it_and_its_optimizer_once_none_resumes_it(
        tmp_path) -> None:
    """Tune in memory names checkpoint 3 latest and 1 best; Tune's saved state still names 2
    latest (a killed driver resumes from it); a finished trial resumes from none."""
    from pyarrow.fs import LocalFileSystem
    checkpoints = []
    for i, accuracy in enumerate((0.9, 0.5, 0.7, 0.6)):
        folder = tmp_path / f"{CHECKPOINT_PREFIX}{i}"
        folder.mkdir()
        (folder / OPTIMIZER_FILE).write_text("state")
        checkpoints.append((tune.Checkpoint(str(folder)), {"val_accuracy": accuracy}))
    unregistered = tmp_path / f"{CHECKPOINT_PREFIX}4"  # being written
    unregistered.mkdir()
    names = [f"{CHECKPOINT_PREFIX}{i}" for i in range(4)]
    in_memory = kept(False, checkpoints[3][0], checkpoints)
    saved = kept(False, checkpoints[2][0], checkpoints[:3])
    deleted = thin(LocalFileSystem(), str(tmp_path), names, [in_memory, saved])
    assert sorted(p.name for p in tmp_path.iterdir()) == [names[0], *names[2:], unregistered.name]
    assert not (tmp_path / names[0] / OPTIMIZER_FILE).exists()  # the best: only registered
    assert (tmp_path / names[2] / OPTIMIZER_FILE).exists()
    assert deleted == {f"{tmp_path}/{names[1]}", f"{tmp_path}/{names[0]}/{OPTIMIZER_FILE}"}
    asked: list[str] = []  # the storage is not asked again for what was deleted before

    class Storage(LocalFileSystem):
        def delete_dir(self, path: str) -> None:
            asked.append(path)
            super().delete_dir(path)

        def delete_file(self, path: str) -> None:
            asked.append(path)
            super().delete_file(path)

    ended = kept(True, checkpoints[3][0], checkpoints)
    assert thin(Storage(), str(tmp_path), names, [ended], deleted) == set(asked)
    assert sorted(asked) == [f"{tmp_path}/{name}" for name in names[2:]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [names[0], unregistered.name]


def test_saved_views_decode_only_the_trials_whose_saved_entry_changed(monkeypatch) -> None:
    def entry(trial_id: str, status: str, note: str = "") -> list[str]:  # as Tune saves a trial
        metadata = _TrainingRunMetadata()
        metadata.checkpoint_manager = _CheckpointManager(tune.CheckpointConfig())
        return [json.dumps({"trial_id": trial_id, "status": status, "note": note},
                           ensure_ascii=False), metadata.get_json_state()]

    def state(*entries: list[str]) -> bytes:
        return json.dumps({"trial_data": list(entries)}, ensure_ascii=False).encode()

    decoded: list[str] = []
    decode = saved_state._decode
    monkeypatch.setattr(saved_state, "_decode",
                        lambda trial, metadata: decoded.append(json.loads(trial)["trial_id"])
                        or decode(trial, metadata))
    read = SavedViews()
    earlier = state(entry("a", "RUNNING"), entry("b", "TERMINATED"))
    assert set(read(earlier)) == {"a", "b"}
    later = state(entry("a", "TERMINATED"), entry("b", "TERMINATED"), entry("c", "PENDING"))
    for cut in (len(later) // 2, len(later) - 1):  # a copy under way is not read as whole
        with pytest.raises(ValueError):
            read(later[:cut])
    del decoded[:]
    assert set(read(later)) == {"a", "b", "c"}
    # a's entry changed (and its length, moving b's): b is found unchanged where it now is
    assert decoded == ["a", "c"]
    # the storage path's copy of the earlier state lands, then the staging folder's is read
    # again: both are known from the last two reads
    assert read(earlier) == SavedViews()(earlier)
    assert read(later) == SavedViews()(later)
    assert decoded == ["a", "c"] + ["a", "b"] + ["a", "b", "c"]
    # an entry longer than the first window read, in characters of two bytes that the
    # window cuts (Tune writes ASCII; any UTF-8 reads the same): the window grows to hold it
    wide = state(entry("a", "TERMINATED"), entry("b", "TERMINATED"),
                 entry("c", "RUNNING", "\u00e9" * 50_001), entry("d", "PENDING"))
    del decoded[:]
    assert read(wide) == SavedViews()(wide)
    assert decoded == ["c", "d"] + ["a", "b", "c", "d"]


def saved_latest(trial_dir: Path, trial_id: str) -> frozenset[str]:
    """The latest checkpoint Tune's saved experiment state names for the trial, if any."""
    states = sorted(trial_dir.parent.glob("experiment_state-*.json"))
    try:
        views = SavedViews()(states[-1].read_bytes()) if states else {}
    except ValueError:  # being copied
        return frozenset()
    return views[trial_id].resumable if trial_id in views else frozenset()


def stand_in(config: dict) -> None:
    """Reports ACCURACIES (plus the config's `offset`) with a checkpoint shaped like a
    trial's, each once Tune's saved
    state names the one before: how far that state lags depends on the machine's load, and
    a checkpoint it names is kept until a later one is named."""
    context = tune.get_context()
    trial_dir, trial_id = Path(context.get_trial_dir()), context.get_trial_id()
    for epoch, accuracy in enumerate(ACCURACIES, 1):
        previous = frozenset([f"{CHECKPOINT_PREFIX}{epoch - 2:06d}"] if epoch > 1 else [])
        deadline = time.monotonic() + 30
        while previous and saved_latest(trial_dir, trial_id) != previous \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        with tempfile.TemporaryDirectory() as folder:
            for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
                (Path(folder) / name).write_bytes(b"0" * 10_000)
            tune.report({"val_accuracy": accuracy + config["offset"], "epoch": epoch},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def test_the_folder_is_listed_only_until_it_holds_the_running_tunes_own_state(
        tmp_path, monkeypatch) -> None:
    """A resumed search's folder holds the earlier driver's state file: newest until the
    running Tune writes its own, which is then the newest for as long as it runs, however many
    trial folders come after it."""
    folder = str(tmp_path)
    state = TuneController.CKPT_FILE_TMPL.format
    earlier = tmp_path / state("2026-11-24_10-00-00")
    earlier.write_text("{}")
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(earlier, ns=(an_hour_ago, an_hour_ago))
    newest = NewestStateFile(folder, None, written_since(time.time_ns()))
    listings, listdir = [], os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: listings.append(path) or listdir(path))
    (tmp_path / "a1b2c3d4").mkdir()  # a trial's folder
    assert newest.path() == str(earlier)
    assert newest.path() == str(earlier) and len(listings) == 2  # not its own: listed again
    (tmp_path / state("2026-11-24_11-00-00")).write_text("{}")
    assert newest.path() == f"{folder}/{state('2026-11-24_11-00-00')}"
    before = len(listings)
    for trial in ("e5f6a7b8", "c9d0e1f2"):
        (tmp_path / trial).mkdir()
        assert newest.path() == f"{folder}/{state('2026-11-24_11-00-00')}"
    assert len(listings) == before


def test_no_trial_ever_holds_more_than_resuming_and_registering_need(
        ray_local, tmp_path: Path, monkeypatch) -> None:
    """A watcher lists every trial's checkpoints while the search runs: a trial holds its
    best and its latest, the latest Tune's saved state names (one behind here), and the one
    being written, against 14 without the pruner; once it ends, its best alone, without the
    optimizer's state, and nothing once another trial beats it (here the first trial, its
    accuracies 0.05 below the two others')."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0.5")  # several saved states a trial
    most: dict[str, int] = defaultdict(int)
    seen: dict[str, set[str]] = defaultdict(set)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            counts: dict[str, int] = defaultdict(int)
            for folder in tmp_path.glob(f"pruned/*/{CHECKPOINT_PREFIX}*"):
                counts[folder.parent.name] += 1
                seen[folder.parent.name].add(folder.name)
            for trial, count in counts.items():
                most[trial] = max(most[trial], count)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        grid = tune.Tuner(
            stand_in, param_space={"offset": tune.grid_search([0.0, 0.05, 0.05])},
            run_config=tune.RunConfig(name="pruned", storage_path=str(tmp_path), verbose=0,
                                      callbacks=[CheckpointPruner()])).fit()
    finally:
        done.set()
        watcher.join()
    assert len(grid) == 3 and not grid.errors
    assert len(most) == 3
    assert all(len(names) >= len(ACCURACIES) - 2 for names in seen.values()), seen
    # best, latest, the one before it (until the driver reads the state that names the
    # latest), the one being written, and one being deleted as the watcher lists it
    assert max(most.values()) <= 5, most
    for pruned_as_the_part_ends in (False, True):  # by the pruner, then by `prune` too
        if pruned_as_the_part_ends:
            prune(grid)
        for result in grid:
            folders = sorted(Path(result.path).glob(f"{CHECKPOINT_PREFIX}*"))
            if result.config["offset"] == 0.0:
                assert folders == [] and kept_checkpoint(result) is None
                continue
            assert [f.name for f in folders] == [f"{CHECKPOINT_PREFIX}000001"]  # epoch 2's
            assert sorted(p.name for p in folders[0].iterdir()) == [MODEL_FILE, STATE_FILE]
            assert kept_checkpoint(result) is not None
