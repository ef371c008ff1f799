#!/usr/bin/env bash
# Requests through a reload and an upgrade (docs/benchmarks.md, "Reload and upgrade under load").
#
#   benches/upgrade/run.sh [VUS] [SECONDS]        (root: it makes a network namespace)
#
# In a private network namespace (net.ipv4.tcp_migrate_req = 1, loopback only), with the
# release binary: a mock provider process, a gateway on 2 shards, and `coregate load` with
# VUS keep-alive clients for SECONDS. A third of the way in the gateway is sent SIGHUP with a
# changed config (a new route); two thirds in, `serve --takeover` replaces it. A WebSocket
# tunnel is held open through both; the old process's drain timeout (a third of the run less
# 2 s) ends it with a Close frame. Prints the load summary's totals, how the tunnel ended and
# both processes' logs; the run passes when no request failed.
set -euo pipefail
vus=${1:-200}
secs=${2:-30}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release/coregate"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }

if [ "${COREGATE_IN_NETNS:-}" != 1 ]; then
    exec unshare -n env COREGATE_IN_NETNS=1 bash "$0" "$vus" "$secs"
fi
ip link set lo up
echo 1 > /proc/sys/net/ipv4/tcp_migrate_req

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

"$bin" mock-provider --listen 127.0.0.1:9101 >"$dir/mock.log" 2>&1 &
pids+=($!)
config() {
    cat <<EOF
[server]
listen = "127.0.0.1:9100"
cores = "0-1"
drain_timeout_ms = $((secs * 1000 / 3 - 2000))
[admin]
listen = "127.0.0.1:9109"
[[providers]]
name = "m"
endpoints = ["127.0.0.1:9101"]
[[routes]]
prefix = "/m/"
provider = "m"
rewrite = "/"
$1
EOF
}
config "" >"$dir/coregate.toml"
"$bin" serve --config "$dir/coregate.toml" >"$dir/old.log" 2>&1 &
old=$!
pids+=("$old")
sleep 1

# A tunnel held open through the reload and the upgrade (it ends at the old drain's timeout).
python3 - >"$dir/ws.log" 2>&1 <<'EOF' &
import socket, time
s = socket.create_connection(("127.0.0.1", 9100))
s.sendall(b"GET /m/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
print(s.recv(4096).split(b"\r\n")[0].decode())
buf, n = b"", 0
while True:
    try:
        s.sendall(bytes([0x81, 0x82, 1, 2, 3, 4, ord("h") ^ 1, ord("i") ^ 2]))
        chunk = s.recv(64)
    except OSError as e:
        print("tunnel error after", n, "echoes:", e); break
    if not chunk:
        print("tunnel cut (no Close frame) after", n, "echoes"); break
    buf += chunk
    # Unmasked server frames with short payloads: echoes, then maybe the gateway's Close.
    while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
        size = 2 + (buf[1] & 0x7F)
        frame, buf = buf[:size], buf[size:]
        if frame[0] & 0x0F == 8:
            code = int.from_bytes(frame[2:4], "big")
            print("tunnel closed after", n, "echoes: Close", code, frame[4:].decode())
            raise SystemExit
        n += 1
    time.sleep(0.1)
EOF
tunnel=$!
pids+=("$tunnel")

"$bin" load "http://127.0.0.1:9100/m/bytes?size=100" --vus "$vus" --duration "${secs}s" \
    --cores 0 --no-progress --out "$dir/load" >"$dir/load.log" 2>&1 &
load=$!
pids+=("$load")

sleep $((secs / 3))
config $'[[routes]]\nprefix = "/extra/"\nprovider = "m"' >"$dir/coregate.toml"
kill -HUP "$old"
echo "t=$((secs / 3))s: SIGHUP (a new route)"
sleep $((secs / 3))
"$bin" serve --config "$dir/coregate.toml" --takeover >"$dir/new.log" 2>&1 &
pids+=($!)
echo "t=$((2 * secs / 3))s: serve --takeover"
wait "$load" || true
wait "$tunnel" || true

python3 - "$dir/load/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"requests {s['total_requests']}, failed {s['failed_requests']}, errors {s['errors']}, "
      f"p99 {s['p99_ms']} ms, max {s['max_ms']} ms")
EOF
echo "--- tunnel"; cat "$dir/ws.log"
echo "--- old"; cat "$dir/old.log"
echo "--- new"; cat "$dir/new.log"
