#!/usr/bin/env bash
# The README's test command: sets up .venv if needed, then runs the whole suite in parallel
# (pytest-xdist) with the derandomised `ci` Hypothesis profile. Extra arguments go to pytest,
# e.g. `bash ci/test.sh -m fast` for the quick local gate.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh
export NCPROP_HYPOTHESIS_PROFILE="${NCPROP_HYPOTHESIS_PROFILE:-ci}"
export NCPROP_PROGRESS=0
exec python -m pytest -n "${NCPROP_WORKERS:-auto}" -p no:cacheprovider "$@"
