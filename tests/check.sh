# Sourced by the shell tests: `check NAME STATUS` prints "ok" or "FAIL" for one named check
# (STATUS: the exit status of the condition) and counts failures; the script ends with
# `exit $((failures > 0))`. check returns 1 on failure, so `check ... || show details` works.
failures=0
check() {
  if [ "$2" -eq 0 ]; then
    echo "ok   $1"
  else
    echo "FAIL $1"
    failures=$((failures + 1))
    return 1
  fi
}
