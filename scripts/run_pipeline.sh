#!/usr/bin/env bash
# The main command: set-up, then the whole pipeline on the embedded default (the simulator)
# with `dvc repro`, then a short summary (goals met or missed, what was published). Extra
# arguments go to dvc repro (e.g. a stage name, or --force). Every figure: `dvc metrics show`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
[ -d .dvc ] || dvc init -q $( [ -d .git ] || echo --no-scm )
dvc repro "$@"
python -m pipelines.summary
