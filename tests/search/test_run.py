"""The CLI: bad input exits 2 with one message; dry runs need no data."""

from __future__ import annotations

import errno
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import HUGE, HUGE_SPACE, free_port, write_space

from search.dry_run import bfloat16_note
from search.prepare import prepare_data
from search.run import main
from search.space import Fixed, load_space
from trainables.data import DataError

SPACES = Path(__file__).parents[2] / "spaces"


def test_broken_space_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {root: d}\nmodel: {dense_dropout: -1}\n")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: model.dense_dropout: must be >= 0.0, got -1.0"


def test_missing_data_exits_2_and_leaves_nothing_behind(tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    import ray

    monkeypatch.chdir(tmp_path)
    ray_was_up = ray.is_initialized()  # another test's; else the command's own is stopped
    assert main([str(SPACES / "cats_dogs.yaml"), "--storage-path", "r"]) == 2
    assert "data folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "mlflow.db").exists()
    assert ray.is_initialized() == ray_was_up


def test_a_folder_it_cannot_write_exits_2_with_one_line(tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    """The digits written, or the images decoded into the cache, where no folder can be
    made (below a file): one line that says where, and what to change."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    blocked = tmp_path / "file" / "digits"
    assert main([str(SPACES / "digits.yaml"), "--data-root", str(blocked),
                 "--storage-path", "r"]) == 2
    # the last line: before it, Ray's start in this process (as a command, in search.log)
    line = capsys.readouterr().err.splitlines()[-1]  # the OS's reason between
    assert line.startswith(f"error: cannot write the digits under {blocked}: ")
    assert line.endswith("; pass --data-root a folder you can write to")
    space, cache = tmp_path / "digits.yaml", tmp_path / "file" / "cache"
    space.write_text((SPACES / "digits.yaml").read_text().replace(
        "  generate: digits\n", f"  generate: digits\n  cache_dir: {cache}\n"))
    assert main([str(space), "--data-root", str(tmp_path / "digits"), "--storage-path", "r"]) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"error: cannot decode the train images into the cache: {cache}: ")
    assert line.endswith("; set data.cache_dir in the space, or KERAS_SEARCH_CACHE, to a folder "
                         "you can write to")
    assert not (tmp_path / "r").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_experiment_whose_artifacts_cannot_be_written_exits_2_with_one_line(
        tiny_space_file, tmp_path: Path, capsys, monkeypatch) -> None:
    """The space's experiment keeps its artifacts where nothing can be written (for a user:
    a colleague's folder on a shared store; here, below a file): the first artifact of the
    parent run failed with MLflow's traceback, and the run stayed RUNNING. One line; no run,
    no folder left."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = MlflowClient(uri).create_experiment(
        "tiny", artifact_location=str(tmp_path / "file" / "artifacts"))
    assert main([str(tiny_space_file()), "--tracking-uri", uri, "--storage-path", "r"]) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line == (f"error: MLflow cannot record the search in experiment 'tiny' at {uri}: "
                    f"[Errno 20] Not a directory: '{tmp_path / 'file' / 'artifacts'}'")
    assert not MlflowClient(uri).search_runs([experiment])  # deleted runs are not listed
    assert not (tmp_path / "r").exists()


def test_a_storage_path_that_is_a_uri_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    """`--storage-path s3://bucket/x` made a local folder `./s3:/bucket/x` and said nothing."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main([str(SPACES / "digits.yaml"), "--storage-path", "s3://bucket/x"])
    assert stop.value.code == 2
    assert "--storage-path: s3://bucket/x is a URI; " in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("storage", ["taken", "taken/below"])
def test_a_storage_path_at_or_below_a_file_is_refused_before_anything_is_made(
        tmp_path: Path, capsys, monkeypatch, storage: str) -> None:
    """It said "File exists" once the search's folder was made, mlflow.db already written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("")
    with pytest.raises(SystemExit) as stop:
        main([str(SPACES / "digits.yaml"), "--storage-path", storage])
    assert stop.value.code == 2
    assert (f"--storage-path: {tmp_path / 'taken'} is a file, not a folder"
            in capsys.readouterr().err)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_a_storage_path_the_system_cannot_look_at_is_one_line(tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    """A name too long (or a folder above it that may not be looked into) was a traceback."""
    monkeypatch.chdir(tmp_path)
    storage = "a" * 300 + "/x"
    with pytest.raises(SystemExit) as stop:
        main([str(SPACES / "digits.yaml"), "--storage-path", storage])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"--storage-path: {storage}: {os.strerror(errno.ENAMETOOLONG)}" in err
    assert not list(tmp_path.iterdir())


def test_a_full_disk_under_the_cache_is_one_line_and_leaves_no_part(tmp_path: Path) -> None:
    """Decoding into a cache on a disk that fills (files capped at 64 KB, so the write of
    the train split fails as a full disk's would, in the OS's words): one line that names
    the cache and what to change, and no part of an array left there. (numpy's `np.save`,
    which wrote the whole array at the end until 2026-12-05, came up short with no reason
    of the OS's.)"""
    space, cache = tmp_path / "digits.yaml", tmp_path / "cache"
    space.write_text((SPACES / "digits.yaml").read_text().replace(
        "  root: data/digits\n", f"  root: {tmp_path / 'digits'}\n  cache_dir: {cache}\n"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a short write, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
    try:
        with pytest.raises(DataError) as error:
            prepare_data(load_space(space))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)
    assert str(error.value).startswith(f"cannot decode the train images into the cache: "
                                       f"{cache}: ")
    assert str(error.value).endswith(f": {os.strerror(errno.EFBIG)}; set data.cache_dir in "
                                     f"the space, or KERAS_SEARCH_CACHE, to a folder you can "
                                     f"write to")
    assert not [p for p in cache.rglob("*") if p.suffix in {".npy", ".json"} or
                p.name.startswith(".")]


def test_a_ray_address_nothing_answers_at_exits_2_with_one_line(tiny_space_file,
                                                                tmp_path: Path) -> None:
    # in a process of its own, as a user runs it: ray.init alone waits minutes, silent
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "search.run", str(tiny_space_file()),
                           "--address", address, "--storage-path", str(tmp_path / "ray")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(f"error: no Ray cluster answers at {address}")
    assert not (tmp_path / "ray").exists()


def test_a_ray_that_cannot_start_here_exits_2_with_one_line(tiny_space_file,
                                                            tmp_path: Path) -> None:
    """Ray's temporary folder below a file (for a user: a full or read-only /tmp): Ray's
    traceback, now one line with the reason."""
    (tmp_path / "file").write_text("")
    done = subprocess.run([sys.executable, "-m", "search.run", str(tiny_space_file()),
                           "--storage-path", str(tmp_path / "ray")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_TMPDIR": str(tmp_path / "file" / "ray")})
    assert done.returncode == 2, done.stderr[-3000:]
    line, = done.stderr.strip().splitlines()
    assert line == (f"error: Ray could not start on this machine: [Errno 20] Not a directory: "
                    f"'{tmp_path / 'file' / 'ray'}'")
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_trial_no_node_here_can_run_exits_2_with_one_line(tiny_space_file,
                                                            tmp_path: Path) -> None:
    # Tune would wait forever for a GPU this machine does not have
    space = tiny_space_file()
    space.write_text(space.read_text().replace("resources: {cpu: 1}",
                                               "resources: {cpu: 1, gpu: 1}"))
    done = subprocess.run([sys.executable, "-m", "search.run", str(space), "--storage-path",
                           str(tmp_path / "ray")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2, done.stderr[-3000:]
    line, = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {space}: search.resources: a trial asks for 1 CPU and 1 "
                           f"GPU, but this machine has ")  # as many CPUs as Ray counts
    assert line.endswith(" CPU and 0 GPU; ask for less, or run on a cluster that has them "
                         "(--address)")
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("sigint", ["default", "ignored"])  # ignored: a shell's background job
def test_sigterm_as_a_search_starts_stops_it_as_ctrl_c_does(sigint: str, tiny_space_file,
                                                             tmp_path: Path) -> None:
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    driver = subprocess.Popen([sys.executable, "-m", "search.run", str(tiny_space_file()),
                               "--storage-path", str(tmp_path / "ray")], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=ignore_sigint if sigint == "ignored" else None)
    time.sleep(5)  # TensorFlow loading once Ray is up (or, on a fast machine, the search)
    driver.send_signal(signal.SIGTERM)
    watchdog = threading.Timer(300, driver.kill)
    watchdog.start()
    lines = []
    for line in driver.stdout:  # up to the line that says it stopped
        lines.append(line)
        if line.startswith("stopped"):
            break
    while driver.poll() is None:  # then Ctrl-C after Ctrl-C as it exits (Ray shuts down)
        driver.send_signal(signal.SIGINT)
        time.sleep(0.02)
    watchdog.cancel()
    out = "".join(lines) + driver.stdout.read()
    # 130 and a line that says so, wherever the start was: never killed, hung or aborted
    assert driver.returncode == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1].startswith("stopped")


@pytest.mark.parametrize("when", ["as Ray starts", "once Ray is up"])
def test_a_stop_while_ray_starts_and_the_driver_loads_waits_for_both(when: str,
                                                                     tmp_path: Path) -> None:
    # the module imported sends the stop: as ray.init begins in the main thread (acted on
    # there, it exited from the middle of Ray's start or hung the driver on an import lock),
    # or after, while the import goes on (Ray's C++ handler on SIGTERM aborted the driver
    # 3 s later: hence the wait); the command was started with SIGHUP ignored (nohup)
    wait = "while not ray.is_initialized(): time.sleep(0.01)\n" if when == "once Ray is up" else ""
    (tmp_path / "stops_itself.py").write_text(
        f"import os, signal, time, ray\n{wait}os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(1)\n")
    script = """
import signal, sys, time, ray
signal.signal(signal.SIGHUP, signal.SIG_IGN)
from search.ray_start import start_ray_importing
try:
    start_ray_importing(None, "stops_itself")
except KeyboardInterrupt:
    assert "stops_itself" in sys.modules
    assert ray.get(ray.remote(lambda: 42).remote(), timeout=60) == 42
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # the terminal may close
    assert signal.getsignal(signal.SIGTERM).__name__ == "_stop_as_ctrl_c"
    time.sleep(4)
    print("stopped once both had ended")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": "local"})
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    assert done.stdout.strip().endswith("stopped once both had ended"), done.stderr[-3000:]


def test_a_stop_before_the_search_began_says_there_is_nothing_to_resume(tiny_space_file,
                                                                       tmp_path: Path) -> None:
    # a tracking server that takes the connection and never answers: the driver waits in its
    # check of the server (Ray up, no search folder yet), as it waits on a big data set's decode
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(240)
        driver = subprocess.Popen(
            [sys.executable, "-m", "search.run", str(tiny_space_file()), "--tracking-uri",
             f"http://127.0.0.1:{server.getsockname()[1]}", "--storage-path",
             str(tmp_path / "ray")], cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        connection, _ = server.accept()
        with connection:
            driver.send_signal(signal.SIGTERM)
            out = driver.communicate(timeout=120)[0]
    assert driver.returncode == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1] == "stopped before the search began"  # no --resume
    assert not (tmp_path / "ray").exists()


def test_ray_started_while_the_driver_loads_outlives_the_loading(tmp_path: Path) -> None:
    # in a process of its own: a new Ray, never the tests' (Ray's processes die with the
    # thread that started them, so the start must not be the loading thread's)
    script = """
import time, ray
from search.ray_start import start_ray_importing
assert start_ray_importing(None, "email.mime.text")
import sys; assert "email.mime.text" in sys.modules
time.sleep(2)
assert all(node["Alive"] for node in ray.nodes())
assert ray.get(ray.remote(lambda: 42).remote(), timeout=60) == 42
try:
    start_ray_importing(None, "no_such_module")
except ModuleNotFoundError:
    print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": "local"})
    assert done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.parametrize("name", ["digits", "cats_dogs", "rock_paper_scissors"])
def test_dry_run_without_data(name: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([str(SPACES / f"{name}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "does not exist" in out and "parameters" in out
    # digits fixes cpu: 1; the report spaces' auto is half of this machine's CPUs
    share = 1 if name == "digits" else max(1, (os.cpu_count() or 1) // 2)
    assert f"2 at a time, each with {share} CPU and 0 GPU on this machine" in out
    assert not (tmp_path / "data").exists()
    # cats_dogs draws 64 px under up to 5 blocks of 7x7 kernels, and draws those again
    assert ("note: some models the space draws cannot be built" in out) == (name == "cats_dogs")
    assert ("draws such a trial's config again" in out) == (name == "cats_dogs")


def test_a_backbone_space_in_float32_is_pointed_to_bfloat16_on_a_cpu_with_amx() -> None:
    gemstones, digits = load_space(SPACES / "gemstones.yaml"), load_space(SPACES / "digits.yaml")
    amx, older = {"avx512f", "amx_tile", "amx_bf16"}, {"avx512f", "avx512_bf16"}
    assert "precision: mixed_bfloat16" in (bfloat16_note(gemstones, amx) or "")
    assert bfloat16_note(gemstones, older) is None
    assert bfloat16_note(digits, amx) is None  # no backbone
    policy = Fixed("mixed_bfloat16")
    bfloat16 = replace(gemstones, params={**gemstones.params, "precision": policy})
    assert bfloat16_note(bfloat16, amx) is None
    search = gemstones.search
    on_gpu = replace(gemstones, search=replace(search, resources=replace(search.resources, gpu=1)))
    assert bfloat16_note(on_gpu, amx) is None


def test_a_dry_run_prints_no_line_of_tensorflows_own(tmp_path: Path) -> None:
    # its C++ log lines (I0000 ..., E0000 ... cuInit on a machine without a GPU) go past
    # Python: only a process of its own shows them
    done = subprocess.run([sys.executable, "-m", "search.run", str(SPACES / "digits.yaml"),
                           "--dry-run"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    assert "parameters" in out and not re.search(r"^[IWEF]\d{4} ", out, re.MULTILINE), out


def test_a_sigterm_before_ray_starts_stops_the_command_as_ctrl_c_does(tmp_path: Path) -> None:
    """A dry run told to stop (SIGTERM) while it imports TensorFlow says so and exits 130, as
    after Ctrl-C; it used to die of the signal (-15) without a word."""
    command = subprocess.Popen([sys.executable, "-m", "search.run",
                                str(SPACES / "gemstones.yaml"), "--dry-run"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps, deadline = Path(f"/proc/{command.pid}/maps"), time.monotonic() + 120
    while command.poll() is None and time.monotonic() < deadline and \
            "libtensorflow" not in maps.read_text():
        time.sleep(0.01)
    command.send_signal(signal.SIGTERM)
    out, err = command.communicate(timeout=120)
    assert command.returncode == 130, (command.returncode, err[-3000:])
    assert "stopped before the search began" in err and "Traceback" not in err, err[-3000:]


def test_dry_run_reports_images_per_split(tiny_space_file, capsys) -> None:
    assert main([str(tiny_space_file()), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "validation  circle" in out and "small" in out and "diverges" in out
    assert "2 at a time, each with 1 CPU and 0 GPU on this machine" in out  # cpu: 1


def test_epoch_budget_ends_the_search_and_closes_every_run(ray_local, tiny_space_file,
                                                           tmp_path: Path, capsys,
                                                           monkeypatch) -> None:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow writes a SQLite store's artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space = str(tiny_space_file(num_samples=20))
    code = main([space, "--epoch-budget", "4",
                 "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")])
    assert code == 0, capsys.readouterr().out
    table = pd.read_parquet(next((tmp_path / "ray").glob("*/results.parquet")))
    assert len(table) < 20
    assert table["epochs_run"].sum() <= 4 + 1  # the other running trial may end its epoch
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    # the trials the budget ended: KILLED in MLflow, saying so, and counted apart from ASHA's
    cut = set(table.loc[table["status"] == "cut", "trial_id"])
    assert cut == {r.data.tags["trial_id"] for r in runs if r.data.tags.get("cut_short")} \
        == {r.data.tags["trial_id"] for r in runs if r.info.status == "KILLED"}
    assert (f"{len(cut)} cut short by the epoch budget" in capsys.readouterr().out) == bool(cut)
    assert main([space, "--epoch-budget", "0"]) == 2
    assert "--epoch-budget must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "seed: must lie in [0, 4294967295], got -1 (set by --seed)"),
    (["--num-samples", "0"],
     "search.num_samples: must lie in [1, 100000], got 0 (set by --num-samples)"),
    (["--max-epochs", "1000000"],
     "search.asha.max_epochs: must lie in [1, 10000], got 1000000 (set by --max-epochs)"),
])
def test_overrides_are_checked_by_the_space_reader(tiny_space_file, args: list[str],
                                                   message: str, capsys) -> None:
    space = tiny_space_file()
    assert main([str(space), "--dry-run", *args]) == 2
    assert capsys.readouterr().err.strip() == f"error: {space}: {message}"


def test_a_shorter_search_lowers_the_grace_period(tiny_space_file) -> None:
    from search.run import overrides, parse_args

    args = parse_args([str(tiny_space_file()), "--max-epochs", "1", "--seed", "7"])
    space = load_space(args.space, overrides(args))
    assert (space.search.asha.max_epochs, space.search.asha.grace_period) == (1, 1)
    assert space.seed == 7


def test_dry_run_of_a_baseline_too_large_to_allocate_is_one_line(tmp_path: Path,
                                                                 capsys) -> None:
    space = write_space(tmp_path, num_samples=1, epochs=1, **HUGE_SPACE,
                        baselines=f"baselines:\n  {HUGE}")
    assert main([str(space), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {space}: baselines.huge: the model does not fit in memory"), err
    assert "\n" not in err


def test_a_weights_file_of_another_backbone_exits_2_before_anything_starts(
        tmp_path: Path, capsys) -> None:
    """Each trial that drew it failed as it was built, once the data was decoded and Ray
    had started; the search then said every trial failed, with Keras' list of layers."""
    import keras

    files = {}
    for name, backbone in (("vgg", keras.applications.VGG16),
                           ("mobilenet", keras.applications.MobileNetV2)):
        files[name] = tmp_path / f"{name}.weights.h5"
        backbone(weights=None, include_top=False, input_shape=(32, 32, 3)).save_weights(
            files[name])
    space = tmp_path / "s.yaml"

    def dry_run(weights: str) -> tuple[int, str]:
        space.write_text(f"""name: w
data: {{root: {tmp_path / 'none'}, classes: [a, b]}}
model:
  image_size: 32
  backbone: {{type: choice, choices: [none, vgg16]}}
  backbone_weights: {{type: choice, choices: [none, {files[weights]}]}}
baselines:
  frozen: {{backbone: vgg16, backbone_weights: {files[weights]}}}
""")
        return main([str(space), "--dry-run"]), capsys.readouterr().err.strip()

    assert dry_run("vgg")[0] == 0
    assert dry_run("mobilenet") == (2, (
        f"error: {space}: model.backbone_weights: {files['mobilenet']} does not hold vgg16's "
        f"weights: Layer 'block1_conv1' expected 2 variables, but received 1 variables during "
        f"loading. Expected: ['kernel', 'bias']"))


def test_a_class_whose_every_file_is_unreadable_exits_2_naming_it(tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, num_samples=1, epochs=1)
    for png in (tmp_path / "data" / "square").glob("*.png"):
        png.write_bytes(b"not a png")
    assert main([str(space), "--storage-path", "r", "--tracking-uri",
                 f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err
    assert "class 'square' has no readable image in the train split: none of its 8 files" \
        in err, err
    assert not (tmp_path / "r").exists()


def test_class_metric_names_are_valid_mlflow_names(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from search.tracking import class_metric_names

    names = class_metric_names("test_f1_", ("Tiger's Eye", "C++", "C__", "Café", "a/.."))
    assert names == ["test_f1_Tiger_s Eye", "test_f1_C___1", "test_f1_C___2", "test_f1_Caf_",
                     "test_f1_a_.."]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("names")).info.run_id
    for name in names:  # MLflow refuses an invalid name
        client.log_metric(run, name, 1.0)
    assert set(client.get_run(run).data.metrics) == set(names)
