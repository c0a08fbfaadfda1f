"""What the commands (`search.run`, `search.report`, `search.predict`) share: where MLflow
is, the exit code for input they cannot use, and the signals that stop them."""

from __future__ import annotations

import argparse
import os
import signal
import urllib.parse

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXIT_BAD_INPUT = 2
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, a scheduler's, a lost terminal


def without_credentials(uri: str) -> str:
    """A tracking server's `uri` with its user name and password, if it has them, moved into
    the environment variables MLflow's HTTP client sends as basic auth
    (`MLFLOW_TRACKING_USERNAME`, `MLFLOW_TRACKING_PASSWORD`): the URI then goes into files,
    runs and messages with no secret in it. A database's URI (`postgresql://user:pw@host/db`)
    is left whole: its driver reads the credentials there and nowhere else (keep the
    password out of it with the database's own means, such as PostgreSQL's `~/.pgpass`)."""
    parts = urllib.parse.urlsplit(uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or parts.scheme not in ("http", "https"):
        return uri
    user, colon, password = userinfo.partition(":")
    os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(user)
    if colon:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(password)
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri", type=without_credentials,
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})")
