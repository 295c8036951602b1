#!/usr/bin/env bash
# A local Airflow for the project: `airflow standalone` (scheduler, DAG processor, triggerer,
# API server + UI) bound to 127.0.0.1, reading the project's dags/, state under .airflow/.
#
#   ./scripts/airflow.sh start     # starts it in its own process group, prints the UI URL and login
#   ./scripts/airflow.sh status    # running or not, and the URL
#   ./scripts/airflow.sh stop      # stops that process group (TERM, then KILL after 30 s)
#
# Environment: AIRFLOW_PORT (default 8080), AIRFLOW_LOG_PORT / AIRFLOW_TRIGGER_LOG_PORT (8793 /
# 8794), AIRFLOW_PARALLELISM (default 4), AIRFLOW_HOME (default <project>/.airflow),
# AIRFLOW_DAGS_FOLDER (default <project>/dags), RELATE_HOME (default <project>). Login: user `admin`; the simple auth manager writes the
# generated password to $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated.
# Backfill from the command line while it runs:
#   AIRFLOW_HOME=.airflow .venv/bin/airflow backfill create --dag-id relate_daily \
#       --from-date 2026-01-04 --to-date 2026-01-07 --max-active-runs 1
# (the DAG must be unpaused; a backfill's --max-active-runs is separate from the DAG's, and the
# days share the project's models/, so run them one at a time). To stop the scheduler creating a
# run for "today" when unpausing against a finite log source, set RELATE_DAG_END_DATE.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export AIRFLOW_HOME=${AIRFLOW_HOME:-$ROOT/.airflow}
export AIRFLOW__CORE__DAGS_FOLDER=${AIRFLOW_DAGS_FOLDER:-$ROOT/dags}
export AIRFLOW__CORE__LOAD_EXAMPLES=False
# SQLite: wait up to 60 s for a lock (the default 5 s fails CLI writes such as `backfill create`
# while the scheduler holds the database on a loaded machine: "database is locked").
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db?timeout=60}
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW_PARALLELISM:-4}
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=${AIRFLOW_PARALLELISM:-4}
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT=${AIRFLOW_PORT:-8080}
export AIRFLOW__API__WORKERS=1
# Task processes report to the API server's execution API; its default URL assumes port 8080.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$AIRFLOW__API__PORT/execution/
# The log servers of the scheduler and triggerer: Airflow binds them on every interface (not
# configurable; they only answer requests signed with this instance's secret key); ports are.
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=${AIRFLOW_LOG_PORT:-8793}
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=${AIRFLOW_TRIGGER_LOG_PORT:-8794}
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}
# RELATE_HOME: the project copy whose stages the DAG runs (default: this checkout); its code
# comes first on the path of the DAG processor and the tasks.
export RELATE_HOME=${RELATE_HOME:-$ROOT}
[ -f scripts/env.sh ] && source scripts/env.sh
export PYTHONPATH="$RELATE_HOME:$PYTHONPATH"

PIDFILE=$AIRFLOW_HOME/standalone.pid
LOGFILE=$AIRFLOW_HOME/standalone.log
PASSWORDS=$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated
URL=http://127.0.0.1:$AIRFLOW__API__PORT

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
  start)
    if running; then echo "airflow: already running (process group $(cat "$PIDFILE")) at $URL"; exit 0; fi
    mkdir -p "$AIRFLOW_HOME"
    AIRFLOW=$(command -v airflow || echo "$ROOT/.venv/bin/airflow")
    "$AIRFLOW" db migrate >>"$LOGFILE" 2>&1
    # setsid: its own session and process group, so stop can end every child it spawns
    setsid "$AIRFLOW" standalone >>"$LOGFILE" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    echo "airflow: starting (process group $!), log $LOGFILE"
    for _ in $(seq 1 120); do
      if curl -fsS "$URL/api/v2/monitor/health" >/dev/null 2>&1; then
        echo "airflow: UI at $URL  (user admin, password in $PASSWORDS)"
        exit 0
      fi
      running || { echo "airflow: standalone exited; see $LOGFILE" >&2; tail -20 "$LOGFILE" >&2; exit 1; }
      sleep 2
    done
    echo "airflow: not healthy after 240 s; see $LOGFILE (still starting? ./scripts/airflow.sh status)" >&2
    exit 1
    ;;
  stop)
    if ! running; then echo "airflow: not running"; rm -f "$PIDFILE"; exit 0; fi
    pgid=$(cat "$PIDFILE")
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 -- "-$pgid" 2>/dev/null || { rm -f "$PIDFILE"; echo "airflow: stopped"; exit 0; }
      sleep 1
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "airflow: killed (did not stop within 30 s)"
    ;;
  status)
    if running; then
      health=$(curl -fsS "$URL/api/v2/monitor/health" 2>/dev/null || echo "not answering yet")
      echo "airflow: running (process group $(cat "$PIDFILE")) at $URL; health: $health"
      echo "airflow: user admin, password in $PASSWORDS"
    else
      echo "airflow: not running"; exit 3
    fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
