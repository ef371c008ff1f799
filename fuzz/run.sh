#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer on the stable toolchain and runs them.
#
#   fuzz/run.sh <target|all> <seconds> [extra libFuzzer flags...]
#
# Targets: request_head chunked response_head websocket_frames config meter. Each runs with its
# corpus fuzz/corpus/<target> (grown in place), its dictionary, a max input length, and
# limits that turn a hang (-timeout) or an unbounded allocation into a crash: -rss_limit_mb,
# and a cap on single allocations (256 MiB) in fuzz/src/lib.rs, because -malloc_limit_mb
# (passed too) acts only through a sanitizer's malloc hooks, which this build has not. Crashes go to fuzz/artifacts/<target>/. Extra flags go
# to libFuzzer as they are (-jobs=8 -workers=8 on a bigger machine). docs/fuzzing.md says more.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
all=(request_head chunked response_head websocket_frames config meter)

usage() {
    echo "usage: $0 <target|all> <seconds> [libFuzzer flags...]; targets: ${all[*]}" >&2
    exit 2
}

[[ $# -ge 2 ]] || usage
which=$1
seconds=$2
shift 2
[[ $seconds =~ ^[0-9]+$ ]] || usage
if [[ $which == all ]]; then
    targets=("${all[@]}")
else
    case " ${all[*]} " in
    *" $which "*) targets=("$which") ;;
    *) usage ;;
    esac
fi

# Stable rustc has no -Zsanitizer=fuzzer, but LLVM's SanitizerCoverage pass can be asked
# for directly: the same edge counters, PC table and comparison hooks that libFuzzer reads.
# --cfg fuzzing is what cargo-fuzz sets too. The explicit --target keeps these flags off
# build scripts and proc macros (they would fail to link without libFuzzer).
triple=x86_64-unknown-linux-gnu
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing"
# The gateway (for the config and meter targets) is built only when one is asked for.
bins=(--no-default-features)
for t in "${targets[@]}"; do
    bins+=(--bin "$t")
    if [[ $t == config || $t == meter ]]; then
        bins[0]=--features=config
    fi
done
# FUZZ_BUILD_LOCK=<file>: the build (not the run) holds this flock, where builds must not
# overlap. FUZZ_SKIP_BUILD=1: run the binaries already built (a tree mid-edit elsewhere).
lock=()
if [[ -n ${FUZZ_BUILD_LOCK:-} ]]; then
    lock=(flock "$FUZZ_BUILD_LOCK")
fi
if [[ ${FUZZ_SKIP_BUILD:-0} != 1 ]]; then
    (cd "$here" && "${lock[@]}" cargo build --release --target "$triple" "${bins[@]}")
fi

# The longest input worth trying per target: a head near the gateway's 16 KiB limit, a
# chunked body with room for several chunks, frame streams, a config file.
max_len() {
    case $1 in
    request_head | response_head) echo 20000 ;;
    chunked) echo 8192 ;;
    websocket_frames) echo 4096 ;;
    config) echo 8192 ;;
    meter) echo 8192 ;;
    esac
}

dict() {
    case $1 in
    request_head | response_head) echo http ;;
    chunked) echo chunked ;;
    websocket_frames) echo websocket ;;
    config) echo toml ;;
    meter) echo meter ;;
    esac
}

for t in "${targets[@]}"; do
    mkdir -p "$here/corpus/$t" "$here/artifacts/$t"
    echo "== $t: ${seconds}s" >&2
    "$here/target/$triple/release/$t" \
        "$here/corpus/$t" \
        -dict="$here/dict/$(dict "$t").dict" \
        -max_len="$(max_len "$t")" \
        -max_total_time="$seconds" \
        -timeout=5 \
        -rss_limit_mb=512 \
        -malloc_limit_mb=256 \
        -print_final_stats=1 \
        -artifact_prefix="$here/artifacts/$t/" \
        "$@"
done
