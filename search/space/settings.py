"""The search section of a space: how many trials, the sampler, resources, ASHA's settings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# `search.resources.cpu: auto`: each trial an even share of the machine (`trial_resources`)
AUTO: Literal["auto"] = "auto"


@dataclass(frozen=True)
class Resources:
    """`search.resources`, as the space gives them."""
    cpu: float | Literal["auto"] = AUTO
    gpu: float = 0.0


@dataclass(frozen=True)
class TrialResources:
    """What a trial asks of Ray: `Resources` with `cpu: auto` resolved."""
    cpu: float
    gpu: float

    def __str__(self) -> str:
        return f"{self.cpu:g} CPU and {self.gpu:g} GPU"


@dataclass(frozen=True)
class Asha:
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: float = 3.0

    def epochs_for(self, epochs: int) -> int:
        """Epochs a trial runs: its own setting, capped by `max_epochs`."""
        return min(epochs, self.max_epochs)

    def planned(self, config: Mapping[str, Any]) -> int:
        """Epochs the trial of Tune config `config` runs unless ASHA stops it (`max_epochs`
        where the config sets none)."""
        return self.epochs_for(config.get("epochs", self.max_epochs))

    def epochs_left(self, planned: int, epoch: int = 0) -> float:
        """Epochs a trial of `planned` epochs, at `epoch` and still running, can be expected
        to run yet, ASHA keeping one in `reduction_factor` of the trials at each rung it has
        to pass (rungs at `grace_period` times powers of the factor, as Ray's)."""
        bounds, rung = [], float(self.grace_period)
        while rung < planned:
            if rung > epoch:
                bounds.append(rung)
            rung *= self.reduction_factor
        left, chance, at = 0.0, 1.0, float(epoch)
        for bound in [*bounds, planned]:
            left, chance, at = left + chance * max(0.0, bound - at), \
                chance / self.reduction_factor, bound
        return left


@dataclass(frozen=True)
class SearchSettings:
    num_samples: int = 10
    sampler: str = "tpe"
    startup_trials: int | None = None  # TPE's random trials first; None: tpe_startup_trials()
    max_concurrent: int = 2
    max_failures: int = 2  # retries of a trial whose worker died, each from its last checkpoint
    # trials with a frozen backbone and no augmentation train on its output, computed once
    # (trainables/features.py); false: every epoch runs the whole model, as before
    feature_cache: bool = True
    # a running trial checkpoints at each new best val_accuracy and otherwise once this many
    # seconds have passed since its last (0: every epoch); a retry trains that much again
    checkpoint_every_s: float = 60.0
    resources: Resources = Resources()
    asha: Asha = Asha()

    def trial_resources(self, node_cpus: Sequence[float]) -> TrialResources:
        """What each trial asks of Ray, whose nodes have `node_cpus` CPUs: `cpu: auto` is an
        even share of all their CPUs among the `max_concurrent` trials, whole, at least one
        and at most the largest node's (a trial runs on one node); 2 trials on 8 cores get
        4 each, where the reports' `cpu: 1` left 6 idle."""
        cpu, gpu = self.resources.cpu, self.resources.gpu
        if cpu == AUTO:
            share = math.floor(sum(node_cpus) / self.max_concurrent)
            cpu = float(max(1, min(share, math.floor(max(node_cpus, default=1)))))
        return TrialResources(cpu, gpu)
