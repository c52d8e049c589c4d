#!/usr/bin/env bash
# Builds (if needed) and runs every test. The real-model tests read ../shared/data
# (override with ZEROLORA_SHARED_DATA=/path/to/shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh > build.log 2>&1 || { tail -50 build.log; exit 1; }
python3 -c "import torch, transformers, peft, safetensors, pytest" 2> /dev/null || {
  echo "test.sh: the interop tests need the PyPI reference stack: python3 -m pip install -r tools/requirements.txt" >&2
  exit 1
}
ctest --test-dir build --output-on-failure
