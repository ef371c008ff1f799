# Sourced by the benches/*/run.sh scripts that drive the shared testbed
# (../shared/bench, or $TESTBED): where things are, the coregate build, the zero-logic
# epoll forwarder, and the repeated runs.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TESTBED="${TESTBED:-$HERE/../shared/bench}"

# testbed_prepare NAME: $OUT=target/NAME/, $COREGATE_BIN (exported: the testbed's own
# targets file starts it) checked built, and $OUT/forward_epoll compiled.
testbed_prepare() {
    OUT="$HERE/target/$1"
    mkdir -p "$OUT"
    export COREGATE_BIN="${COREGATE_BIN:-$HERE/target/release/coregate}"
    [ -x "$COREGATE_BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
    gcc -O2 -Wall -D_GNU_SOURCE -o "$OUT/forward_epoll" "$HERE/benches/floor/forward_epoll.c"
}

# testbed_repeat REPEATS TARGETS PREFIX [run.sh options...]: the testbed REPEATS times with
# $OUT/targets.conf, into $OUT/PREFIX-1.jsonl, $OUT/PREFIX-2.jsonl, ...
testbed_repeat() {
    local repeats=$1 targets=$2 prefix=$3 i
    shift 3
    for i in $(seq "$repeats"); do
        "$TESTBED/run.sh" --targets-file "$OUT/targets.conf" --targets "$targets" "$@" \
            --out "$OUT/$prefix-$i.jsonl"
    done
}
