"""Is the MLflow tracking server there? Asked once, before a search starts anything."""

from __future__ import annotations

import urllib.request


class TrackingError(Exception):
    """The tracking server cannot be reached, or does not hold what the search needs."""


def check_server(uri: str, timeout_s: float = 10.0) -> None:
    """Fail now, before any trial starts, if an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return  # a local store: MLflow creates it
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise TrackingError(f"the MLflow tracking server at {uri} does not answer ({exc}); "
                            f"start it (mlflow/start-server.sh) or pass another "
                            f"--tracking-uri") from None
