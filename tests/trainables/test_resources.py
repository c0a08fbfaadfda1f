"""The mapping from a trial's resource share to TensorFlow settings (no GPU needed)."""

from __future__ import annotations

import pytest

from trainables.resources import cpu_threads, gpu_memory_limit_mb


@pytest.mark.parametrize("share, total, limit", [
    (0.25, 80_000, 18_976),  # four trials on one GPU: a quarter of it each, less a context
    (0.5, 16_000, 6_976),
    (0.01, 8_000, 256),      # a share smaller than a context: the least a trial can run in
    (1.0, 80_000, None),     # a whole GPU: no cap, memory growth instead
    (2.0, 80_000, None),
    (0.0, 80_000, None),
])
def test_gpu_share_caps_memory(share: float, total: int, limit: int | None) -> None:
    assert gpu_memory_limit_mb(share, total) == limit


@pytest.mark.parametrize("cpus, threads", [(0.5, 1), (1, 1), (2, 2), (3.7, 3)])
def test_threads_follow_cpus(cpus: float, threads: int) -> None:
    assert cpu_threads(cpus) == threads
