"""What the commands (`search.run`, `search.report`, `search.predict`) share: where MLflow
is, the exit code for input they cannot use, and the signals that stop them."""

from __future__ import annotations

import argparse
import os
import signal
import urllib.parse
from types import FrameType

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXIT_BAD_INPUT = 2
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, a scheduler's, a lost terminal


def term_as_ctrl_c() -> None:
    """SIGTERM and SIGHUP stop the command as Ctrl-C does (`_stop_as_ctrl_c`), from its first
    line on: before, one that came before Ray started (a dry run, the space's checks) ended
    the process as the signal's default does, with no word of it. One ignored stays so:
    SIGHUP under nohup, which asks the search to outlive the terminal."""
    for stop in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(stop) is not signal.SIG_IGN:
            signal.signal(stop, _stop_as_ctrl_c)


def _stop_as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP (a scheduler's stop, a lost SSH session) stop the search as Ctrl-C
    does: Tune's SIGINT handler saves its state and ends the part (then `SearchStopped`);
    outside a part, Python raises KeyboardInterrupt, raised here where SIGINT is ignored (as
    a shell starts its background jobs; inside a part Tune's handler is in place)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


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
