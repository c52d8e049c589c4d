#!/usr/bin/env bash
# Installs what the tests need (Debian packages, and the Python reference stack in .venv),
# builds, and runs every test; extra arguments go to ctest (e.g. -L unit, -R cli).
# Tests against the public Alpaca records and the Llama-2 tokenizer, which are not part of the
# repository, run when ZEROLORA_SHARED_DATA names a folder holding alpaca_en_demo.json and
# llama2-tokenizer.model; without it they are reported as skipped, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --test
./scripts/python-env.sh
./scripts/build.sh -DZEROLORA_BUILD_TESTS=ON -DZEROLORA_BUILD_BENCH=ON \
  -DPython3_EXECUTABLE="$PWD/.venv/bin/python" > build.log 2>&1 || { tail -50 build.log; exit 1; }
status=0
ctest --test-dir build --output-on-failure "$@" || status=$?
# ctest shows only the word "Skipped": say why each skipped test was skipped.
log=build/Testing/Temporary/LastTest.log
[ ! -f "$log" ] || python3 tools/ctest_skips.py "$log"
exit $status
