"""When a trial left alone on a node is restarted with the CPUs the ended trials left idle."""

from __future__ import annotations

import pytest

from search.growth import WORTH_S, grown_cpus


@pytest.mark.parametrize(("cpus", "node_cpus", "on_node", "epoch_s", "left", "grown"), [
    (1, 2, 1, 240.0, 2, 2),    # the cats_dogs search's last trial: 4-minute epochs on 1 of 2
    (1, 16, 3, 30.0, 10, 5),   # three left on 16 CPUs: an even share each
    (0.5, 2, 2, 30.0, 10, 1),  # fractional shares grow to whole CPUs
    (1, 2, 2, 240.0, 2, None),   # the other trial still holds its CPU
    (1, 2, 1, 0.5, 8, None),     # 4 s left: a restart would not pay
    (1, 2, 1, WORTH_S, 0, None),  # its last epoch was just checkpointed
    (2, 2, 1, 240.0, 2, None),   # it holds the node already
])
def test_a_trial_grows_to_its_even_share_when_what_is_left_of_it_is_worth_a_restart(
        cpus: float, node_cpus: float, on_node: int, epoch_s: float, left: int,
        grown: int | None) -> None:
    assert grown_cpus(cpus, node_cpus, on_node, epoch_s, left) == grown
