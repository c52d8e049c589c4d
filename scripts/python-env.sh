#!/usr/bin/env bash
# Makes .venv, the Python virtual environment of the reference stack that the interop tests,
# fixture scripts and side-by-side benchmarks compare against (torch, transformers, peft, ...;
# several GB). zerolora itself never needs it. Debian's own Python refuses `pip install`
# outside a virtual environment (PEP 668), hence the venv. Re-run after the requirements
# change: it reinstalls only then.
#   python-env.sh [REQUIREMENTS]   default tools/requirements.txt (bench/requirements.txt adds
#                                  what the benchmarks need)
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-tools/requirements.txt}"
venv=.venv
stamp="$venv/zerolora-requirements.txt"
command -v python3 > /dev/null || { echo "python-env: python3 not found: run ./scripts/install-deps.sh --test" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "python-env: could not make $venv (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
wanted="$(cat "$requirements" tools/requirements.txt 2>/dev/null)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "python-env: $venv is up to date"
  exit 0
fi
echo "python-env: installing $requirements into $venv (the reference stack, several GB)"
"$venv/bin/python" -m pip install -q -r "$requirements"
printf '%s' "$wanted" > "$stamp"
