#!/usr/bin/env bash
# Creates .venv with the pinned stack (idempotent: a stamp records the requirements' hash)
# and makes sure a Java runtime for Spark is present. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"' \
  || { echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if ! command -v java >/dev/null 2>&1; then
  echo "setup: no Java runtime; installing one for Spark (apt-get)" >&2
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    echo "setup: install Java 17+ for PySpark, then rerun" >&2; exit 1
  fi
fi

# Debian's chromium for tests/test_airflow_live.py (Playwright drives it; its own browser download is
# not used): only for the tests (scripts/test.sh passes --with-browser), never for the main command.
if [ "${1:-}" = "--with-browser" ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "setup: installing chromium for the Airflow UI test (apt-get)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || echo "setup: chromium could not be installed; tests/test_airflow_live.py will be skipped" >&2
fi

want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f .venv/.installed ] || [ "$(cat .venv/.installed)" != "$want" ]; then
  echo "setup: installing the pinned stack into .venv (first time: several minutes)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # torch==2.13.0 is pinned in requirements.txt; installing it in the same command as the
  # rest makes pip take the local CPU build instead of pulling CUDA wheels.
  .venv/bin/python -m pip install -q -r requirements.txt
  # the project itself, editable, so Airflow workers and spark-submit import it from anywhere
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > .venv/.installed
fi
