#!/usr/bin/env bash
# The test command: set-up, then the whole suite. pytest's "no tests collected" (exit 5) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --with-browser || exit 1
source scripts/env.sh
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
rc=$?
if [ "$rc" -eq 5 ]; then echo "test: pytest collected no tests; that is a failure" >&2; exit 1; fi
exit "$rc"
