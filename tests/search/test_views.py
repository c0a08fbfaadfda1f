"""The progress line and Optuna's views, from hand-made progress and a real Optuna study."""

from __future__ import annotations

import pickle
import time

import optuna
from ray.tune.experiment import Trial

from search.objective import METRIC
from search.progress import Progress, ProgressCallback
from search.space import Asha
from search.study_views import LEGEND_MAX, param_importances, study_figures


def test_progress_line_counts_trials_and_estimates_the_rest() -> None:
    """ASHA's rung at 1 of 2 epochs keeps one trial in 2: a trial runs 1.5 epochs, as
    expected. a's first epoch took 20 s in its worker, so the part's first epochs began 10 s
    in (its result came at 30 s): 3 epochs in the 50 s since, 2 trials at a time, 16.7 s an
    epoch: the 6 trials left take 9 epochs, 2:30."""
    p = Progress(total=8, started=100.0, asha=Asha(max_epochs=2, grace_period=1,
                                                  reduction_factor=2))
    for t in ("a", "b"):
        p.start(t, planned=2, now=100.0)
    assert "0/8 trials done" in p.line(110.0) and "estimating time left" in p.line(110.0)
    p.result("a", 0.5, epoch=1, now=130.0, took=20.0)
    p.end("a", "stopped", now=130.0)
    p.result("b", 0.75, epoch=1, now=140.0, took=30.0)
    p.result("b", 0.6, epoch=2, now=160.0, took=20.0)
    p.end("b", "completed", now=160.0)
    line = p.line(160.0)
    assert line.startswith("[1:00] 2/8 trials done (1 completed, 1 stopped early, 0 failed)")
    assert "0 running" in line and "best val_accuracy 0.7500 (b)" in line
    assert "~2:30 left" in line
    for t in "cdefgh":
        p.end(t, "failed")
    assert p.line(3700.0).startswith("[1:00:00] 8/8 trials done") and p.line(0).endswith("done")


def test_the_estimate_counts_the_epochs_asha_lets_the_trials_run() -> None:
    """10 trials of 9 epochs, 2 at a time, ASHA's rungs at 1 and 3: a trial can be expected
    to run 1 + 2/3 + 6/9 epochs. The first to end, stopped at its first epoch, is not the mean
    trial, and the other, running on, has epochs that trials done do not count: 2 epochs in
    10 s, 8 trials waiting (18.7 epochs) and the running one's 4, 1:53. Trials done over
    time said 1:30."""
    p = Progress(total=10, started=0.0, asha=Asha(max_epochs=9, grace_period=1,
                                                 reduction_factor=3))
    for t in "ab":
        p.start(t, planned=9, now=0.0)
    p.result("a", 0.5, epoch=1, now=10.0)
    p.result("b", 0.6, epoch=1, now=10.0)
    p.end("a", "stopped", now=10.0)
    assert "~1:53 left" in p.line(10.0)


def test_the_estimate_counts_down_between_two_reports() -> None:
    """Measured at each report, the estimate goes down by the time since until the next:
    measured at `now`, the pace would slow between two, for no news."""
    p = Progress(total=8, started=0.0, asha=Asha(max_epochs=1))
    for t in "ab":
        p.start(t, planned=1, now=0.0)
    p.result("a", 0.5, epoch=1, now=50.0)
    p.end("a", "completed", now=50.0)  # 1 epoch in 50 s: 7 left, 5:50
    assert "~5:50 left" in p.line(50.0)
    assert "~5:20 left" in p.line(80.0)
    assert "~0:00 left" in p.line(900.0)  # late: not below nothing
    p.result("b", 0.5, epoch=1, now=900.0)
    p.end("b", "completed", now=900.0)  # 2 in 900 s: 6 left, 45:00
    assert "~45:00 left" in p.line(900.0)


def test_the_estimate_is_at_least_what_the_slowest_running_trial_needs() -> None:
    """The last trials of a search may run for minutes after the others: 8 epochs in 200 s
    say 92 s left for the 2 trials not done, but one of them took 200 s for the first of
    its 3 epochs."""
    p = Progress(total=9, started=0.0, asha=Asha(max_epochs=3))
    p.start("slow", planned=3, now=0.0)
    assert "estimating time left" in p.line(150.0)  # no epoch yet
    for t in "abcdefg":
        p.start(t, planned=3, now=10.0)
        p.result(t, 0.4, epoch=1, now=20.0)
        p.end(t, "stopped", now=20.0)
    p.result("slow", 0.5, epoch=1, now=200.0)
    assert "~6:40 left" in p.line(200.0)  # its 2 epochs left, 200 s each
    assert "~5:00 left" in p.line(300.0)  # 100 s into its second epoch
    p.start("resumed", planned=10, now=300.0)  # from its checkpoint at epoch 7
    p.result("resumed", 0.5, epoch=8, now=330.0)
    p.end("slow", "completed", now=330.0)
    # 30 s an epoch, and 1 + 1/3 epochs left, past ASHA's rung at 9
    assert "~0:40 left" in p.line(330.0)


def test_once_every_trial_has_started_the_running_ones_are_all_that_is_left() -> None:
    """1 of 2 trials done in 220 s: the pace says as much again, but the other, which has
    run 2 of its 3 epochs of 100 s, needs 100 s less what it spent on its third; before its
    first epoch nothing can tell."""
    p = Progress(total=2, started=0.0)
    p.start("short", planned=2, now=0.0)
    p.start("long", planned=3, now=20.0)
    p.end("short", "completed")
    assert "estimating time left" in p.line(60.0)  # not the pace of the trial done
    p.result("long", 0.5, epoch=1, now=120.0)
    p.result("long", 0.5, epoch=2, now=220.0)
    assert "~1:40 left" in p.line(220.0)
    assert "~0:40 left" in p.line(280.0)
    p.start("long", planned=3, now=300.0)  # restarted (more CPUs), from epoch 2
    assert "~1:40 left" in p.line(300.0)  # its pace before, until it reports again
    assert "~1:10 left" in p.line(330.0)
    p.result("long", 0.5, epoch=3, now=360.0)  # its third epoch in 60 s on more CPUs
    assert "~0:00 left" in p.line(360.0)


def test_a_resumed_part_counts_the_trials_it_restored_on_a_clock_of_its_own() -> None:
    """Tune unpickles a resumed part's callbacks as they were made, in the driver that was
    killed, an hour ago here: the line's clock started there (and at once said no trial had
    started for minutes, waiting for a node), and the trials that had ended went uncounted.
    Each ended trial counts as it ended: ASHA's stops by the scheduler's record, not by the
    epochs (Keras' early stopping ends a trial short of them too), and a trial the epoch
    budget cut short by its last result, which Tune did not mark `done`."""
    callback = ProgressCallback(6, set(), Asha(max_epochs=3), asks="1 CPU, 0 GPU")
    callback.progress.started -= 3600
    callback = pickle.loads(pickle.dumps(callback))
    trials = [Trial("__fake", config={"epochs": 3}, trial_id=trial_id, stub=True)
              for trial_id in ("full", "asha", "keras", "budget", "paused", "pending")]
    ends = (("TERMINATED", 3, True), ("TERMINATED", 1, True), ("TERMINATED", 2, True),
            ("TERMINATED", 1, False), ("PAUSED", 2, False), ("PENDING", 0, False))
    for trial, (status, epochs, done) in zip(trials, ends, strict=True):
        for epoch in range(1, epochs + 1):
            trial.update_last_result({METRIC: epoch / 10, "training_iteration": epoch,
                                      "done": done and epoch == epochs})
        trial.set_status(status)
    callback.stopped.add("asha")  # the restored searcher adds its saved stops
    callback.setup()
    callback.on_step_begin(0, trials)
    line = callback.progress.line(time.monotonic())
    assert line.startswith("[0:00] 4/6 trials done (2 completed, 1 stopped early, 1 cut short "
                           "by the epoch budget, 0 failed), 0 running; best val_accuracy "
                           "0.3000"), line


def test_a_resumed_budget_counts_the_epochs_spent_before_but_paces_its_own() -> None:
    p = Progress(total=1000, started=0.0, epoch_budget=75)
    p.restored("a", "stopped", 0.5, epochs=25)
    p.start("b", now=0.0)
    for epoch in range(1, 11):
        p.result("b", 0.5, epoch=epoch, now=epoch * 1.0)
    assert "~0:40 left" in p.line(10.0)  # 10 epochs in 10 s: 40 left of 75
    for epoch in range(11, 51):
        p.result("b", 0.5, epoch=epoch, now=epoch * 1.0)
    assert p.line(50.0).endswith("done")


def test_while_no_trial_can_start_the_line_says_what_they_wait_for() -> None:
    p = Progress(total=8, started=0.0, asks="1 CPU, 1 GPU")
    assert "estimating time left" in p.line(59.0)  # a cluster may take that to place one
    assert p.line(61.0).endswith("0 running; no val_accuracy yet; no trial has started yet: "
                                 "waiting for a node with 1 CPU, 1 GPU free "
                                 "(search.resources)")
    p.start("a")
    p.end("a", "failed")
    assert "waiting" not in p.line(120.0)


def test_the_start_of_a_part_is_not_paced() -> None:
    """Two trials start at once, their workers 3 s in starting (imports), then 2 s an epoch,
    the first 1 s more (the model traced): the first results come at 5 s, each 3 s after its
    trial began in its worker, the next at 7 s. Paced from the part's start, 4 epochs in 7 s
    said 1.75 s an epoch (the 12 epochs left, 21 s); from the first epochs' start, 1 s
    (12 s); and as the first results come, 2 epochs in the 3 s since their trials began
    (the 14 left, 21 s), not in 5 s (35 s)."""
    p = Progress(total=8, started=0.0, asha=Asha(max_epochs=2, grace_period=2))
    for t in ("a", "b"):
        p.start(t, planned=2, now=0.0)
    p.result("a", 0.5, epoch=1, now=5.0, took=3.0)
    p.result("b", 0.5, epoch=1, now=5.0, took=3.0)
    assert p.line(5.0).endswith("~0:21 left")
    p.result("a", 0.5, epoch=2, now=7.0, took=2.0)
    p.result("b", 0.5, epoch=2, now=7.0, took=2.0)
    p.end("a", "completed", now=7.0)
    p.end("b", "completed", now=7.0)
    assert p.line(7.0).endswith("~0:12 left")


def test_with_an_epoch_budget_the_estimate_is_by_epochs() -> None:
    """A budgeted search ends at its budget, not at its (large) number of trials."""
    p = Progress(total=1000, started=0.0, epoch_budget=75)
    p.start("a")
    assert "estimating time left" in p.line(0.2)
    for epoch in range(1, 26):
        p.result("a", 0.5, epoch=epoch, now=epoch * 0.4)
    p.end("a", "stopped", now=10.0)
    assert "~0:20 left" in p.line(10.0)  # 25 epochs in 10 s: 50 left take 20 s
    for _ in range(50):
        p.result("b", 0.5)
    assert p.line(30.0).endswith("done")


def _study(n_trials: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True)
        optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        for epoch in (1, 2):
            trial.report(lr * epoch, epoch)
        if trial.number % 3 == 2:
            raise optuna.TrialPruned()
        return lr + (optimizer == "adam")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n_trials)
    return study


def test_study_views_draw_what_the_trials_allow() -> None:
    study = _study(9)
    importances = param_importances(study)
    assert set(importances) == {"learning_rate", "optimizer"}
    assert set(study_figures(study)) == {
        "optuna_intermediate_values.png", "optuna_optimization_history.png",
        "optuna_slice.png", "optuna_param_importances.png"}
    # one trial: nothing to compare, so no importances; no trials: no views at all
    assert param_importances(_study(1)) == {}
    assert "optuna_param_importances.png" not in study_figures(_study(1))
    assert study_figures(optuna.create_study()) == {}


def test_a_curve_per_trial_is_named_in_the_legend_only_while_few() -> None:
    def named(n_trials: int) -> int:
        legend = study_figures(_study(n_trials))["optuna_intermediate_values.png"] \
            .axes[0].get_legend()
        return len(legend.get_texts()) if legend else 0

    assert named(LEGEND_MAX) == LEGEND_MAX
    assert named(LEGEND_MAX + 1) == 0  # the curves drawn, the names too many to read
