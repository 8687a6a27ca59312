#!/usr/bin/env bash
# shmbroker-metrics.service's own command, run as systemd would run it (without systemd as PID 1)
# against a private daemon: it writes the textfile collector's file whole, readable by all, and
# a failed run keeps the last good file. Also: the unit may write where it writes its file.
set -euo pipefail
build=$(cd "$1" && pwd)
unit=$build/systemd/test/shmbroker-metrics.service
tmp=$(mktemp -d)
daemon_pid=
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "check_metrics_unit: $*" >&2
  exit 1
}

setting() { sed -n "s/^$1=//p" "$unit"; }
out=$(setting Environment | sed -n 's/^OUT=//p')
[ "$out" = /var/lib/node_exporter/textfile_collector/shmbroker.prom ] || fail "OUT is '$out'"
[ "$(setting ReadWritePaths)" = "$(dirname "$out")" ] ||
  fail "ReadWritePaths= is not the directory of $out"
command=$(setting ExecStart)
umask_value=$(setting UMask)
[ -n "$command" ] && [ -n "$umask_value" ] || fail "no ExecStart= or UMask= in $unit"

export SHMBROKER_SOCKET=$tmp/run/shmbroker.sock SHMBROKERD_CONFIG=
"$build/bin/shmbrokerd" --log-level warn &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$SHMBROKER_SOCKET" ] && break; sleep 0.05; done

# systemd puts ${OUT} in the command itself; here sh reads it from the environment: the same.
export OUT=$tmp/textfile/shmbroker.prom
mkdir "$tmp/textfile"
run() { (umask "$umask_value" && eval "$command"); }
run || fail "the unit's command failed"
[ -f "$OUT" ] || fail "no $OUT"
[ ! -e "$OUT.tmp" ] || fail "the temporary file is left behind"
[ "$(stat -c %a "$OUT")" = 644 ] || fail "$OUT has mode $(stat -c %a "$OUT"), not 644"
grep -qx "shmbroker_info{version=\"[^\"]*\",pid=\"$daemon_pid\",socket=\"$SHMBROKER_SOCKET\"} 1" \
  "$OUT" || fail "$OUT does not describe the daemon:"$'\n'"$(cat "$OUT")"
[ "$(ls "$tmp/textfile")" = shmbroker.prom ] || fail "other files: $(ls "$tmp/textfile")"

# No daemon: the run fails and the last good file stays as it was (never an empty one).
good=$(cat "$OUT")
kill "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=
if run 2>"$tmp/err"; then fail "the unit's command succeeded without a daemon"; fi
grep -q UNAVAILABLE "$tmp/err" || fail "no UNAVAILABLE in: $(cat "$tmp/err")"
[ "$(cat "$OUT")" = "$good" ] || fail "a failed run changed $OUT"
echo "check_metrics_unit: the metrics unit writes the textfile atomically"
