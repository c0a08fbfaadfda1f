#!/usr/bin/env bash
# Start the shared MLflow tracking server: SQLite backend (the model registry works), local
# artifact store, bound to localhost unless MLFLOW_HOST says otherwise. Reach it from
# elsewhere through an SSH tunnel (ssh -L 5000:localhost:5000 host), not an open port.
# No Python lives in this folder: a package named mlflow here would shadow the library.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STORE="${MLFLOW_STORE:-$HERE/store}"
mkdir -p "$STORE/artifacts"
exec mlflow server \
  --backend-store-uri "${MLFLOW_BACKEND_URI:-sqlite:///$STORE/mlflow.db}" \
  --artifacts-destination "${MLFLOW_ARTIFACTS:-$STORE/artifacts}" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
  ${MLFLOW_APP_NAME:+--app-name "$MLFLOW_APP_NAME"}
