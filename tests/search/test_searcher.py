"""ASHA's stops reach Optuna as PRUNED, on real Ray Tune and Optuna with a curve trainable;
draws of models that cannot be built are drawn again."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from ray import cloudpickle, tune
from ray.tune.experiment import Trial

from search.objective import METRIC
from search.sampling import DefineByRun, cannot_build
from search.searcher import (
    RAY_TRIAL_ID,
    REDRAWS,
    UNBUILDABLE,
    PruningOptunaSearch,
    RecordingASHA,
    cut_trial_ids,
    end_open_trials,
    pruned_trial_ids,
    unbuildable_draws,
)
from search.space import Asha, load_space
from search.tpe import RanTrialsTPE, tpe_startup_trials

EPOCHS = 6
SPACES = Path(__file__).parents[2] / "spaces"
PRUNED, RUNNING = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING
# Ray workers cannot import a test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def curve(config: dict) -> None:
    """Ray's mock-trainable shape: tanh(step / width) * height, one report per epoch."""
    for step in range(1, EPOCHS + 1):
        tune.report({METRIC: math.tanh(step / config["width"]) * config["height"]})


def curve_space(trial: optuna.Trial) -> dict:
    trial.suggest_float("width", 1.0, 4.0)
    trial.suggest_float("height", 0.1, 1.0)
    return {"epochs": EPOCHS}


def test_trials_stopped_by_asha_are_pruned_in_the_study(ray_local, tmp_path: Path) -> None:
    scheduler = RecordingASHA(Asha(max_epochs=EPOCHS, grace_period=1, reduction_factor=2), 8)
    searcher = PruningOptunaSearch(scheduler, space=curve_space,
                                   sampler=optuna.samplers.TPESampler(seed=0))
    tuner = tune.Tuner(
        curve,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=12,
                                    max_concurrent_trials=2),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    grid = tuner.fit()
    assert not grid.errors
    study = searcher.study
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == 12
    assert len(pruned) == len(scheduler.stopped) > 0 and complete
    for trial in pruned:  # kept with the epochs it ran, not ranked as finished
        assert 0 < len(trial.intermediate_values) < EPOCHS
    for trial in complete:  # ran every epoch; ASHA's STOP at max_t is not a prune
        assert len(trial.intermediate_values) == EPOCHS
        assert trial.value == trial.intermediate_values[EPOCHS]


def test_asha_hands_tune_the_newest_pending_trial_else_the_first_paused() -> None:
    """Of the trials not ended (Tune's own list holds every trial): the newest pending, the
    one the searcher just drew, with no worker asked for yet, which takes an idle worker
    where Tune has one (the oldest pending may have a worker starting, which Tune stopped
    to give it the idle one); else the first paused."""
    class Queue:  # what a scheduler reads of Tune's controller: its trials in queue order
        def __init__(self) -> None:
            self.trials: list[Trial] = []

        def get_trials(self) -> list[Trial]:
            return self.trials

    asha, queue = RecordingASHA(Asha(max_epochs=9, grace_period=1, reduction_factor=3), 8), Queue()

    def add(trial: Trial) -> None:  # as Tune's `add_trial` and its requeue do
        queue.trials = [t for t in queue.trials if t is not trial] + [trial]
        asha.on_trial_add(queue, trial)

    def chosen() -> Trial | None:
        return asha.choose_trial_to_run(queue)

    ended = Trial("curve", trial_id="ended", stub=True)
    ended.status = Trial.TERMINATED  # a resumed search's
    trials = [Trial("curve", trial_id=f"t{i}", stub=True) for i in range(4)]
    for trial in [ended, *trials]:
        add(trial)
    assert chosen() is trials[3]
    trials[3].status = trials[2].status = Trial.RUNNING
    assert chosen() is trials[1]
    asha.on_trial_error(queue, trials[2])  # its worker died: Tune requeues it last
    trials[2].status = Trial.PENDING
    add(trials[2])
    assert chosen() is trials[2]
    trials[2].status = trials[1].status = Trial.RUNNING
    trials[0].status = Trial.PAUSED
    assert chosen() is trials[0]  # paused, no trial pending
    trials[0].status = Trial.RUNNING
    assert chosen() is None
    for trial in trials:
        trial.status = Trial.TERMINATED
        asha.on_trial_complete(queue, trial, {})
    assert chosen() is None  # all ended


def test_tpe_models_after_a_third_of_the_search_two_to_ten_trials() -> None:
    assert [tpe_startup_trials(n) for n in (1, 8, 12, 30, 200)] == [2, 2, 4, 10, 10]


def test_study_trials_left_running_are_ended_failed_if_no_ray_trial_ran_else_pruned() -> None:
    study = optuna.create_study()
    ran, orphan, done = study.ask(), study.ask(), study.ask()
    ran.set_user_attr(RAY_TRIAL_ID, "a")  # cut by the epoch budget: Tune told no searcher
    orphan.set_user_attr(RAY_TRIAL_ID, "b")  # asked, then the driver was killed
    done.set_user_attr(RAY_TRIAL_ID, "c")
    study.tell(done, 0.5)
    assert end_open_trials(study, {"a", "c"}) == {"a"}
    assert [t.state.name for t in study.trials] == ["PRUNED", "FAIL", "COMPLETE"]
    assert cut_trial_ids(study) == {"a"} and pruned_trial_ids(study) == set()  # not by ASHA


def test_epochs_a_resumed_trial_reports_again_are_not_told_to_optuna_again() -> None:
    """Resumed from its checkpoint at epoch 1, a trial that had reported epoch 2 reports it
    again: Optuna keeps the first value and is not asked again (it warned each time)."""
    searcher = PruningOptunaSearch(RecordingASHA(Asha(max_epochs=EPOCHS), 8), space=curve_space)
    searcher.suggest("a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch, value in ((1, 0.5), (2, 0.6), (2, 0.55), (3, 0.7)):
            searcher.on_trial_result("a", {METRIC: value, "training_iteration": epoch})
    [trial] = searcher.study.trials
    assert trial.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}


def test_a_restored_searcher_keeps_tunes_scheduler_and_adds_the_stops_it_saved(
        tmp_path: Path) -> None:
    """Tune restores a resumed part's searcher from its saved state, which holds a copy of
    the scheduler: the scheduler Tune runs with stays (the callbacks share its `stopped`),
    and learns the trials the copy had stopped."""
    saved = PruningOptunaSearch(RecordingASHA(Asha(max_epochs=EPOCHS), 8), space=curve_space)
    saved.suggest("a")
    saved._scheduler.stopped.add("a")
    saved.save(str(tmp_path / "searcher.pkl"))
    running = RecordingASHA(Asha(max_epochs=EPOCHS), 8)
    searcher = PruningOptunaSearch(running, space=curve_space)
    searcher.restore(str(tmp_path / "searcher.pkl"))
    assert searcher._scheduler is running and running.stopped == {"a"}


def test_a_trial_the_study_has_already_ended_is_left_as_it_is() -> None:
    """The driver was killed after telling Optuna a trial's end, before Tune's snapshot
    recorded it: resumed, the trial trains its last epochs again and reports them."""
    scheduler = RecordingASHA(Asha(max_epochs=EPOCHS, grace_period=1, reduction_factor=2), 8)
    searcher = PruningOptunaSearch(scheduler, space=curve_space)
    searcher.suggest("a")
    searcher.study.tell(searcher._ot_trials["a"], 0.9)  # what the killed driver told it
    searcher.on_trial_result("a", {METRIC: 0.5, "training_iteration": EPOCHS})
    searcher.on_trial_complete("a", {METRIC: 0.5, "training_iteration": EPOCHS})
    [trial] = searcher.study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.9


def test_a_draw_whose_model_cannot_be_built_is_drawn_again_and_failed_in_the_study() -> None:
    """cats_dogs draws 64 and 128-px images under up to 5 conv blocks of kernels up to 7x7: a
    third of its draws cannot be built. None is run: each is PRUNED in the study, saying why,
    and the trial gets a draw that can be built."""
    space = load_space(SPACES / "cats_dogs.yaml")

    def searcher(check: Callable[[dict[str, Any]], str | None] | None) -> PruningOptunaSearch:
        return PruningOptunaSearch(RecordingASHA(space.search.asha, 8), check,
                                   space=DefineByRun(space),
                                   sampler=optuna.samplers.RandomSampler(seed=0))
    unchecked = searcher(None)
    drawn = [unchecked.suggest(f"t{i}") for i in range(30)]
    assert sum(cannot_build(config) is not None for config in drawn) >= 5  # as shipped
    checked = searcher(cannot_build)
    configs = [checked.suggest(f"t{i}") for i in range(30)]
    assert all(config is not None and cannot_build(config) is None for config in configs)
    redrawn = [t for t in checked.study.trials if t.state == PRUNED]
    assert len(redrawn) >= 5
    for trial in redrawn:
        assert " is too small for " in trial.user_attrs[UNBUILDABLE]
        assert trial.constraints == {UNBUILDABLE: 1.0}  # infeasible, for TPE
        assert RAY_TRIAL_ID not in trial.user_attrs  # no Ray trial ran it
    running = [t for t in checked.study.trials if t.state == RUNNING]
    assert [t.user_attrs[RAY_TRIAL_ID] for t in running] == [f"t{i}" for i in range(30)]
    assert not any(t.constraints for t in running)


def test_after_redraws_in_a_row_the_last_draw_is_run_to_fail_in_its_trial() -> None:
    """A space whose draws almost never build must not hold Tune's loop: the trial then runs,
    and fails saying why."""
    scheduler = RecordingASHA(Asha(max_epochs=EPOCHS, grace_period=1, reduction_factor=2), 8)
    searcher = PruningOptunaSearch(scheduler, lambda config: "too small", space=curve_space)
    assert searcher.suggest("a") is not None
    assert [t.state for t in searcher.study.trials] == [PRUNED] * REDRAWS + [RUNNING]
    assert searcher.study.trials[-1].user_attrs[RAY_TRIAL_ID] == "a"


def test_tpe_starts_modelling_after_its_startup_count_of_trials_that_ran() -> None:
    """Draws redrawn because their model cannot be built do not count toward TPE's random
    start: the first four trials that run are the random sampler's draws, however many
    were redrawn among them (Optuna's TPE counted those, and modelled after two)."""
    def draws(sampler: optuna.samplers.BaseSampler) -> list[dict[str, Any]]:
        searcher = PruningOptunaSearch(
            RecordingASHA(Asha(max_epochs=EPOCHS, grace_period=1, reduction_factor=2), 8),
            lambda config: "too high" if config["height"] > 0.4 else None,
            space=curve_space, sampler=sampler)
        configs = []
        for i in range(4):
            configs.append(searcher.suggest(f"t{i}"))
            searcher.on_trial_complete(f"t{i}", {METRIC: configs[-1]["height"],
                                                 "training_iteration": EPOCHS})
        assert len(unbuildable_draws(searcher.study)) >= 2
        return configs

    assert draws(RanTrialsTPE(seed=0, n_startup_trials=4)) == draws(
        optuna.samplers.RandomSampler(seed=0))
    assert draws(optuna.samplers.TPESampler(seed=0, n_startup_trials=4)) != draws(
        optuna.samplers.RandomSampler(seed=0))
