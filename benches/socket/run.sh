#!/usr/bin/env bash
# The socket path at 100 to 18,000 connections, beside nginx and the zero-logic forwarder
# (docs/benchmarks.md, "The io_uring socket path"; issue 13).
#   benches/socket/run.sh [REPEATS] [run.sh options...]
# Targets: nginx; coregate (multishot receives, the default); coregate-poll (the same
# binary with COREGATE_NO_MULTISHOT_RECV=1: glommio's readiness-poll reads); coregate-before
# when BEFORE_BIN names an older build; fwd-epoll (benches/floor). Runs the shared testbed
# REPEATS times (default 3) into target/socket/socket-N.jsonl; then
#   python3 benches/socket/table.py target/socket/socket-*.jsonl
# prints the medians and writes the flatness chart.
set -eu
. "$(dirname "$0")/../testbed.sh"
REPEATS="${1:-3}"
shift 1 2>/dev/null || true
testbed_prepare socket
serve='serve --cores {CPUS} --listen 127.0.0.1:{PORT} --upstream {UPSTREAM} --admin ""'
{
    grep '^nginx ' "$TESTBED/targets.conf"
    echo "coregate 8084 yes health,small,big $COREGATE_BIN $serve"
    echo "coregate-poll 8086 yes health,small,big env COREGATE_NO_MULTISHOT_RECV=1 $COREGATE_BIN $serve"
    [ -z "${BEFORE_BIN:-}" ] || echo "coregate-before 8087 yes health,small,big $BEFORE_BIN $serve"
    echo "fwd-epoll 8085 yes small,big $OUT/forward_epoll {PORT} 9001"
} > "$OUT/targets.conf"
targets=nginx,coregate,coregate-poll${BEFORE_BIN:+,coregate-before},fwd-epoll
[ $# -gt 0 ] || set -- --paths health,small,big --conns 100,1000,5000,15000 --duration 4 --warmup 1
testbed_repeat "$REPEATS" "$targets" socket "$@"
