#!/usr/bin/env bash
# coregate load vs wrk, back to back, against the shared testbed's upstream (nginx, 1 worker),
# with the testbed's pinning: upstream on SERVER_CPU, generator on CLIENT_CPU.
#   benches/accuracy_vs_wrk.sh [REPEATS] [DURATION_S] [CONNS...]
# Prints one line per run (RPS, p50, CPU µs per request of the generator itself) and writes
# them to target/bench/accuracy.tsv. Needs wrk and nginx (../shared/bench/setup.sh).
# LATENCY_MS=N: the target is coregate's mock provider answering after N ms instead, a known
# latency that neither generator's own queue hides (the generators are not CPU-bound there).
set -eu
HERE="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${COREGATE_BIN:-$HERE/target/release/coregate}"
TESTBED="${TESTBED:-$HERE/../shared/bench}"
SERVER_CPU="${SERVER_CPU:-1}"
CLIENT_CPU="${CLIENT_CPU:-0}"
REPEATS="${1:-3}"
DURATION="${2:-5}"
shift 2 2>/dev/null || shift $#
CONNS="${*:-100 1000}"
LATENCY_MS="${LATENCY_MS:-}"
if [ -n "$LATENCY_MS" ]; then
    URL="http://127.0.0.1:9311/api/small?latency_ms=$LATENCY_MS"
else
    URL="http://127.0.0.1:9001/api/small"
fi
OUT="$HERE/target/bench"
mkdir -p "$OUT"
TSV="$OUT/accuracy.tsv"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk missing: $TESTBED/setup.sh" >&2; exit 2; }

if [ -n "$LATENCY_MS" ]; then
    "$BIN" mock-provider --listen 127.0.0.1:9311 --cores "$SERVER_CPU" >/dev/null 2>&1 &
else
    taskset -c "$SERVER_CPU" "$TESTBED/upstream/start.sh" --fg >/dev/null 2>&1 &
fi
UP=$!
trap 'kill $UP 2>/dev/null; wait $UP 2>/dev/null' EXIT INT TERM
for _ in $(seq 50); do
    curl -fs -o /dev/null "$URL" && break
    sleep 0.1
done

# CPU seconds (user+sys) of a finished child, from /usr/bin/time's output file.
cpu() { awk '{print $1 + $2}' "$1"; }

printf 'tool\tconns\trun\trps\tp50_ms\tcpu_us_per_req\n' > "$TSV"
for c in $CONNS; do
    for r in $(seq "$REPEATS"); do
        /usr/bin/time -f '%U %S' -o "$OUT/wrk.time" taskset -c "$CLIENT_CPU" \
            wrk -t1 -c"$c" -d"${DURATION}s" --latency "$URL" > "$OUT/wrk.txt" 2>&1
        rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
        p50=$(awk '$1 == "50%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' "$OUT/wrk.txt")
        reqs=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
        cpu_us=$(awk -v c="$(cpu "$OUT/wrk.time")" -v n="$reqs" 'BEGIN {printf "%.2f", c * 1e6 / n}')
        printf 'wrk\t%s\t%s\t%s\t%s\t%s\n' "$c" "$r" "$rps" "$p50" "$cpu_us" | tee -a "$TSV"

        rm -rf "$OUT/load"
        /usr/bin/time -f '%U %S' -o "$OUT/load.time" "$BIN" load "$URL" --cores "$CLIENT_CPU" \
            --vus "$c" --duration "${DURATION}s" --connect-rate 0 --log-requests 0 \
            --no-progress --out "$OUT/load" > "$OUT/load.txt" 2>&1
        read -r rps p50 all <<< "$(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
st = s["stages"][0]
print(st["rps"], st["p50_ms"], s["all_responses"])' "$OUT/load/summary.json")"
        cpu_us=$(awk -v c="$(cpu "$OUT/load.time")" -v n="$all" 'BEGIN {printf "%.2f", c * 1e6 / n}')
        printf 'coregate\t%s\t%s\t%s\t%s\t%s\n' "$c" "$r" "$rps" "$p50" "$cpu_us" | tee -a "$TSV"
    done
done
