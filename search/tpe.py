"""TPE as a search runs it: how many random trials it starts with, counted in trials that
ran. Optuna's sampler, not Ray's: `search.tuning` hands it to the searcher."""

from __future__ import annotations

from typing import Any

import optuna

from search.searcher import UNBUILDABLE


class RanTrialsTPE(optuna.samplers.TPESampler):
    """TPE whose random start counts the trials that ran. A draw of a model that cannot be
    built is told PRUNED, with a constraint it breaks (`PruningOptunaSearch`): TPE learns
    from it where not to draw, but Optuna's TPE counts it toward its random start as it
    counts any pruned trial, so on cats_dogs, a third of whose random draws cannot be built,
    it modelled after about 7 trials that ran of the 10 it was told to start with. The
    random start draws what Optuna's own would (a `RandomSampler` of the same seed)."""

    def __init__(self, *, seed: int, n_startup_trials: int):
        super().__init__(seed=seed, n_startup_trials=n_startup_trials)
        self._startup = n_startup_trials
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._modelling = False  # for good, once enough trials ran

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        if not self._modelling:
            ended = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                             optuna.trial.TrialState.PRUNED))
            ran = sum(UNBUILDABLE not in t.user_attrs for t in ended)
            self._modelling = ran >= self._startup

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial
                                    ) -> dict[str, Any]:
        return super().infer_relative_search_space(study, trial) if self._modelling else {}

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                           param_name: str, param_distribution: Any) -> Any:
        if self._modelling:
            return super().sample_independent(study, trial, param_name, param_distribution)
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        super().reseed_rng()
        self._random.reseed_rng()


def tpe_startup_trials(num_samples: int) -> int:
    """Random trials before TPE starts modelling: a third of the search, 2 to 10. Optuna's
    default of 10 makes any search of 10 trials or fewer a random search."""
    return max(2, min(10, num_samples // 3))
