"""What a finished search's trials did, read back from Ray's trial folders and the MLflow
child runs: per-epoch events (for curves), where core time went, how busy the trial slots
were, and each worker process's peak memory trial after trial."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class SearchTrials:
    epochs: pd.DataFrame  # one row per reported epoch: trial_id, timestamp, metrics, timings
    lifetimes: pd.DataFrame  # one row per trial: trial_id, start, end (driver clock, seconds)


def epoch_rows(results_path: str) -> pd.DataFrame:
    """One row per epoch any trial reported (Tune's result.json in each trial's folder), its
    times as the seconds Tune and the trial wrote (pandas would read `started_at` and
    `timestamp` as dates by their names)."""
    frames = [pd.read_json(p, lines=True, convert_dates=False)
              for p in Path(results_path).parent.glob("part-*/*/result.json") if p.stat().st_size]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_trials(results_path: str, tracking_uri: str, parent_run_id: str) -> SearchTrials:
    epochs = epoch_rows(results_path)
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent_run_id}'")
    lifetimes = pd.DataFrame([{"trial_id": r.info.run_name.rsplit("_", 1)[-1],
                               "start": r.info.start_time / 1000, "end": r.info.end_time / 1000}
                              for r in children if r.info.end_time])
    return SearchTrials(epochs, lifetimes)


def curve(epochs: pd.DataFrame, metric: str = "val_accuracy") -> pd.DataFrame:
    """Best `metric` so far against epochs trained so far, over all trials, in the order the
    epochs finished."""
    ordered = epochs.sort_values(["timestamp", "time_total_s"]).reset_index(drop=True)
    return pd.DataFrame({"epochs": range(1, len(ordered) + 1),
                         "best": ordered[metric].cummax()})


def core_time(trials: SearchTrials, wall_s: float, cpus: float,
              cpus_per_trial: float) -> dict[str, float]:
    """Where the search's core-seconds (wall x CPUs) went, in seconds. A trial's time in Tune
    (`time_total_s`) begins where its `started_at` does, before a worker's first trial imports
    the Keras trial (`search.worker`): that import is in the trial, between steps."""
    e, life = trials.epochs, trials.lifetimes.set_index("trial_id")
    per_trial = e.groupby("trial_id").agg(step=("step_s", "sum"), trace=("trace_s", "sum"),
                                          ckpt=("checkpoint_s", "sum"),
                                          ran=("time_total_s", "max"),
                                          started_at=("started_at", "first"))
    per_trial = per_trial.join(life, how="inner")
    c = cpus_per_trial
    parts = {
        "training and evaluation steps": per_trial["step"].sum() * c,
        "graph tracing (each trial's first training and validation step)":
            per_trial["trace"].sum() * c,
        "checkpoints (saving the model)": per_trial["ckpt"].sum() * c,
        "in the trial, between steps (data, model build, tf.data, Keras, its import)":
            (per_trial["ran"] - per_trial["step"] - per_trial["trace"]
             - per_trial["ckpt"]).sum() * c,
        "trial start (Ray handing it to its worker)":
            (per_trial["started_at"] - per_trial["start"]).clip(lower=0).sum() * c,
        "trial end (after its last epoch)":
            (per_trial["end"] - per_trial["started_at"] - per_trial["ran"]).clip(lower=0).sum()
            * c,
    }
    parts["outside trials (Ray start, data prep, idle slots, MLflow, evaluation)"] = \
        wall_s * cpus - sum(parts.values())
    return parts


def slot_busy(trials: SearchTrials, slots: int) -> float:
    """Share of the trial slots' time (first trial start to last trial end) spent in trials."""
    life = trials.lifetimes
    span = life["end"].max() - life["start"].min()
    return float((life["end"] - life["start"]).sum() / (slots * span)) if span > 0 else 0.0


def peak_rss_by_worker(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per worker process (pid), each trial's peak RSS in MB, in the order the trials ran."""
    last = epochs.sort_values("timestamp").groupby("trial_id").last().reset_index()
    return last.sort_values(["pid", "timestamp"])[["pid", "trial_id", "peak_rss_mb"]]
