"""Ray Tune's ASHA and OptunaSearch, joined so that Optuna sees ASHA's stops as prunes, and
Optuna's draws of models that cannot be built are drawn again instead of run.

As shipped, `OptunaSearch.on_trial_complete` tells Optuna that a trial ASHA stopped after
one epoch is COMPLETE with its epoch-1 accuracy as final value, which teaches TPE that
configurations that start fast are the best ones. Here ASHA records the trials it stops and
the searcher tells Optuna those are PRUNED (Optuna then keeps their per-epoch values as
intermediate values and does not rank them as finished).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import ray
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.experiment import Trial
from ray.tune.result import SHOULD_CHECKPOINT
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from search.console import say
from search.growth import grown_cpus
from search.objective import METRIC, MODE
from search.space import Asha

RAY_TRIAL_ID = "ray_trial_id"  # the Optuna trial's user attribute naming its Ray trial
UNBUILDABLE = "unbuildable"  # the Optuna trial's user attribute: why its draw was not run
CUT_SHORT = "cut_short"  # the Optuna trial's user attribute: the search ended before the trial
REDRAWS = 100  # draws again of one trial's config whose model cannot be built, at most


class RecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped before their planned epochs (`stopped`,
    trial ids). ASHA also says STOP to a trial that reaches `max_t`; that one finished.

    It picks the trial to run next from the trials not ended, not from all (Tune asks at
    every step of its loop, and the walk over the whole study was 4% of the driver's time at
    2,000 trials): the newest pending, else the first paused. Tune gives the trial it is
    handed an idle worker if it has one, and the newest pending trial is the one the
    searcher has just drawn, with no worker asked for yet. Handed the oldest, as ASHA's
    FIFO base does, Tune gave the idle worker to a trial whose own new worker was still
    starting and stopped that one: with trials shorter than a worker's start, a 500-trial
    search ran in 3 to 5 workers of the 8 it allowed and started 30 it stopped, in 87 s;
    now in its 8, none stopped, in 48 s (README, "What moved it").

    Once all `num_samples` trials of its part have started, it restarts a CPU trial with the
    CPUs the ended ones left idle on its node (`search.growth`): it says PAUSE at an epoch
    the trial checkpointed, and gives the paused trial its new resources before Tune starts
    it again from that checkpoint, as Ray's `ResourceChangingScheduler` does."""

    def __init__(self, asha: Asha, num_samples: int):
        super().__init__(metric=METRIC, mode=MODE, max_t=asha.max_epochs,
                         grace_period=asha.grace_period,
                         reduction_factor=asha.reduction_factor)
        self.asha = asha
        self.num_samples = num_samples
        self.stopped: set[str] = set()
        # trials not ended, by id, in the order queued (a retried trial goes last, as in
        # Tune's own list)
        self._queued: dict[str, Trial] = {}
        self._growing: dict[str, int] = {}  # trial id -> the CPUs it restarts with
        self._node_cpus: dict[str, float] = {}  # Ray node id -> its CPUs

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if trial.status != Trial.TERMINATED:  # a resumed search's ended trials run no more
            self._queued[trial.trial_id] = trial

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_error(tune_controller, trial)
        self._queued.pop(trial.trial_id, None)

    def on_trial_complete(self, tune_controller: Any, trial: Trial,
                          result: dict[str, Any]) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._queued.pop(trial.trial_id, None)
        # ended short of its planned epochs with no `done` result: Tune stopped it by a
        # decision it kept in the state a resumed search restored (ASHA's, made as the
        # search was stopped, which the restored ASHA does not know)
        if not result.get("done") and \
                result.get(self._time_attr, 0) < self.asha.planned(trial.config):
            self.stopped.add(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_remove(tune_controller, trial)
        self._queued.pop(trial.trial_id, None)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        for trial_id, cpus in list(self._growing.items()):
            trial = self._queued.get(trial_id)
            if trial is not None and trial.status == Trial.RUNNING:
                continue  # Tune has not paused it yet
            del self._growing[trial_id]
            if trial is not None and trial.status == Trial.PAUSED:  # else it ended meanwhile
                trial.update_resources(PlacementGroupFactory([{"CPU": cpus}]))
                say(f"trial {trial_id} goes on with {cpus} CPUs, which ended trials left idle")
        for trial in reversed(self._queued.values()):
            if trial.status == Trial.PENDING:
                return trial
        for trial in self._queued.values():
            if trial.status == Trial.PAUSED:
                return trial
        return None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        planned = self.asha.planned(trial.config)
        if decision == TrialScheduler.STOP and result[self._time_attr] < planned:
            self.stopped.add(trial.trial_id)
        if decision == TrialScheduler.CONTINUE and self._grows(tune_controller, trial, result,
                                                              planned):
            return TrialScheduler.PAUSE
        return decision

    def _grows(self, tune_controller: Any, trial: Any, result: dict[str, Any],
               planned: int) -> bool:
        """Whether `trial`, at the epoch of `result`, is restarted with more CPUs: every
        trial of the part has started, none waits, the epoch was checkpointed (the restart
        goes on from it), the trial holds no GPU, and `grown_cpus` says how many."""
        if (not result.get(SHOULD_CHECKPOINT) or self._growing
                or len(tune_controller.get_trials()) < self.num_samples
                or any(t.status in (Trial.PENDING, Trial.PAUSED) for t in self._queued.values())):
            return False
        held = trial.placement_group_factory.required_resources
        node = result.get("node_id")
        if held.get("GPU") or not node:
            return False
        # a trial that has not reported yet may be on this node
        on_node = 1 + sum(1 for t in self._queued.values() if t is not trial
                          and (t.last_result or {}).get("node_id", node) == node)
        cpus = grown_cpus(held.get("CPU", 1), self._cpus_of(node), on_node,
                          float(result.get("time_this_iter_s", 0)),
                          planned - int(result[self._time_attr]))
        if cpus is None:
            return False
        self._growing[trial.trial_id] = cpus
        return True

    def _cpus_of(self, node: str) -> float:
        if node not in self._node_cpus:
            self._node_cpus.update({n["NodeID"]: n["Resources"].get("CPU", 0.0)
                                    for n in ray.nodes() if n["Alive"]})
        return self._node_cpus.get(node, 0.0)


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial stopped by `scheduler` was PRUNED, and marks
    each Optuna trial with its Ray trial id (the study is the search's lasting record).

    A config that `cannot_build` gives a reason for (a conv stack too deep for its image
    size) is not run: that draw is told to Optuna as PRUNED with the reason as its
    `UNBUILDABLE` attribute and a constraint it breaks, and the trial's config is drawn
    again. Had it run, it would have failed in its first second, a trial spent. TPE ranks
    draws that break a constraint below every trial that ran, and learns to draw elsewhere
    (a FAILED draw it would leave out of its model, and draw again: tried, it drew the same
    3-block stack more than twenty times in a row). After `REDRAWS` such draws in a row the
    last is run, and fails saying why."""

    def __init__(self, scheduler: RecordingASHA,
                 cannot_build: Callable[[dict[str, Any]], str | None] | None = None,
                 **kwargs: Any):
        super().__init__(metric=METRIC, mode=MODE, **kwargs)
        self._scheduler = scheduler
        self._cannot_build = cannot_build
        self._last_step: dict[str, int] = {}  # trial id -> last epoch reported to Optuna

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        for _ in range(REDRAWS):
            why = config is not None and self._cannot_build and self._cannot_build(config)
            if not why:
                break
            assert self._ot_study is not None  # set up by Tune
            drawn = self._ot_trials.pop(trial_id)
            drawn.set_user_attr(UNBUILDABLE, why)
            drawn.set_constraint(UNBUILDABLE, 1.0)  # positive: the draw is infeasible
            self._ot_study.tell(drawn, state=optuna.trial.TrialState.PRUNED)
            config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID, trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        # the saved state holds a copy of the scheduler: keep the one Tune runs with, whose
        # `stopped` set the callbacks share, and add to it the trials the copy had stopped
        # (the progress line of a resumed part counts its trials that ended by it)
        scheduler = self._scheduler
        super().restore(checkpoint_path)
        scheduler.stopped |= self._scheduler.stopped
        self._scheduler = scheduler

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # a trial resumed from its checkpoint trains again, and reports again, the epochs
        # after it, which Optuna has (it warned at each one: "already reported")
        if trial_id in self._completed_trials or \
                result["training_iteration"] <= self._last_step.get(trial_id, 0):
            return
        with self._unless_finished(trial_id):
            super().on_trial_result(trial_id, result)
        self._last_step[trial_id] = result["training_iteration"]

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        assert self._ot_trials is not None and self._ot_study is not None  # set up by Tune
        with self._unless_finished(trial_id):
            ot_trial = self._ot_trials[trial_id]
            # Ray passes a result that ASHA said STOP to (a prune, or the end at max_t) to no
            # searcher: report it here so Optuna has every epoch.
            step = result.get("training_iteration") if result else None
            if step is not None and METRIC in result and step != self._last_step.get(trial_id):
                ot_trial.report(result[METRIC], step)
            if trial_id in self._scheduler.stopped:
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return
            super().on_trial_complete(trial_id, result, error)

    @contextlib.contextmanager
    def _unless_finished(self, trial_id: str) -> Iterator[None]:
        """Leave the study's record of a trial that has already ended as it is: a driver
        killed after telling Optuna a trial's end, before Tune's snapshot recorded it, has
        Tune resume the trial for its last epochs, and Optuna refuses their values."""
        try:
            yield
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study behind the search (read it; do not tell it trials)."""
        assert self._ot_study is not None  # set up by Tune
        return self._ot_study


def pruned_trial_ids(study: optuna.Study) -> set[str]:
    """The Ray trial ids of the trials ASHA stopped, in every part."""
    return {t.user_attrs[RAY_TRIAL_ID] for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.PRUNED and RAY_TRIAL_ID in t.user_attrs
            and CUT_SHORT not in t.user_attrs}


def cut_trial_ids(study: optuna.Study) -> set[str]:
    """The Ray trial ids of the trials the search ended before they did (`end_open_trials`)."""
    return {t.user_attrs[RAY_TRIAL_ID] for t in study.get_trials(deepcopy=False)
            if CUT_SHORT in t.user_attrs}


def unbuildable_draws(study: optuna.Study) -> list[str]:
    """Why each draw that the search did not run could not be built."""
    return [t.user_attrs[UNBUILDABLE] for t in study.get_trials(deepcopy=False)
            if UNBUILDABLE in t.user_attrs]


def end_open_trials(study: optuna.Study, ray_trial_ids: set[str]) -> set[str]:
    """End the study's trials left RUNNING once the search has ended: FAIL those no Ray
    trial ran (asked for just before the driver was killed, after Tune's last snapshot, so
    the resumed search never knew them); PRUNED those Ray ran, which Tune ended without
    telling the searcher, as a spent epoch budget ends the trials still running (they had
    stayed RUNNING in the study, its lasting record), and marks them `CUT_SHORT`: the
    search's tables count them apart from those ASHA stopped. Returns their Ray trial ids."""
    cut: set[str] = set()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        ray_trial_id = str(trial.user_attrs.get(RAY_TRIAL_ID))
        ran = ray_trial_id in ray_trial_ids
        if ran:
            # a finished trial's attributes cannot be set; `_trial_id` is the storage's key
            optuna.trial.Trial(study, trial._trial_id).set_user_attr(CUT_SHORT, True)
            cut.add(ray_trial_id)
        study.tell(trial.number, state=optuna.trial.TrialState.PRUNED if ran
                   else optuna.trial.TrialState.FAIL)
    return cut
