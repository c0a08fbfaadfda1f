"""Is the Ray cluster there? Asked once, as the search starts Ray."""

from __future__ import annotations

import os
import socket


class ClusterError(Exception):
    """No Ray cluster answers at the address given, or a Ray cannot start on this machine."""


RAY_CLIENT_PORT = 10001  # where a ray:// address without a port connects


def given_address(address: str | None) -> str | None:
    """The cluster the command was given: `--address`, else RAY_ADDRESS (None: none, so the
    search starts its own Ray on this machine)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_address(address: str | None, timeout_s: float = 10.0) -> None:
    """Fail now where the cluster's address (`address`, else RAY_ADDRESS) names a host and
    port that nothing answers at: `ray.init` waits for such a cluster for many minutes,
    saying nothing. Ray reads `auto` and `local` (and no address) itself, and fails at once
    where they find nothing."""
    address = given_address(address)
    if address in (None, "auto", "local"):
        return
    client = address.startswith("ray://")
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if client and not (colon and port.isdigit()):
        host, port = address.removeprefix("ray://"), str(RAY_CLIENT_PORT)
    host = host.strip("[]")  # an IPv6 address
    if not host or not port.isdigit():
        raise ClusterError(f"the Ray address {address!r} (--address or RAY_ADDRESS): "
                           f"expected auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address} (--address or RAY_ADDRESS): "
                           f"{exc}; start one (ray start --head, or ray up cluster.yaml) or "
                           f"pass its head's address") from None
