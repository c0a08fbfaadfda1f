"""What the commands (`search.run`, `search.report`, `search.predict`) share: where MLflow
is, and the exit code for input they cannot use."""

from __future__ import annotations

import argparse
import os

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXIT_BAD_INPUT = 2


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})")
