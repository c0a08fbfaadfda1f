"""cluster.yaml against the schema that ships with Ray, and its closed defaults; a search on a
real multi-node Ray cluster logging to a real MLflow tracking server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import (
    free_port,
    running_mlflow_server,
    trial_results,
    wait_for_server,
    write_curve_space,
    write_space,
)
from mlflow.tracking import MlflowClient
from ray.autoscaler._private.aws.config import _configure_security_group
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster.yaml"
SHARE = "/mnt/shared"  # where cluster.yaml mounts the EFS file system
NOBODY = 65534  # an unprivileged user (and group) every Debian and Ubuntu has


def load() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_file_passes_rays_own_validation():
    # what `ray up` does before it launches anything: fill the provider's defaults, validate
    validate_config(prepare_config(load()))


def test_validation_catches_a_misspelt_key():
    config = load()
    config["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(config))


def test_cluster_is_closed_by_default():
    config = load()
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in CLUSTER.read_text()
    # the token reaches the nodes from the user's machine, never from the repository
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "mlflow/start-server.sh" in start  # binds to 127.0.0.1 unless MLFLOW_HOST is set


def test_ssh_is_open_to_the_users_group_alone_and_workers_get_a_narrow_profile():
    config = load()
    nodes = config["available_node_types"]
    # with SecurityGroupIds on every node type, the launcher makes no group of its own (its
    # own has SSH open to 0.0.0.0/0): Ray's step returns the config untouched, with no call
    # to AWS
    assert all(n["node_config"]["SecurityGroupIds"] == ["SECURITY_GROUP_ID"]
               for n in nodes.values())
    before = prepare_config(load())
    assert _configure_security_group(prepare_config(load())) == before
    assert nodes["gpu_worker"]["node_config"]["IamInstanceProfile"] == \
        {"Name": "keras-search-worker"}


def test_workers_are_gpu_nodes_and_install_the_project():
    config = load()
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"] \
        .startswith(("g", "p"))
    assert any("pip install" in c and "keras-search" in c for c in config["setup_commands"])


@contextlib.contextmanager
def ray_cluster(tmp_path: Path, head_cpus: int, workers: int):
    """A real Ray cluster on this machine: a head with `head_cpus` CPUs and `workers` worker
    nodes of 1 CPU each, started with `ray start` and token authentication on, as
    cluster.yaml does. Yields (address, env). Each node is stopped with every process it
    started."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    address = f"127.0.0.1:{free_port()}"
    # its own temp dir (short: it holds sockets), so no `ray_current_cluster` file is left in
    # /tmp/ray for a later plain ray.init() to find
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    common = ["--disable-usage-stats", "--block", f"--temp-dir={temp}"]
    head = ["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false",
            f"--num-cpus={head_cpus}"]
    nodes: list[subprocess.Popen] = []

    def start(args: list[str]) -> None:
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", *args, *common],
            env=env, start_new_session=True,
            stdout=(tmp_path / f"node{len(nodes)}.log").open("w"), stderr=subprocess.STDOUT))

    try:
        # one after the other: on 2 cores, nodes started together time out
        for args in [head] + [[f"--address={address}", "--num-cpus=1"]] * workers:
            start(args)
            _wait_for_nodes(address, env, len(nodes))
        yield address, env
    finally:
        for node in nodes:
            _kill_with_descendants(node.pid)  # Ray's workers each lead a process group
            with contextlib.suppress(ProcessLookupError):  # a node the test stopped
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def two_worker_cluster(tmp_path: Path):
    """A head with no CPUs for trials (as cluster.yaml's: it holds the driver and MLflow) and
    two worker nodes of 1 CPU each."""
    with ray_cluster(tmp_path, head_cpus=0, workers=2) as cluster:
        yield cluster


def _wait_for_nodes(address: str, env: dict, count: int, timeout_s: float = 120) -> None:
    probe = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
             f"print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", probe], env=env, check=False,
                              capture_output=True,
                              text=True)
        if done.returncode == 0 and done.stdout.strip() == str(count):
            return
        time.sleep(1)
    pytest.fail(f"the Ray cluster did not reach {count} nodes")


def test_search_on_two_worker_nodes_logs_to_a_tracking_server(two_worker_cluster,
                                                              tmp_path: Path):
    address, env = two_worker_cluster
    # with reuse_actors, a trial still waiting for its worker to start takes another node's
    # worker once that one's trial ends. The two workers' trial processes start cold
    # together, so each is up long before the other's first trial of 80 epochs ends; a head
    # with a CPU started its own sooner, and its trials, on a fast day, ended before the
    # worker node's process was up (all four ran on the head: 20 epochs lost that race on
    # 2026-11-24, 80 on 2026-12-02)
    space = write_space(tmp_path, num_samples=4, epochs=80)
    with running_mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path,
                               tmp_path / "mlflow.log") as url:
        done = subprocess.run(
            [sys.executable, "-m", "search.run", str(space), "--address", address,
             "--tracking-uri", url, "--storage-path", str(tmp_path / "ray")],
            env=env, cwd=tmp_path, check=False, capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id])
    trials = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(trials) == 4 and len(runs) == 5
    nodes = {r.data.tags.get("ray_node_id") for r in trials} - {None}
    assert len(nodes) == 2, nodes  # trials ran on both worker nodes
    parent = next(r for r in runs if r.data.tags.get("kind") == "search")
    assert parent.info.status == "FINISHED" and "registered_model" in parent.data.tags


# the driver of a search of curve trials (search/curve_trial.py) on the cluster at argv[4]
CURVE_DRIVER = """import pathlib, sys
from search.curve_trial import curve_trial
from search.driver import Options, run_search
from search.space import load_space
space, uri, storage, address = sys.argv[1:]
run_search(load_space(space), Options(uri, pathlib.Path(storage), address),
           curve_trial(epoch_s=1.0), register=None)
"""


def test_a_node_lost_mid_search_loses_no_trial(tmp_path: Path):
    """A head and three worker nodes; one worker node is lost (its raylet and every process it
    started killed at once, as a reclaimed spot instance loses them) while trials run on it:
    those trials go on from their checkpoints on the other nodes, and MLflow ends with one run
    per trial, every epoch."""
    epochs = 12
    space = write_curve_space(tmp_path, epochs=epochs, num_samples=6, max_concurrent=6,
                              asha=f"{{max_epochs: {epochs}, grace_period: {epochs}}}",
                              max_failures=2)
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray"
    log = tmp_path / "driver.log"
    # the head runs no trial (as on a cluster whose head has no GPU): a lost worker node is
    # never the head
    with ray_cluster(tmp_path, head_cpus=0, workers=3) as (address, env), log.open("w") as out:
        # result.json on the storage path lags the driver by Tune's snapshot period (10 s or
        # more by default): ask for 1 s, and kill a node only under a trial 4 epochs (4 s)
        # from its end, so that trial is still running
        driver = subprocess.Popen(
            [sys.executable, "-c", CURVE_DRIVER, str(space), uri, str(storage), address],
            env={**env, "TUNE_GLOBAL_CHECKPOINT_S": "1"}, cwd=tmp_path, stdout=out,
            stderr=subprocess.STDOUT)
        lost = None
        deadline = time.monotonic() + 300
        while lost is None and driver.poll() is None and time.monotonic() < deadline:
            midway = [rows[-1]["node_id"] for rows in trial_results(storage).values()
                      if 3 <= rows[-1]["epoch"] <= epochs - 4]
            if midway:
                lost = midway[0]
                _kill_with_descendants(_raylets()[lost])
            time.sleep(0.2)
        code = driver.wait(timeout=max(deadline - time.monotonic(), 1))
    assert code == 0 and lost is not None, log.read_text()[-3000:]
    # the trials that reported from the lost node, then ended elsewhere
    moved = {t for t, rows in trial_results(storage).items()
             if any(r["node_id"] == lost for r in rows) and rows[-1]["node_id"] != lost}

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("curves").experiment_id])
    trials = {r.data.tags["trial_id"]: r for r in runs if r.data.tags.get("kind") == "trial"}
    assert len(trials) == 6 and len(runs) == 7  # one run per trial, and the search's
    assert moved and moved <= set(trials)
    for trial_id, run in trials.items():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert run.info.status == "FINISHED", (trial_id, run.data.tags)
        assert sorted(set(steps)) == list(range(1, epochs + 1)), (trial_id, steps)
        if trial_id in moved:  # went on from its checkpoint elsewhere, not from epoch 1
            tags = run.data.tags
            assert int(tags.get("restarts", 0)) >= 1 and steps.count(1) == 1, (tags, steps)
            assert tags["ray_node_id"] != lost, tags
    parent = next(r for r in runs if r.data.tags.get("kind") == "search")
    assert parent.info.status == "FINISHED"


def _raylets() -> dict[str, int]:
    """The pid of each raylet on this machine, by the id of its node."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            node = [a.split(b"=", 1)[1] for a in argv if a.startswith(b"--node_id=")]
            if argv[0].endswith(b"raylet") and node:
                found[node[0].decode()] = int(proc.name)
    return found


def _kill_with_descendants(pid: int) -> None:
    """SIGKILL a process and every process below it, found by parent pid: Ray's workers each
    lead a process group of their own, so a node's group does not hold them. Killed alone, a
    raylet leaves its workers running for seconds (their results go straight to the driver):
    long enough, on a loaded machine, to finish a trial on a node the cluster has lost."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # the field after the parenthesised name: state, then the parent's pid
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    for each in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def test_tracking_server_script_serves_on_localhost_only(tmp_path: Path):
    """mlflow/start-server.sh: a real server on its own store, bound to 127.0.0.1."""
    port = free_port()
    script = Path(__file__).resolve().parents[1] / "mlflow" / "start-server.sh"
    env = {**os.environ, "MLFLOW_STORE": str(tmp_path / "store"), "MLFLOW_PORT": str(port)}
    env.pop("MLFLOW_HOST", None)
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(["bash", str(script)], env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_server(f"http://127.0.0.1:{port}", server, log)
        assert _listening_addresses(port) == {"127.0.0.1"}
        client = MlflowClient(f"http://127.0.0.1:{port}")
        run = client.create_run(client.create_experiment("probe"))
        client.log_text(run.info.run_id, "kept", "note.txt")  # artifacts go to its store
        assert (tmp_path / "store" / "mlflow.db").exists()
        assert list((tmp_path / "store" / "artifacts").rglob("note.txt"))
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on `port` (Linux's /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a root-owned share, a second user")
def test_node_setup_gives_the_ray_user_the_share_and_mlflow_runs_as_it(tmp_path: Path):
    """cluster.yaml's commands on a share as a new EFS file system is (root's, mode 755): the
    `sudo` steps as root, the rest as an unprivileged user (nobody, allowed to read anything
    here, to run this Python, but to write only what it owns), as the head runs them. The
    MLflow server answers, stores its artifacts on the share and its database off it, backs
    the database up to the share, and the Ray storage path on the share is writable."""
    config = load()
    share, home = tmp_path / "shared", tmp_path / "home"
    share.mkdir(mode=0o755)
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    port = free_port()
    env = {**os.environ, "HOME": str(home), "USER": "nobody", "MLFLOW_PORT": str(port),
           "MLFLOW_BACKUP_S": "1"}

    def local(command: str) -> str:
        return command.replace(SHARE, str(share)).replace("~/keras-search", str(REPO))

    # reading past /root (this Python lives there) is the one right it keeps, access(2)
    # included (no_setuid_fixup); it writes as nobody
    as_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               "--securebits=+no_setuid_fixup", "--inh-caps=+dac_read_search",
               "--ambient-caps=+dac_read_search"]
    for command in config["setup_commands"]:
        if SHARE in command and "mount -t" not in command:  # no NFS server here
            subprocess.run(["bash", "-c", f'sudo() {{ "$@"; }}; {local(command)}'], env=env,
                           check=True)
    start = next(c for c in config["head_start_ray_commands"] if "start-server.sh" in c)
    assert SHARE not in start.split("MLFLOW_STORE=")[1].split()[0]  # SQLite off NFS
    # in the foreground of its own process group, to stop it
    foreground = local(start).replace("nohup ", "").removesuffix("&").strip()
    log = home / "mlflow.log"
    url = f"http://127.0.0.1:{port}"
    database = home / "mlflow" / "mlflow.db"
    backup = share / "keras-search" / "mlflow-backup" / "mlflow.db"
    with _started(as_user, foreground, env, url, log):
        client = MlflowClient(url)
        run = client.create_run(client.create_experiment("probe"))
        client.log_text(run.info.run_id, "kept", "note.txt")
        [note] = (share / "keras-search" / "mlflow-artifacts").rglob("note.txt")
        assert note.stat().st_uid == NOBODY and database.stat().st_uid == NOBODY
        deadline = time.monotonic() + 60
        while not _has_experiment(backup, "probe") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _has_experiment(backup, "probe"), log.read_text()[-3000:]
    database.unlink()  # a new head: its server begins from the share's copy
    with _started(as_user, foreground, env, url, log):
        assert MlflowClient(url).get_experiment_by_name("probe") is not None
    storage = share / "keras-search" / "ray_results"
    subprocess.run([*as_user, "bash", "-c",
                    f"mkdir -p {storage}/trial && touch {storage}/trial/x"],
                   env=env, check=True)


@contextlib.contextmanager
def _started(as_user: list[str], command: str, env: dict, url: str, log: Path):
    """The server `command` starts, run as the user, until the block ends."""
    server = subprocess.Popen([*as_user, "bash", "-c", command], env=env,
                              start_new_session=True)
    try:
        wait_for_server(url, server, log)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def _has_experiment(database: Path, name: str) -> bool:
    if not database.exists():
        return False
    with contextlib.closing(sqlite3.connect(database)) as db:
        return bool(db.execute("select 1 from experiments where name = ?", (name,)).fetchall())
