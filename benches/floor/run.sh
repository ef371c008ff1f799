#!/usr/bin/env bash
# The floor: what a proxy that does nothing but move bytes costs on this machine, measured on
# the shared testbed beside nginx and coregate (docs/benchmarks.md, "The floor").
#   benches/floor/run.sh [REPEATS] [run.sh options...]
# Builds forward_epoll (and forward_uring when liburing-dev is installed) into target/floor/,
# writes a targets file there (the testbed's own lines plus the forwarders) and runs the
# testbed REPEATS times (default 3). Results: target/floor/floor-N.jsonl.
set -eu
. "$(dirname "$0")/../testbed.sh"
REPEATS="${1:-3}"
shift 1 2>/dev/null || true
testbed_prepare floor
targets=nginx,coregate,fwd-epoll
grep -v '^#' "$TESTBED/targets.conf" | grep -v '^$' > "$OUT/targets.conf"
echo "fwd-epoll 8085 yes small,big $OUT/forward_epoll {PORT} 9001" >> "$OUT/targets.conf"
if gcc -O2 -Wall -D_GNU_SOURCE -o "$OUT/forward_uring" "$HERE/benches/floor/forward_uring.c" -luring 2>/dev/null; then
    echo "fwd-uring 8086 yes small,big $OUT/forward_uring {PORT} 9001 1" >> "$OUT/targets.conf"
    targets=$targets,fwd-uring
else
    echo "liburing-dev missing: measuring the epoll floor only" >&2
fi
[ $# -gt 0 ] || set -- --paths small,big --conns 100,1000 --duration 4 --warmup 1
testbed_repeat "$REPEATS" "$targets" floor "$@"
