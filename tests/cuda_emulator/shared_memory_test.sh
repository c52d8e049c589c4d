#!/usr/bin/env bash
# Every function-local static of the emulated kernels' objects (the .cu files declare none but
# __shared__ ones) lies in the executable's zl_emu_shared section, which the emulator fills with
# garbage before each block: a __shared__ array that shared_memory.ld missed would start zeroed,
# once, and hide reads of unwritten shared memory.
# Usage: shared_memory_test.sh NM EXECUTABLE OBJECTS (a CMake list: the backend's objects, of
# which those of kernels/ are checked)
set -uo pipefail
nm_tool="$1" executable="$2"
IFS=';' read -ra objects <<< "$3"
symbols="$(mktemp)"
trap 'rm -f "$symbols"' EXIT
"$nm_tool" --defined-only "$executable" > "$symbols" || { echo "FAIL: nm $executable"; exit 1; }
start=$(awk '$3 == "__start_zl_emu_shared" { print $1 }' "$symbols")
stop=$(awk '$3 == "__stop_zl_emu_shared" { print $1 }' "$symbols")
[[ -n "$start" && -n "$stop" ]] || { echo "FAIL: $executable has no zl_emu_shared section"; exit 1; }
checked=0 missed=0
for object in "${objects[@]}"; do
  [[ "$object" == */kernels/*.o ]] || continue
  # Data symbols (b, d: local; B, D: global) whose mangled names are function-local statics.
  for name in $("$nm_tool" --defined-only "$object" | awk '$2 ~ /^[bBdD]$/ && $3 ~ /^_ZZ/ { print $3 }'); do
    address=$(awk -v name="$name" '$3 == name { print $1; exit }' "$symbols")
    checked=$((checked + 1))
    if [[ -z "$address" ]] || (( 16#$address < 16#$start || 16#$address >= 16#$stop )); then
      echo "FAIL: $(basename "$object"): $(c++filt "$name" 2>/dev/null || echo "$name")" \
        "is outside zl_emu_shared (at ${address:-nowhere})"
      missed=$((missed + 1))
    fi
  done
done
echo "shared arrays checked=$checked outside_zl_emu_shared=$missed"
(( checked > 0 )) || { echo "FAIL: no __shared__ array found in the kernels' objects"; exit 1; }
(( missed == 0 ))
