#!/usr/bin/env bash
# End-to-end checks of the `zerolora` executable: outputs, exit codes and error messages.
# Usage: cli_test.sh ZEROLORA_BINARY SHARED_DATA_DIR
set -uo pipefail
bin="$1"
shared="${ZEROLORA_SHARED_DATA:-$2}"
model="$shared/stories260K-hf"
failures=0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

check() {  # check NAME CONDITION-EXIT-CODE
  if [ "$2" -eq 0 ]; then echo "ok   $1"; else echo "FAIL $1"; failures=$((failures + 1)); fi
}

if [ ! -f "$model/config.json" ]; then
  echo "cli_test: shared data not found at $shared (set ZEROLORA_SHARED_DATA)" >&2
  exit 1
fi

out="$("$bin" generate --model "$model" --prompt "Once upon a time" --max_new_tokens 20 --dtype fp32 2>/dev/null)"
[[ "$out" == "Once upon a time, there was a little girl named Lily. She loved to play out"* ]]
check "generate continues the prompt as Transformers does" $?

"$bin" inspect "$model" > "$work/inspect.txt"
grep -q "5 layers, hidden 64" "$work/inspect.txt" && grep -q "model.layers.4.mlp.down_proj.weight" "$work/inspect.txt"
check "inspect lists config and tensors" $?

"$bin" data-preview --model "$model" --train_file "$shared/alpaca_en_demo.json" --max_seq_length 64 \
  --num_examples 3 --output "$work/preview.jsonl" 2> "$work/preview.err"
[ "$(wc -l < "$work/preview.jsonl")" -eq 3 ] && grep -q '"labels":\[-100' "$work/preview.jsonl" \
  && grep -q "999 records read" "$work/preview.err"
check "data-preview writes JSON Lines with masked labels" $?

"$bin" generate --model "$work/nowhere" --prompt x > /dev/null 2> "$work/err.txt"
code=$?
[ "$code" -eq 1 ] && grep -q "nowhere: not a directory" "$work/err.txt"
check "missing model: exit 1 and the path named" $?

"$bin" generate --model "$model" > /dev/null 2>&1
[ $? -eq 2 ]
check "missing required flag: exit 2" $?

"$bin" generate --model "$model" --prompt x --dtype fp16 > /dev/null 2>&1
[ $? -eq 2 ]
check "invalid flag value: exit 2" $?

printf '[{"instruction": "x"}]' > "$work/bad.json"
"$bin" data-preview --model "$model" --train_file "$work/bad.json" > /dev/null 2> "$work/err.txt"
code=$?
[ "$code" -eq 1 ] && grep -q "bad.json: record 0 has no field 'output'" "$work/err.txt"
check "bad record: exit 1 naming file, record and field" $?

"$bin" --help | grep -q "data-preview"
check "--help lists the commands" $?

exit $((failures > 0))
