#!/usr/bin/env bash
# Start the shared MLflow tracking server: SQLite backend (the model registry works), local
# artifact store, bound to localhost unless MLFLOW_HOST says otherwise. Reach it from
# elsewhere through an SSH tunnel (ssh -L 5000:localhost:5000 host), not an open port.
#
# The SQLite file belongs on a local disk: SQLite's locks are not safe over NFS, and the
# server runs several workers. MLFLOW_BACKUP (a folder, on a shared mount say) gets a
# consistent copy of it every MLFLOW_BACKUP_S seconds (SQLite's online backup), and a server
# started with no database yet begins from that copy. A database server
# (MLFLOW_BACKEND_URI=postgresql://...) needs neither.
# No Python lives in this folder: a package named mlflow here would shadow the library.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
STORE="${MLFLOW_STORE:-$HERE/store}"
ARTIFACTS="${MLFLOW_ARTIFACTS:-$STORE/artifacts}"
DB="$STORE/mlflow.db"
mkdir -p "$STORE" "$ARTIFACTS"

backup() {  # $1 -> $2, whole or not at all
    python - "$1" "$2" <<'EOF'
import os, sqlite3, sys
source, target = sys.argv[1:]
with sqlite3.connect(source) as db, sqlite3.connect(target + ".part") as copy:
    db.backup(copy)
copy.close()
os.replace(target + ".part", target)
EOF
}

if [ -z "${MLFLOW_BACKEND_URI:-}" ] && [ -n "${MLFLOW_BACKUP:-}" ]; then
    mkdir -p "$MLFLOW_BACKUP"
    if [ ! -e "$DB" ] && [ -e "$MLFLOW_BACKUP/mlflow.db" ]; then
        backup "$MLFLOW_BACKUP/mlflow.db" "$DB"
    fi
    # every MLFLOW_BACKUP_S seconds while the server (this process, after exec) lives
    ( while sleep "${MLFLOW_BACKUP_S:-600}" && kill -0 $$ 2>/dev/null; do
          [ -e "$DB" ] && backup "$DB" "$MLFLOW_BACKUP/mlflow.db" || true
      done ) &
fi

# MLflow 3's job runner (GenAI evaluations, trace rollups: this project uses neither) starts
# seven consumer processes (about 1 GB) whose polling made each request here 80 ms, not 56
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
# MLflow's usage telemetry off, as the search's driver has it (search/tracking.py): a server
# on a cluster's head node calls out to no one unless you set it
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
exec mlflow server \
  --backend-store-uri "${MLFLOW_BACKEND_URI:-sqlite:///$DB}" \
  --artifacts-destination "$ARTIFACTS" \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
  ${MLFLOW_APP_NAME:+--app-name "$MLFLOW_APP_NAME"}
