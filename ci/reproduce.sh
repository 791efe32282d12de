#!/usr/bin/env bash
# The README's main command: sets up .venv if needed, runs the `toy` preset (the paper's
# qualitative findings at CPU scale) into results/toy and writes the report there.
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/env.sh
out="${1:-results/toy}"
ncprop sweep toy --out "$out"
ncprop report "$out"
echo "database: $out/results.sqlite; figures, exports and summary: $out/report/ (summary: $out/report/summary.md)"
