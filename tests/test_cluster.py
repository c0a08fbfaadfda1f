"""cluster.yaml against the schema that ships with Ray, and its closed defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


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


def test_workers_are_gpu_nodes_and_install_the_project():
    config = load()
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"] \
        .startswith(("g", "p"))
    assert any("pip install" in c and "keras-search" in c for c in config["setup_commands"])
