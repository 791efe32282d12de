#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install ncprop with all extras.
# Sourced by ci/test.sh and ci/reproduce.sh, so each README command works on a fresh machine.
# torch is pinned by ci/constraints.txt (the CPU build that lies on the CI machine's disk);
# pyproject.toml itself keeps the range users expect.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NCPROP_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.ncprop-installed"
want="$(cat "$root/pyproject.toml" "$root/ci/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -m pip install --quiet -c "$root/ci/constraints.txt" -e "$root[all]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -c "import ncprop, torch, ray, mnist1d" \
    || { echo "ci/env.sh: installing ncprop into $venv failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
