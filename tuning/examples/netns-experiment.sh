#!/usr/bin/env bash
# The experiment recorded in docs/tuning.md: baseline vs high-concurrency vs low-latency on the
# gateway's proxied mock path, inside a new network namespace so that the host's net.* values are
# never touched (and with COREGATE_TUNING_NET_ONLY=1, no host-wide key either).
#
#   sudo tuning/examples/netns-experiment.sh OUTDIR [LOAD ARGS...]
#
# Default load: 2,000 VUs for 15 s on /v1/mock/api/small. The gateway (with its embedded mock
# provider) runs on CPU 1 and is restarted after every apply, so listen-time values such as
# somaxconn take effect; the generator runs on CPU 0. GATEWAY_CONFIG=FILE starts the gateway
# with that config (e.g. a larger server.backlog, so somaxconn is what caps it).
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "netns-experiment: needs root (unshare -n, sysctl writes)" >&2; exit 2; }
out=${1:?usage: netns-experiment.sh OUTDIR [LOAD ARGS...]}
shift
bin=${COREGATE_BIN:-$here/target/release/coregate}
[ -x "$bin" ] || { echo "netns-experiment: build first (cargo build --release)" >&2; exit 2; }
if [ $# -eq 0 ]; then
	set -- http://127.0.0.1:18080/v1/mock/api/small --cores 0 --vus 2000 --duration 15s --no-progress
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ "${NETNS_EXPERIMENT_INSIDE:-0}" != 1 ]; then
	exec env NETNS_EXPERIMENT_INSIDE=1 unshare -n -- "$0" "$out" "$@"
fi

ip link set lo up
pidfile=$out/gateway.pid
config_arg=""
if [ -n "${GATEWAY_CONFIG:-}" ]; then
	config_arg="--config $(cd "$(dirname "$GATEWAY_CONFIG")" && pwd)/$(basename "$GATEWAY_CONFIG")"
fi
cat > "$out/restart-gateway.sh" <<RESTART
#!/bin/sh
# Stops the previous gateway (if any) and starts a fresh one, so it listens with the values
# just applied.
set -eu
if [ -s "$pidfile" ]; then
	kill "\$(cat "$pidfile")" 2>/dev/null || true
	sleep 1
fi
taskset -c 1 "$bin" serve $config_arg --cores 1 --listen 127.0.0.1:18080 --admin 127.0.0.1:19901 \
	>> "$out/gateway.log" 2>&1 &
echo \$! > "$pidfile"
for _ in \$(seq 100); do
	curl -fs -o /dev/null http://127.0.0.1:18080/v1/mock/api/small && exit 0
	sleep 0.1
done
echo "gateway did not come up" >&2
exit 1
RESTART
chmod +x "$out/restart-gateway.sh"
trap 'if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi' EXIT

COREGATE_BIN=$bin COREGATE_TUNING_NET_ONLY=1 COREGATE_TUNING_DIR=$out/backups \
	"$here/tuning/experiment" --profiles baseline,high-concurrency,low-latency \
	--repeat-baseline 3 --cooldown 5 --after-apply "$out/restart-gateway.sh" \
	--out "$out/experiment" -- "$@"
