"""Faults a long search meets, with real processes killed by their pid: a trial's worker dies,
the driver dies, a trial runs out of memory, the tracking server is not there."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import (
    HUGE,
    HUGE_SPACE,
    free_port,
    running_mlflow_server,
    start_mlflow_server,
    stop_mlflow_server,
    trial_results,
    write_space,
)
from mlflow.tracking import MlflowClient

from search.console import LOG_FILE
from search.folder import SearchFolder
from search.predict import main as predict
from search.report import main as report
from search.run import main

SNAPSHOT_S = 1.0


@pytest.fixture(autouse=True)
def frequent_snapshots(monkeypatch) -> None:
    """Tune copies its state and each trial's result.json to the storage path every 10 s or
    more; these tests watch result.json for the moment to kill, so they ask for 1 s."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_S))


def trial_runs(uri: str, experiment: str) -> tuple[list, list]:
    """The experiment's parent runs and child runs."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return ([r for r in runs if r.data.tags.get("kind") == "search"],
            [r for r in runs if r.data.tags.get("kind") == "trial"])


def steps(uri: str, run_id: str) -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, "val_accuracy")]


def test_tracking_server_down_at_start_is_exit_2_before_anything(tmp_path: Path, capsys):
    space = write_space(tmp_path, num_samples=1, epochs=1)
    code = main([str(space), "--tracking-uri", f"http://127.0.0.1:{free_port()}",
                 "--storage-path", str(tmp_path / "ray")])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not answer" in err and "Traceback" not in err
    assert not (tmp_path / "ray").exists()


def test_report_and_predict_with_the_tracking_server_down_are_exit_2_at_once(capsys):
    """MLflow's client retried a server that does not answer for minutes, saying nothing."""
    uri = f"http://127.0.0.1:{free_port()}"
    for command, args in ((report, ["digits"]), (predict, ["models:/digits/1", "x.png"])):
        assert command([*args, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err.strip()
        assert "does not answer" in err and len(err.splitlines()) == 1, err


def test_nothing_to_resume_is_exit_2(tmp_path: Path, capsys):
    space = write_space(tmp_path, num_samples=1, epochs=1)
    assert main([str(space), "--resume", "--storage-path", str(tmp_path / "ray"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    assert "no search of space 'faults' to resume" in capsys.readouterr().err


def test_dead_worker_is_retried_from_its_checkpoint_and_oom_fails_alone(
        ray_local, tmp_path: Path, monkeypatch, capsys):
    """One trial's worker is killed mid-training; another trial's model cannot be allocated."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "ray"
    space = write_space(tmp_path, num_samples=2, epochs=40, **HUGE_SPACE,
                        baselines=f"baselines:\n  {HUGE}\n  small: {{image_size: 12, "
                                  "conv_filters: [8], dense_units: [8]}")
    killed: list[str] = []

    def kill_a_worker_mid_trial() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            for trial_id, rows in trial_results(storage).items():
                if 2 <= rows[-1]["epoch"] < 30:  # wide: storage's result.json lags by 1 s
                    os.kill(rows[-1]["pid"], signal.SIGKILL)
                    killed.append(trial_id)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_worker_mid_trial, daemon=True)
    killer.start()
    code = main([str(space), "--tracking-uri", uri, "--storage-path", str(storage)])
    killer.join(timeout=1)
    assert code == 0, capsys.readouterr()
    assert killed, "no trial was seen mid-training"
    trial_id = killed[0]

    # the retry went on from the checkpoint: all 40 epochs were trained, the first once. Tune
    # takes a report's metrics and then, in a second call to the worker, its checkpoint: a
    # worker killed between the two leaves that epoch logged but its checkpoint unknown to
    # Tune, and the retry trains that one epoch again
    epochs = [row["epoch"] for row in trial_results(storage)[trial_id]]
    assert sorted(set(epochs)) == list(range(1, 41)) and len(epochs) <= 41, epochs

    parents, children = trial_runs(uri, "faults")
    assert len(parents) == 1 and len(children) == 2  # the retry continued its run
    by_trial = {r.data.tags["trial_id"]: r for r in children}
    retried = by_trial[trial_id]
    assert retried.data.tags["restarts"] == "1" and retried.info.status == "FINISHED"
    logged = steps(uri, retried.info.run_id)
    assert sorted(set(logged)) == list(range(1, 41)) and len(logged) <= 41, logged
    assert "died" in retried.data.tags["last_failure"]

    oom = next(r for r in children if r.data.params["dense_units_0"] == "65536")
    assert oom.info.status == "FAILED"
    # retried (max_failures 2) but not rerun: the retries failed at once, naming the error
    assert "not retried, as a retry cannot fix it: out of memory" in oom.data.tags["error"], \
        oom.data.tags["error"]
    table = pd.read_parquet(next(storage.glob("*/results.parquet")))
    assert sorted(table["status"]) == ["completed", "failed"]


def test_killed_driver_resumes_then_the_finished_search_extends(ray_local, tmp_path: Path,
                                                                monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "ray"
    # 30 epochs (2 to 4 s a trial): at 10 a whole search took 8 s on a fast machine, and
    # result.json on the storage path (1 s behind) never showed one trial finished and
    # another midway before it ended
    epochs = 30
    space = write_space(tmp_path, num_samples=4, epochs=epochs)
    args = [str(space), "--tracking-uri", uri, "--storage-path", str(storage)]
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "search.run", *args], stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # kill the driver once one trial has finished and another is part-way
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            now = trial_results(storage)
            finished = {t for t, rows in now.items() if rows[-1]["epoch"] == epochs}
            midway = {t for t, rows in now.items() if 2 <= rows[-1]["epoch"] < epochs}
            if finished and midway:
                # not while Tune copies its snapshot (a few ms): the kept copy is a step
                # behind, and the epochs the assertions below count would move
                time.sleep(SNAPSHOT_S / 4)
                os.kill(driver.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        driver.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever that driver started
            os.killpg(driver.pid, signal.SIGKILL)
    assert finished and midway, log.read_text()[-3000:]
    before = trial_results(storage)
    # a kill while Tune copies its snapshot over the last one leaves part of it
    for path in storage.glob("*/part-1/*-state-*"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    assert main([*args, "--resume"]) == 0, capsys.readouterr()
    assert "was cut short" in capsys.readouterr().out  # and the kept copy was read
    folder = SearchFolder.load(next(storage.glob("*/search.json")).parent)
    after = {t: rows for t, rows in trial_results(storage).items()
             if t in set(pd.read_parquet(folder.results_path)["trial_id"])}
    assert len(after) == 4, sorted(trial_results(storage))
    # Tune resumes each trial as its last snapshot left it, from the latest checkpoint
    # the snapshot names: the epochs reported after the snapshot are trained again, but a
    # trial seen past its first epoch does not start over
    for trial_id in finished | midway:
        trained = [row["epoch"] for row in after[trial_id]]
        assert after[trial_id][0] == before[trial_id][0] and trained.count(1) == 1
        assert trained[-1] == epochs and set(trained) == set(range(1, epochs + 1))
    parents, children = trial_runs(uri, "faults")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = {r.data.tags["trial_id"]: r for r in children}
    assert set(after) <= set(runs)
    assert all(runs[t].info.status == "FINISHED" for t in after)
    for trial_id in after:  # every epoch in the trial's one run
        logged = steps(uri, runs[trial_id].info.run_id)
        assert sorted(set(logged)) == list(range(1, epochs + 1))
        if trial_id in finished | midway:
            assert logged.count(1) == 1
    # a trial the driver started after Tune's last snapshot is not in it: resume runs
    # another in its place, and the lost one's run ends KILLED
    assert all(r.info.status == "KILLED" for t, r in runs.items() if t not in after)
    study = folder.load_study()
    # one Optuna trial per Ray trial, all complete; a trial asked for just before the kill,
    # which no Ray trial ran, is marked failed, not left running
    ran = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["ray_trial_id"] for t in ran) == sorted(after)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials if t not in ran)

    # the finished search runs 2 more trials; the sampler sees all 6 in one study
    assert main([*args, "--resume", "--num-samples", "6"]) == 0, capsys.readouterr()
    parents, children = trial_runs(uri, "faults")
    children = [r for r in children if r.info.status != "KILLED"]
    assert len(parents) == 1 and len(children) == 6
    study = folder.load_study()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 and (folder.path / "part-2").is_dir()
    assert {t.user_attrs["ray_trial_id"] for t in complete} == \
        {r.data.tags["trial_id"] for r in children}
    assert len(pd.read_parquet(folder.results_path)) == 6


def test_tracking_server_lost_mid_search_stops_cleanly_and_resume_writes_the_rest(
        ray_local, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store, storage, log = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray", \
        tmp_path / "mlflow.log"
    space = write_space(tmp_path, num_samples=3, epochs=6)
    server, url = start_mlflow_server(store, tmp_path, log)
    # the driver gives up on the server at once (by default MLflow retries for ~4 minutes,
    # which rides out a short outage with nothing lost)
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    try:
        driver = subprocess.Popen(
            [sys.executable, "-m", "search.run", str(space), "--tracking-uri", url,
             "--storage-path", str(storage)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 300
        while not trial_results(storage) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.01)
    finally:
        stop_mlflow_server(server)
    out = driver.communicate(timeout=300)[0]
    assert driver.returncode == 1, out[-3000:]
    assert "--resume" in out and "Traceback" not in out, out[-3000:]

    server, url = start_mlflow_server(store, tmp_path, log)
    try:
        assert main([str(space), "--tracking-uri", url, "--storage-path", str(storage),
                     "--resume"]) == 0, capsys.readouterr()
        parents, children = trial_runs(url, "faults")
        epochs = {t: [row["epoch"] for row in rows] for t, rows in trial_results(storage).items()}
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == 3 and len(epochs) == 3
        for run in children:
            assert run.info.status == "FINISHED"
            # as after a killed driver, a trial goes on from the checkpoint Tune's last saved
            # state names: an epoch reported after it is trained, and logged, again
            for seen in (steps(url, run.info.run_id), epochs[run.data.tags["trial_id"]]):
                assert seen == sorted(seen) and sorted(set(seen)) == list(range(1, 7))
    finally:
        stop_mlflow_server(server)


def test_a_search_whose_every_trial_failed_exits_1_naming_the_failure(
        ray_local, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = write_space(tmp_path, num_samples=2, epochs=2)
    text = space.read_text()
    space.write_text(text.replace(  # every loss diverges at once; no retries
        "learning_rate: {type: loguniform, low: 0.001, high: 0.03}", "learning_rate: 1.0e+30"
    ).replace("  resources: {cpu: 1}", "  resources: {cpu: 1}\n  max_failures: 0"))
    assert space.read_text() != text
    assert main([str(space), "--tracking-uri", uri, "--storage-path",
                 str(tmp_path / "ray")]) == 1
    err = capsys.readouterr().err
    assert "every trial failed" in err and "(2 of 2 trials)" in err and "not finite" in err, err
    parents, children = trial_runs(uri, "faults")
    assert len(parents) == 1 and parents[0].info.status == "FAILED" and len(children) == 2
    assert not MlflowClient(uri).search_registered_models()


def test_sigterm_stops_like_ctrl_c_and_credentials_are_never_written(
        ray_local, tmp_path: Path, monkeypatch, capsys):
    """A scheduler's stop (SIGTERM) saves Tune's state and ends the runs as KILLED; resume
    finishes. The tracking URI's password is in no output and no file of the search."""
    monkeypatch.chdir(tmp_path)
    store, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray"
    space = write_space(tmp_path, num_samples=2, epochs=100)  # still running when stopped
    with running_mlflow_server(store, tmp_path, tmp_path / "mlflow.log") as url:
        secret_url = url.replace("http://", "http://alice:s3cret-pw@")
        args = [str(space), "--tracking-uri", secret_url, "--storage-path", str(storage)]
        driver = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None and not any(
                rows[-1]["epoch"] >= 2 for rows in trial_results(storage).values()):
            time.sleep(0.05)
        driver.send_signal(signal.SIGTERM)
        out = driver.communicate(timeout=120)[0]
        assert driver.returncode == 130, out[-3000:]
        assert "--resume" in out and "Traceback" not in out, out[-3000:]
        parents, children = trial_runs(url, "faults")
        assert [p.info.status for p in parents] == ["KILLED"]
        assert "--resume" in parents[0].data.tags["stopped"]
        assert children and all(c.info.status != "RUNNING" for c in children)
        assert not (storage / next(storage.iterdir()).name / "driver.lock").exists()
        # MLflow's client did not read each ended run back to print its address
        assert not any("View run" in log.read_text() for log in storage.rglob(LOG_FILE))

        assert main([*args, "--resume"]) == 0, capsys.readouterr()
        out += capsys.readouterr().out
        parents, children = trial_runs(url, "faults")
        assert [p.info.status for p in parents] == ["FINISHED"] and len(children) == 2
    assert "s3cret-pw" not in out
    for path in storage.rglob("*"):  # the password is in no file Ray, Optuna or we wrote
        assert not path.is_file() or b"s3cret-pw" not in path.read_bytes(), path


def test_a_resume_after_a_kill_during_registration_registers_no_second_version(
        ray_local, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = write_space(tmp_path, num_samples=2, epochs=2)
    args = [str(space), "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")]
    assert main(args) == 0, capsys.readouterr()
    client = MlflowClient(uri)
    parent = trial_runs(uri, "faults")[0][0].info.run_id
    # what a driver killed between registering the model and recording it on the parent
    # run leaves: a version, and a parent that does not name it
    for tag in ("registered_model", "best_trial_id"):
        client.delete_tag(parent, tag)
    assert main([*args, "--resume"]) == 0, capsys.readouterr()
    versions = client.search_model_versions("name='faults'")
    assert [int(v.version) for v in versions] == [1]
    assert client.get_run(parent).data.tags["registered_model"] == "models:/faults/1"
    assert client.get_run(versions[0].run_id).info.status == "FINISHED"
