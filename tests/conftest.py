"""Shared fixtures: small image folders written with Pillow, a tiny space, one local Ray, and
one finished search for the tests that read a search's results."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# the test spaces' data: three classes of small pictures (write_class_folders), split
# 50/25/25; {root} and {cache} are formatted in with the rest of each space. The third class
# (stripes) is named as the gemstones data names one: not a valid MLflow metric name.
CLASSES = ("circle", "square", "Tiger's Eye")
DATA = """data:
  root: {root}
  train: .
  validation: 0.25
  test: 0.25
  classes: [circle, square, "Tiger's Eye"]
  color_mode: rgb
  cache_dir: {cache}
"""

TINY_SPACE = """
name: tiny
seed: 3
""" + DATA + """model:
  image_size: 12
  conv_blocks: {{type: int, low: 1, high: 2}}
  conv_filters: {{type: choice, choices: [4, 8]}}
  conv_padding: same
  dense_layers: 1
  dense_units: 8
train:
  optimizer: {{type: choice, choices: [adam, sgd]}}
  learning_rate: {{type: choice, choices: [0.003, 0.01, 0.03, 1.0e+30]}}
  epochs: 3
  batch_size: 8
search:
  num_samples: {num_samples}
  max_concurrent: 2
  resources: {{cpu: 1}}
  asha: {{max_epochs: 3, grace_period: 1, reduction_factor: 2}}
baselines:
  small:
    conv_blocks: 1
    conv_filters: [8]
    optimizer: adam
    learning_rate: 0.01
  diverges:
    conv_blocks: 1
    conv_filters: [4]
    optimizer: sgd
    learning_rate: 1.0e+30
"""


def shape_image(kind: str, rng: np.random.Generator, size: int = 16) -> Image.Image:
    """A small RGB picture of one of three easy classes, with noise: a circle, a square, or
    (any other kind) stripes."""
    pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    if kind == "circle":
        yy, xx = np.mgrid[:size, :size]
        pixels[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = 230
    elif kind == "square":
        pixels[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 230
    else:
        pixels[::3] = 230
    return Image.fromarray(pixels)


def write_class_folders(root: Path, n_per_class: int, seed: int = 0,
                        classes: tuple[str, ...] = ("circle", "square", "stripes")) -> Path:
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            shape_image(cls, rng).save(root / cls / f"{i:03d}.png")
    return root


STEADY_SPACE = """
# trials that run all their epochs (no early stops), for the fault and cluster tests
name: faults
seed: 1
""" + DATA + """model:
  image_size: {image_size}
  conv_blocks: 1
  conv_filters: {{type: choice, choices: [4, 8]}}
  dense_layers: 1
  dense_units: {{type: choice, choices: {dense_units}}}
train:
  optimizer: adam
  learning_rate: {{type: loguniform, low: 0.001, high: 0.03}}
  epochs: {epochs}
  batch_size: 8
search:
  num_samples: {num_samples}
  max_concurrent: 2
  checkpoint_every_s: 0  # every epoch: the fault tests count the epochs a retry trains again
  resources: {{cpu: 1}}
  asha: {{max_epochs: {epochs}, grace_period: {epochs}}}  # no early stops: every trial runs out
{baselines}
"""


# a baseline of the steady space that no machine can allocate (a 512x512x4096 flatten into
# 65,536 units: 7e13 weights), though every value lies within the space's bounds
HUGE = "huge: {image_size: 1024, conv_filters: [4096], dense_units: [65536]}"
HUGE_SPACE = {"image_size": "{type: choice, choices: [12, 1024]}",
              "conv_filters": "{type: choice, choices: [4, 8, 4096]}",
              "dense_units": "[8, 65536]"}


def write_space(folder: Path, *, num_samples: int, epochs: int, dense_units: str = "[8, 16]",
                baselines: str = "", image_size: str = "12",
                conv_filters: str = "{type: choice, choices: [4, 8]}") -> Path:
    """The steady space's file (experiment `faults`) and its data under `folder`."""
    root = write_class_folders(folder / "data", 16, classes=CLASSES)
    path = folder / "faults.yaml"
    text = STEADY_SPACE.format(root=root, cache=folder / "cache", num_samples=num_samples,
                               epochs=epochs, dense_units=dense_units, baselines=baselines,
                               image_size=image_size)
    path.write_text(text.replace("conv_filters: {type: choice, choices: [4, 8]}",
                                 f"conv_filters: {conv_filters}"))
    return path


# the curve trial's space (search/curve_trial.py): its params only shape the curves
CURVE_SPACE = """
name: curves
seed: 0
""" + DATA + """model:
  image_size: 8
  conv_blocks: {conv_blocks}
  dense_layers: 1
  conv_filters: {{type: choice, choices: [4, 8, 16]}}
  dense_units: {{type: choice, choices: [8, 16, 32]}}
train:
  learning_rate: {{type: loguniform, low: 0.0001, high: 0.1}}
  epochs: {epochs}
search:
  num_samples: {num_samples}
  max_concurrent: {max_concurrent}
  max_failures: {max_failures}
  resources: {{cpu: 0.5}}
  asha: {asha}
{baselines}
"""


def write_curve_space(folder: Path, *, epochs: int, num_samples: int, max_concurrent: int,
                      asha: str, max_failures: int = 1, baselines: str = "",
                      conv_blocks: str = "1") -> Path:
    """The curve trials' space file (experiment `curves`) and its data under `folder`."""
    root = write_class_folders(folder / "data", 8, classes=CLASSES)
    path = folder / "curves.yaml"
    path.write_text(CURVE_SPACE.format(
        root=root, cache=folder / "cache", epochs=epochs, num_samples=num_samples,
        max_concurrent=max_concurrent, max_failures=max_failures, asha=asha,
        baselines=baselines, conv_blocks=conv_blocks))
    return path


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """Three classes of 12 PNGs each, plus one corrupt JPEG and one text file."""
    root = write_class_folders(tmp_path / "images", 12)
    (root / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "square" / "notes.txt").write_text("not an image")
    return root


def write_tiny_space(folder: Path, num_samples: int = 4) -> Path:
    """The tiny space's file and its data (16 images per class) under `folder`."""
    root = write_class_folders(folder / "data", 16, classes=CLASSES)
    path = folder / "tiny.yaml"
    path.write_text(TINY_SPACE.format(root=root, cache=folder / "cache", num_samples=num_samples))
    return path


@pytest.fixture
def tiny_space_file(tmp_path: Path) -> callable:
    return lambda num_samples=4: write_tiny_space(tmp_path, num_samples)


@pytest.fixture(scope="session")
def ray_local():
    import ray
    # "local": a new cluster for the tests, never one a `ray start` left on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # inherits TF_CPP_... above
    yield ray
    ray.shutdown()


@dataclass(frozen=True)
class FinishedSearch:
    space: Path
    tracking_uri: str
    storage: Path
    out: str  # what `search.run` printed
    exit_code: int


@pytest.fixture(scope="session")
def finished_search(ray_local, tmp_path_factory) -> FinishedSearch:
    """One real 5-trial search of the tiny space, shared by the tests that read its results."""
    from search.run import main

    folder = tmp_path_factory.mktemp("search")
    space = write_tiny_space(folder, num_samples=5)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    out = io.StringIO()
    # MLflow puts a SQLite store's artifacts under ./mlruns: keep them in the test's folder
    with contextlib.chdir(folder), contextlib.redirect_stdout(out):
        code = main([str(space), "--tracking-uri", uri, "--storage-path", str(folder / "ray")])
    return FinishedSearch(space, uri, folder / "ray", out.getvalue(), code)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path,
                    timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


def start_mlflow_server(store_uri: str, folder: Path, log: Path,
                        port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on `store_uri` (artifacts under `folder`), on localhost, in its
    own process group; the process and its URL, once it answers."""
    port = port or free_port()
    with log.open("a") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, server, log)
    except BaseException:
        stop_mlflow_server(server)
        raise
    return server, url


def stop_mlflow_server(server: subprocess.Popen) -> None:
    """Stop the server by its process group id (its workers are in the group)."""
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@contextlib.contextmanager
def running_mlflow_server(store_uri: str, folder: Path, log: Path):
    server, url = start_mlflow_server(store_uri, folder, log)
    try:
        yield url
    finally:
        stop_mlflow_server(server)


def trial_results(storage: Path) -> dict[str, list[dict]]:
    """Each trial's reported results so far (Tune's result.json on the storage path, which
    lags the driver by Tune's snapshot period), by trial id."""
    found = {}
    for path in storage.glob("*/part-*/*/result.json"):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # being written
        if rows:
            found[rows[0]["trial_id"]] = rows
    return found


# what a script run by `run_at_once` starts with: `step(name)` says this process is at
# `name`, then waits until every other process is there too
AT_ONCE = """
import sys, time
from pathlib import Path

def step(name):
    Path(f"{name} {sys.argv[1]}").touch()
    while not Path(name).exists():
        time.sleep(0.001)
"""


def run_at_once(script: str, processes: int, folder: Path, steps: list[str]) -> list[str]:
    """`script` (after `AT_ONCE`) run by `processes` new Python processes in `folder`, each
    given its index as `sys.argv[1]`, and released from each of `steps` in turn only once all
    have reached it, so that they race; each one's stdout, once all have exited 0."""
    runs = [subprocess.Popen([sys.executable, "-c", AT_ONCE + script, str(n)], cwd=folder,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in range(processes)]
    for step in steps:
        while not all((folder / f"{step} {n}").exists() or run.poll() is not None
                      for n, run in enumerate(runs)):
            time.sleep(0.01)
        (folder / step).touch()
    outs = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        outs.append(out)
    return outs
