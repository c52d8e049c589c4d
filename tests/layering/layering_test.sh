#!/usr/bin/env bash
# The layers of src/ hold by construction: a file of the io layer builds with io's and lower
# layers' headers, and does not build when it includes a header of a layer above (model).
# Usage: layering_test.sh CMAKE BUILD_DIR
set -uo pipefail
cmake="$1"
build="$2"
"$cmake" --build "$build" --target layering_allowed > /dev/null 2>&1 ||
  { echo "FAIL: io including its own and lower layers' headers does not build"; exit 1; }
if output="$("$cmake" --build "$build" --target layering_violation 2>&1)"; then
  echo "FAIL: io including a model header built"
  exit 1
fi
echo "$output" | grep -q "model/llama_model.hpp: No such file" ||
  { echo "FAIL: the violation failed for another reason:"; echo "$output" | tail -5; exit 1; }
echo "ok: io builds with core/ops/io headers and not with a model header"
