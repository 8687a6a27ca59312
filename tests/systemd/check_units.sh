#!/usr/bin/env bash
# The units as systemd itself reads them: `systemd-analyze verify` passes with no unknown keys,
# and `systemd-analyze security --offline=yes` rates each service at or below 1.0 ("SAFE").
set -euo pipefail
units=$1  # A directory with the units: shmbroker.{service,socket}, shmbroker-metrics.{service,timer}
cd "$units"
# --man=no: the man pages are checked by tests/man (they are not installed here).
out=$(systemd-analyze verify --man=no shmbroker.socket shmbroker.service \
  shmbroker-metrics.service shmbroker-metrics.timer 2>&1) || {
  echo "$out"
  echo "systemd-analyze verify failed"
  exit 1
}
if grep -Ei 'unknown (key|section)|lvalue|ignoring' <<<"$out"; then
  echo "systemd-analyze verify warned about the units"
  exit 1
fi
for service in shmbroker.service shmbroker-metrics.service; do
  sec=$(systemd-analyze security --offline=yes "$service" 2>&1)
  line=$(grep 'Overall exposure level' <<<"$sec")
  echo "$line"
  score=$(sed -E 's/.*: ([0-9]+\.[0-9]+) .*/\1/' <<<"$line")
  awk -v s="$score" 'BEGIN { exit !(s <= 1.0) }' || {
    echo "$sec"
    echo "$service: exposure $score is above 1.0"
    exit 1
  }
done
