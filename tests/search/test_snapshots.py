"""Tune's snapshot kept one step back: a real local Tune keeps whole copies while it runs, and a
snapshot cut short (as a kill during Tune's copy leaves it) is mended from the copy."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
from pyarrow.fs import LocalFileSystem
from ray import cloudpickle, tune
from ray.tune.search.optuna import OptunaSearch

from search.folder import ResumeError
from search.saved_state import unended
from search.snapshots import (
    DONE,
    KEPT,
    SnapshotKeeper,
    TrialResultLogger,
    keep,
    mend,
    snapshot_files,
    whole,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers run count


def count(config: dict) -> None:
    for epoch in range(1, 4):
        tune.report({"epoch": epoch, "x": config["x"]})


def cut(path: Path) -> None:
    """Half of the file, as a kill during Tune's copy leaves it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture
def experiment(ray_local, tmp_path: Path, monkeypatch) -> Path:
    """A finished Tune experiment of 3 trials sampled by Optuna, run with the keeper,
    snapshots every 0.2 s."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0.2")
    grid = tune.Tuner(count, param_space={"x": tune.uniform(0, 1)},
                      tune_config=tune.TuneConfig(
                          search_alg=OptunaSearch(metric="x", mode="max", seed=0),
                          num_samples=3),
                      run_config=tune.RunConfig(name="part-1", storage_path=str(tmp_path),
                                                verbose=0, callbacks=[SnapshotKeeper()])).fit()
    assert len(grid) == 3 and not grid.errors
    return tmp_path / "part-1"


def test_the_keeper_leaves_one_whole_copy_of_the_snapshot(experiment: Path) -> None:
    copies = list((experiment / KEPT).iterdir())
    assert len(copies) == 1 and (copies[0] / DONE).exists()
    names = sorted(p.name for p in snapshot_files(copies[0]))
    assert [n.split("-")[0] for n in names] == ["experiment_state", "search_gen_state",
                                                "searcher"]
    assert sorted(p.name for p in snapshot_files(experiment)) == names
    state = next(experiment.glob("experiment_state-*.json"))  # as the keeper has found it
    assert sorted(p.name for p in snapshot_files(experiment, state)) == names
    assert all(whole(p) for p in snapshot_files(copies[0]))


def test_the_saved_state_says_which_trials_a_resume_would_run(experiment: Path) -> None:
    """Ended, all; a trial saved RUNNING, it; a state cut short (Tune's save failed), None:
    the search takes it as stopped, for the resume to mend."""
    assert unended(str(experiment)) == set()
    state = next(experiment.glob("experiment_state-*.json"))
    saved = json.loads(state.read_text())
    trial = json.loads(saved["trial_data"][0][0])
    saved["trial_data"][0][0] = json.dumps({**trial, "status": "RUNNING"})
    state.write_text(json.dumps(saved))
    assert unended(str(experiment)) == {trial["trial_id"]}
    cut(state)
    assert unended(str(experiment)) is None


def test_a_cut_short_snapshot_is_mended_and_tune_restores_it(experiment: Path) -> None:
    assert mend(experiment) is None  # whole: nothing to do
    for path in snapshot_files(experiment):
        cut(path)
        assert not whole(path)
    with pytest.raises(RuntimeError, match="not been run"):  # Tune reads no state in it
        tune.Tuner.restore(str(experiment), count).get_results()
    assert "cut short" in mend(experiment)
    grid = tune.Tuner.restore(str(experiment), count).get_results()
    assert len(grid) == 3 and all(r.metrics["epoch"] == 3 for r in grid)


def test_a_newer_session_cut_short_is_removed_so_tune_reads_the_kept_one(
        experiment: Path) -> None:
    """A resumed driver killed during its first copy: its files, named by its own session,
    are the newest Tune would read."""
    newer = experiment / "experiment_state-2999-01-01_00-00-00.json"
    newer.write_text('{"trial_data": [')
    assert "cut short" in mend(experiment)
    assert not newer.exists()
    assert len(tune.Tuner.restore(str(experiment), count).get_results()) == 3


def test_cut_short_with_no_copy_kept_is_a_resume_error(tmp_path: Path) -> None:
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial')
    with pytest.raises(ResumeError, match="cut short .* no earlier copy"):
        mend(tmp_path)


def test_a_copy_is_whole_before_the_older_one_goes(tmp_path: Path) -> None:
    state = tmp_path / "experiment_state-s.json"
    searcher = tmp_path / "searcher-state-s.pkl"
    state.write_text("{}")
    searcher.write_bytes(pickle.dumps({"a": 1}))
    kept = tmp_path / KEPT
    keep([state, searcher], kept)
    state.write_text('{"b": 2}')
    keep([state, searcher], kept)
    assert [p.name for p in kept.iterdir()] == ["2"]
    assert (kept / "2" / state.name).read_text() == '{"b": 2}'
    assert sorted(p.name for p in (kept / "2").iterdir()) == sorted([DONE, state.name,
                                                                     searcher.name])


class _Trial:
    """What Tune's JSON logger reads of a trial: its staging and storage folders, its
    config, and that it has a checkpoint (it was started again)."""

    def __init__(self, staging: Path, storage: Path):
        self.local_path, self.config, self.checkpoint = str(staging), {"x": 1}, True
        self.storage = type("Storage", (), {"trial_fs_path": str(storage),
                                            "storage_filesystem": LocalFileSystem()})

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


def test_a_trial_started_again_keeps_the_results_written_before(tmp_path: Path) -> None:
    """Tune's JSON logger copied the storage folder's result.json, synced at most every 5
    minutes, over the one it writes when a trial started again: the epochs since were lost."""
    trial = _Trial(tmp_path / "staging", tmp_path / "storage")
    trial.init_local_path()
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "result.json").write_text("")  # the last sync: no epoch yet
    logger = TrialResultLogger()
    logger.log_trial_start(trial)
    logger.log_trial_result(1, trial, {"training_iteration": 1})
    logger.log_trial_start(trial)  # started again (more CPUs, or a retry)
    logger.log_trial_result(2, trial, {"training_iteration": 2})
    logger.log_trial_end(trial)
    lines = (tmp_path / "staging" / "result.json").read_text().splitlines()
    assert [json.loads(line)["training_iteration"] for line in lines] == [1, 2]
