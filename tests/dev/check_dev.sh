#!/usr/bin/env bash
# ./dev as a newcomer meets it: help, unknown commands, plain output when not on a terminal, and
# `./dev run` building only what it runs (in a fresh build directory).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

"$root/dev" --help >"$tmp/help" || fail "--help exited $?"
grep -q '^  ./dev run' "$tmp/help" || fail "--help does not list the commands"
"$root/dev" help >/dev/null || fail "help exited $?"

rc=0
"$root/dev" bogus 2>"$tmp/err" || rc=$?
[ "$rc" -eq 2 ] || fail "an unknown command exited $rc, not 2"
grep -q "unknown command 'bogus'" "$tmp/err" || fail "the unknown command is not named: $(cat "$tmp/err")"

# A fresh build directory: `./dev run --version` configures, builds and runs the daemon.
SHMBROKER_BUILD_DIR="$tmp/build" "$root/dev" run --version >"$tmp/out" 2>"$tmp/log" ||
  fail "./dev run --version: $(tail -20 "$tmp/log")"
grep -q '^shmbrokerd ' "$tmp/out" || fail "the daemon did not run: $(cat "$tmp/out")"
if grep -q $'\033' "$tmp/log"; then fail "escape codes in output that is not a terminal"; fi
built=$(ls "$tmp/build/bin" | sort | tr '\n' ' ')
[ "$built" = "shmbrokerd shmctl " ] || fail "./dev run built more than it runs: $built"
if grep -q 'test' "$tmp/build/.ninja_log"; then fail "./dev run compiled tests"; fi
echo "./dev checks passed"
