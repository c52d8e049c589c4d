#!/usr/bin/env bash
# From a fresh Debian 12 machine to a working zerolora: installs the packages, builds, and runs
# the demo on the tiny real Llama in ../shared/data (override with ZEROLORA_SHARED_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# The reference stack (torch, transformers, peft) for the interop tests; zerolora never needs it.
python3 -m pip install -q -r tools/requirements.txt
./scripts/build.sh
data="${ZEROLORA_SHARED_DATA:-../shared/data}"
model="$data/stories260K-hf"
if [ ! -f "$model/config.json" ]; then
  echo "setup: built, but the demo model is not at $model (set ZEROLORA_SHARED_DATA)" >&2
  exit 1
fi
echo
echo "== zerolora inspect $model"
./build/zerolora inspect "$model" | head -6
echo
echo "== zerolora generate (greedy, bf16)"
./build/zerolora generate --model "$model" --prompt "Once upon a time" --max_new_tokens 60
