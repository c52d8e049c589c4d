#!/usr/bin/env bash
# No file of the repository names a path outside it: a user's clone is all there is. The public
# test data (Alpaca records, Llama-2 tokenizer) is reached only through ZEROLORA_SHARED_DATA;
# .ci/ alone may say where the CI machine keeps it.
# Usage: self_contained_test.sh SOURCE_DIR
set -uo pipefail
cd "$1" || exit 1
pattern='\.\./shared|shared/data|/work/|/home/[a-z]|/Users/|/mnt/'
if command -v git > /dev/null && [ -d .git ]; then
  files() { git ls-files; }
else  # a copy without git: every file but build outputs
  files() { find . -type f -not -path './.git/*' -not -path './build*' -not -path './.venv/*' \
              -not -path './out/*' -not -name '*.pyc' | sed 's|^\./||'; }
fi
found="$(files | grep -v -e '^\.ci/' -e '^tests/self_contained_test\.sh$' | tr '\n' '\0' |
         xargs -0 grep -I -n -E "$pattern" 2> /dev/null)"
if [ -n "$found" ]; then
  echo "these lines name a path outside the repository:"
  echo "$found"
  exit 1
fi
echo "ok: $(files | wc -l) files, none names a path outside the repository"
