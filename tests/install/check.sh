#!/usr/bin/env bash
# Installs the build into a temporary prefix, then builds the README example against it twice:
# through find_package(shmbroker) and through pkg-config. Runs both against the installed daemon.
set -euo pipefail
build_dir=$1
src_dir=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
daemon_pid=
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" || true
  rm -rf "$tmp"
}
trap cleanup EXIT

cmake --install "$build_dir" --prefix "$tmp/prefix" >/dev/null
# Everything lands under the prefix asked for, nothing elsewhere on the machine.
if grep -v "^$tmp/prefix/" "$build_dir/install_manifest.txt"; then
  echo "installed outside the prefix"
  exit 1
fi
for f in bin/shmbrokerd include/shmbroker/client.h include/shmbroker/status.h \
         include/shmbroker/segment.h include/shmbroker/version.h lib/libshmbroker.a \
         lib/cmake/shmbroker/shmbrokerConfig.cmake lib/pkgconfig/shmbroker.pc; do
  [ -e "$tmp/prefix/$f" ] || { echo "not installed: $f"; exit 1; }
done
# The service starts the installed daemon.
grep -qx "ExecStart=$tmp/prefix/bin/shmbrokerd --log-level info \$SHMBROKERD_OPTIONS" \
  "$tmp/prefix/lib/systemd/system/shmbroker.service" || { echo "wrong or missing ExecStart"; exit 1; }
[ -e "$tmp/prefix/lib/systemd/system/shmbroker.socket" ] || { echo "no socket unit"; exit 1; }
# The metrics service runs the installed shmctl; its timer comes with it.
grep -qF "ExecStart=/bin/sh -c '$tmp/prefix/bin/shmctl stats --prometheus " \
  "$tmp/prefix/lib/systemd/system/shmbroker-metrics.service" ||
  { echo "wrong or missing ExecStart in shmbroker-metrics.service"; exit 1; }
[ -e "$tmp/prefix/lib/systemd/system/shmbroker-metrics.timer" ] || { echo "no metrics timer"; exit 1; }
[ -x "$tmp/prefix/bin/shmctl" ] || { echo "shmctl not installed"; exit 1; }
# Every setting of the example configuration is one the daemon accepts.
example="$tmp/prefix/share/doc/shmbroker/shmbrokerd.conf.example"
[ -e "$example" ] || { echo "no example configuration"; exit 1; }
sed -E "s/^#([a-z-]+ = )/\1/; s|^socket = .*|socket = \"$tmp/example.sock\"|" "$example" >"$tmp/example.conf"
grep -q '^max-memory = ' "$tmp/example.conf" || { echo "the example sets nothing"; exit 1; }
"$tmp/prefix/bin/shmbrokerd" --config "$tmp/example.conf" --log-level off &
example_pid=$!
for _ in $(seq 100); do [ -S "$tmp/example.sock" ] && break; sleep 0.05; done
kill "$example_pid"
wait "$example_pid" || { echo "the daemon rejected the example configuration"; exit 1; }
# Private headers stay private.
[ ! -e "$tmp/prefix/include/shmbroker/wire.h" ] || { echo "wire.h was installed"; exit 1; }

cmake -S "$src_dir" -B "$tmp/consumer" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/consumer" >/dev/null
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
# The .pc file leaves the language standard to the consumer and names protobuf as a dependency.
if pkg-config --cflags shmbroker | grep -q -- '-std='; then
  echo "shmbroker.pc forces a -std"
  exit 1
fi
pkg-config --print-requires-private shmbroker | grep -qx 'protobuf' || { echo "no Requires.private: protobuf"; exit 1; }
g++ -std=c++20 -o "$tmp/example-pc" "$src_dir/example.cc" $(pkg-config --cflags --libs --static shmbroker)
# A newer standard works as well.
g++ -std=c++23 -fsyntax-only "$src_dir/example.cc" $(pkg-config --cflags shmbroker)

export SHMBROKER_SOCKET="$tmp/run/shmbroker.sock"
export SHMBROKERD_CONFIG=  # Not the machine's /etc/shmbroker/shmbrokerd.conf.
"$tmp/prefix/bin/shmbrokerd" --log-level warn &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$SHMBROKER_SOCKET" ] && break; sleep 0.05; done
out=$("$tmp/consumer/example")
echo "$out"
[ "$out" = "demo/weights <f4 4194304 bytes, w[3] = 1.5" ] || { echo "unexpected output"; exit 1; }
out=$("$tmp/example-pc")
[ "$out" = "demo/weights <f4 4194304 bytes, w[3] = 1.5" ] || { echo "unexpected output (pkg-config)"; exit 1; }
echo "install check passed"
