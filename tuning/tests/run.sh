#!/usr/bin/env bash
# Tests for tuning/ (apply, revert, show, experiment, record-baseline).
#
# Runs as root and re-executes itself inside a new network namespace
# (`unshare -n`): net.* sysctls are per namespace, so every value the tests
# change lives and dies with that namespace and the host's are never touched.
# Host-wide keys (fs.*, vm.*, kernel.*) are NOT per namespace, so the tests
# only ever apply generated net.*-only copies of the profiles, and export
# COREGATE_TUNING_NET_ONLY=1 so apply/revert refuse non-net keys even if a
# test got that wrong. The outer process snapshots every key the profiles
# name, on the host, before and after, and fails if one changed.
#
# Output: one "ok"/"FAIL" line per check, then a final line
# "N passed, M failed". Exit status is non-zero on any failure.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
tuning=$(cd "$here/.." && pwd)
repo=$(cd "$tuning/.." && pwd)

all_profile_keys() {
	# Every key named by a shipped profile (net and host-wide).
	sed -n 's/^[[:space:]]*-\{0,1\}\([A-Za-z0-9_][A-Za-z0-9_./:@+-]*\)[[:space:]]*=.*/\1/p' "$tuning"/profiles/*.conf | sort -u
}

host_snapshot() {
	local k p
	for k in $(all_profile_keys); do
		if [[ $k == */* ]]; then p="/proc/sys/$k"; else p="/proc/sys/${k//./\/}"; fi
		printf '%s=' "$k"
		cat "$p" 2>/dev/null || printf '<absent>\n'
	done
}

# ---------------------------------------------------------------- outer ---
if [ "${COREGATE_TUNING_TEST_INNER:-}" != 1 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "run.sh: must run as root (it needs unshare -n to get a private network namespace)" >&2
		echo "0 passed, 1 failed"
		exit 1
	fi
	if ! command -v unshare >/dev/null || ! unshare -n true 2>/dev/null; then
		echo "run.sh: cannot create a network namespace (unshare -n failed); refusing to test on the host" >&2
		echo "0 passed, 1 failed"
		exit 1
	fi
	counts=$(mktemp)
	before=$(mktemp)
	after=$(mktemp)
	trap 'rm -f "$counts" "$before" "$after"' EXIT
	host_snapshot >"$before"

	rc=0
	COREGATE_TUNING_TEST_INNER=1 \
		COREGATE_TUNING_HOST_NETNS="/proc/$$/ns/net" \
		COREGATE_TUNING_TEST_COUNTS="$counts" \
		unshare -n bash "$0" "$@" || rc=$?

	passed=0 failed=0
	read -r passed failed <"$counts" 2>/dev/null || failed=1
	host_snapshot >"$after"
	if cmp -s "$before" "$after"; then
		echo "ok - host sysctls named by the profiles are unchanged after the tests"
		passed=$((passed + 1))
	else
		echo "FAIL - host sysctls changed during the tests:"
		diff "$before" "$after" | sed 's/^/    /' || true
		failed=$((failed + 1))
	fi
	[ "$rc" = 0 ] || [ "$failed" -gt 0 ] || failed=1
	echo "$passed passed, $failed failed"
	[ "$failed" = 0 ]
	exit
fi

# ---------------------------------------------------------------- inner ---
passed=0 failed=0
ok() {
	printf 'ok - %s\n' "$1"
	passed=$((passed + 1))
}
fail() {
	printf 'FAIL - %s\n' "$1"
	shift
	local line
	for line in "$@"; do printf '    %s\n' "$line"; done
	failed=$((failed + 1))
}
check() { # check NAME CMD... : ok when CMD succeeds
	local name=$1
	shift
	if "$@"; then ok "$name"; else fail "$name"; fi
}
finish() {
	printf '%s %s\n' "$passed" "$failed" >"$COREGATE_TUNING_TEST_COUNTS"
	exit 0
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export COREGATE_TUNING_DIR="$tmp/backups"
export COREGATE_TUNING_NET_ONLY=1
export FAKE_STATE_DIR="$tmp/fake"
mkdir -p "$FAKE_STATE_DIR" "$tmp/profiles"
unset COREGATE_BIN

# Safety first: are we really in a namespace of our own?
mine=$(readlink /proc/self/ns/net)
host=$(readlink "$COREGATE_TUNING_HOST_NETNS" 2>/dev/null || echo unknown)
if [ "$mine" = "$host" ] || [ "$host" = unknown ]; then
	fail "running in a private network namespace" "mine=$mine host=$host: refusing to run anything that writes sysctls"
	finish
fi
ok "running in a private network namespace ($mine, host $host)"

snap() { grep -rs '' /proc/sys/net | sort; }
pending_backups() { find "$COREGATE_TUNING_DIR" -name '*.backup' 2>/dev/null | wc -l; }
val() { tr '\t' ' ' <"/proc/sys/${1//./\/}"; }

# Test profiles: the shipped ones, reduced to their net.* lines.
for f in "$tuning"/profiles/*.conf; do
	n=${f##*/}
	grep -E '^[[:space:]]*(#|;|$|net\.)' "$f" >"$tmp/profiles/t-$n"
done
T_BASE="$tmp/profiles/t-baseline.conf"
T_HC="$tmp/profiles/t-high-concurrency.conf"
T_LL="$tmp/profiles/t-low-latency.conf"

# 1. shellcheck ----------------------------------------------------------
if command -v shellcheck >/dev/null; then
	if out=$(cd "$tuning" && shellcheck -x apply revert show experiment record-baseline lib/common.sh tests/run.sh tests/fakes/* 2>&1); then
		ok "shellcheck is clean on every script"
	else
		fail "shellcheck is clean on every script" "$out"
	fi
else
	echo "skip - shellcheck not installed (apt-get install -y shellcheck)"
fi

# 2. shipped profiles ------------------------------------------------------
for name in baseline high-concurrency low-latency; do
	if out=$("$tuning/apply" "$name" --dry-run 2>&1); then
		ok "shipped profile $name parses (dry run)"
	else
		fail "shipped profile $name parses (dry run)" "$out"
	fi
done

undocumented=$(awk '
	FNR == 1 { prev = "" }
	/^[[:space:]]*-?[A-Za-z0-9_][A-Za-z0-9_.\/:@+-]*[[:space:]]*=/ {
		if (prev !~ /^[[:space:]]*#/) print FILENAME ": " $0
	}
	{ prev = $0 }' "$tuning"/profiles/*.conf)
if [ -z "$undocumented" ]; then
	ok "every key in every profile has a comment right above it"
else
	fail "every key in every profile has a comment right above it" "$undocumented"
fi

missing_doc=""
for k in $(all_profile_keys); do
	grep -qF "$k" "$repo/docs/tuning.md" 2>/dev/null || missing_doc="$missing_doc $k"
done
if [ -z "$missing_doc" ]; then
	ok "docs/tuning.md explains every profile key"
else
	fail "docs/tuning.md explains every profile key" "missing:$missing_doc"
fi

not_in_base=""
for f in "$tuning/profiles/high-concurrency.conf" "$tuning/profiles/low-latency.conf"; do
	while IFS= read -r k; do
		grep -q "^${k}[[:space:]]*=" "$tuning/profiles/baseline.conf" || not_in_base="$not_in_base $k"
	done < <(sed -n 's/^\([A-Za-z0-9_][A-Za-z0-9_./-]*\)[[:space:]]*=.*/\1/p' "$f")
done
# Every profile meant for production keeps connections queued on an old listener through
# an upgrade (serve --takeover); only the untuned reference leaves it off.
no_migrate=""
for f in "$tuning/profiles/high-concurrency.conf" "$tuning/profiles/low-latency.conf"; do
	grep -qE '^net\.ipv4\.tcp_migrate_req[[:space:]]*=[[:space:]]*1[[:space:]]*$' "$f" || no_migrate="$no_migrate ${f##*/}"
done
if [ -z "$no_migrate" ]; then
	ok "every production profile sets net.ipv4.tcp_migrate_req = 1"
else
	fail "every production profile sets net.ipv4.tcp_migrate_req = 1" "missing in:$no_migrate"
fi
if [ -z "$not_in_base" ]; then
	ok "baseline records every key the other profiles change"
else
	fail "baseline records every key the other profiles change" "missing:$not_in_base"
fi

# 3. dry run changes nothing ---------------------------------------------
snap >"$tmp/s0"
if out=$("$tuning/apply" "$T_HC" --dry-run 2>&1) &&
	snap | cmp -s - "$tmp/s0" && [ "$(pending_backups)" = 0 ] && [ ! -d "$COREGATE_TUNING_DIR" ] &&
	grep -q 'net.core.somaxconn .*4096 → 65535' <<<"$out" && grep -q 'nothing will be changed' <<<"$out"; then
	ok "dry run prints old → new and changes nothing (no value, no backup)"
else
	fail "dry run prints old → new and changes nothing (no value, no backup)" "$out"
fi

# 4. apply → values changed ----------------------------------------------
snap >"$tmp/s1"
raw_before=$(cat /proc/sys/net/ipv4/tcp_rmem /proc/sys/net/ipv4/ip_local_port_range /proc/sys/net/core/somaxconn)
if out=$("$tuning/apply" "$T_HC" 2>&1); then
	ok "apply exits 0 with skipped keys"
else
	fail "apply exits 0 with skipped keys" "$out"
fi
bad=""
while IFS= read -r line; do
	k=$(sed -n 's/^\([a-z0-9_.]*\)[[:space:]]*=.*/\1/p' <<<"$line")
	[ -n "$k" ] || continue
	p="/proc/sys/${k//./\/}"
	[ -w "$p" ] || continue # skipped keys (host-only, read-only here)
	want=$(sed 's/^[^=]*=[[:space:]]*//; s/[[:space:]]*$//' <<<"$line" | tr -s ' \t' '  ')
	have=$(val "$k" | tr -s ' ')
	[ "$want" = "$have" ] || bad="$bad $k(want '$want' have '$have')"
done <"$T_HC"
if [ -z "$bad" ] && [ "$(val net.core.somaxconn)" = 65535 ] && [ "$(val net.ipv4.tcp_migrate_req)" = 1 ]; then
	ok "apply sets every writable key to the profile value"
else
	fail "apply sets every writable key to the profile value" "$bad"
fi
if grep -q 'net.ipv4.tcp_tw_reuse .*2 → 1' <<<"$out" &&
	grep -q 'net.ipv4.ip_local_port_range .*32768 60999 → 10240 65535' <<<"$out"; then
	ok "apply prints old → new per key"
else
	fail "apply prints old → new per key" "$out"
fi
backup=$(sed -n 's/^backup: //p' <<<"$out")
if [ -f "$backup" ] && grep -qx 'net.core.somaxconn = 4096' "$backup" &&
	grep -qx 'net.ipv4.tcp_rmem = 4096 131072 [0-9]*' "$backup" && grep -q '^# netns: ' "$backup" &&
	! grep -q '^net.core.netdev_max_backlog' "$backup"; then
	ok "apply recorded the old values in a timestamped backup ($(basename "$backup"))"
else
	fail "apply recorded the old values in a timestamped backup" "backup=$backup" "$(cat "$backup" 2>/dev/null)"
fi
if grep -q 'net.netfilter.nf_conntrack_max .*SKIPPED: read-only' <<<"$out" ||
	[ ! -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
	ok "apply reports a read-only (namespaced) key as skipped"
else
	fail "apply reports a read-only (namespaced) key as skipped" "$out"
fi
if grep -q 'net.ipv4.tcp_mem .*SKIPPED: not present in this network namespace' <<<"$out"; then
	ok "apply reports a host-only key as not present in this namespace"
else
	fail "apply reports a host-only key as not present in this namespace" "$out"
fi

# 5. show --------------------------------------------------------------
# The keys of the profile that can be set in this namespace.
settable="$tmp/profiles/settable.conf"
while IFS= read -r line; do
	k=$(sed -n 's/^\([a-z0-9_.]*\)[[:space:]]*=.*/\1/p' <<<"$line")
	if [ -z "$k" ] || [ -w "/proc/sys/${k//./\/}" ]; then printf '%s\n' "$line"; fi
done <"$T_HC" >"$settable"
if out=$("$tuning/show" "$settable" --check 2>&1); then
	ok "show --check: current values match the applied profile"
else
	fail "show --check: current values match the applied profile" "$out"
fi
if ! "$tuning/show" "$T_HC" --check >/dev/null 2>&1; then
	ok "show --check fails when keys of the profile are missing here"
else
	fail "show --check fails when keys of the profile are missing here"
fi
if out=$("$tuning/show" "$T_BASE" 2>&1) && grep -q '^net.core.somaxconn .*65535 .*\* 4096' <<<"$out" &&
	! "$tuning/show" "$T_BASE" --check >/dev/null 2>&1; then
	ok "show marks values that differ from a profile with *"
else
	fail "show marks values that differ from a profile with *" "$out"
fi
if out=$("$tuning/show" 2>&1) && grep -q 'baseline' <<<"$out" && grep -q 'low-latency' <<<"$out"; then
	ok "show without PROFILE lists every profile side by side"
else
	fail "show without PROFILE lists every profile side by side" "$out"
fi

# 6. revert → byte-identical -----------------------------------------------
if out=$("$tuning/revert" 2>&1) && grep -q 'verified all' <<<"$out"; then
	ok "revert (latest backup) restores and verifies"
else
	fail "revert (latest backup) restores and verifies" "$out"
fi
raw_after=$(cat /proc/sys/net/ipv4/tcp_rmem /proc/sys/net/ipv4/ip_local_port_range /proc/sys/net/core/somaxconn)
if snap | cmp -s - "$tmp/s1" && [ "$raw_before" = "$raw_after" ]; then
	ok "after revert every /proc/sys/net value is byte-identical to before apply"
else
	fail "after revert every /proc/sys/net value is byte-identical to before apply" "$(snap | diff "$tmp/s1" - | head -20)"
fi
if [ -f "$backup.reverted" ] && [ ! -e "$backup" ]; then
	ok "revert marks the backup as reverted"
else
	fail "revert marks the backup as reverted" "$(ls -la "$COREGATE_TUNING_DIR")"
fi
if ! out=$("$tuning/revert" 2>&1) && grep -q 'no backup to revert' <<<"$out"; then
	ok "revert with nothing left to revert fails clearly"
else
	fail "revert with nothing left to revert fails clearly" "$out"
fi

# Two applies, two reverts: the stack unwinds to the original state.
"$tuning/apply" "$T_HC" >/dev/null 2>&1 || true
"$tuning/apply" "$T_LL" >/dev/null 2>&1 || true
"$tuning/revert" >/dev/null 2>&1 || true
mid=$(val net.core.somaxconn):$(val net.ipv4.tcp_slow_start_after_idle)
"$tuning/revert" >/dev/null 2>&1 || true
if [ "$mid" = "65535:1" ] && snap | cmp -s - "$tmp/s1"; then
	ok "apply A, apply B, revert, revert: back through A to the original"
else
	fail "apply A, apply B, revert, revert: back through A to the original" "mid=$mid"
fi

# 7. malformed profiles change nothing --------------------------------------
bad_case() { # NAME LINE
	local f="$tmp/profiles/bad.conf" out
	printf '# valid first\nnet.core.somaxconn = 1111\nnet.ipv4.tcp_tw_reuse = 1\n%s\nnet.ipv4.tcp_fastopen = 3\n' "$2" >"$f"
	snap >"$tmp/s2"
	local nb
	nb=$(pending_backups)
	if ! out=$("$tuning/apply" "$f" 2>&1) && grep -q 'bad.conf:4:' <<<"$out" &&
		grep -q 'nothing was changed' <<<"$out" && snap | cmp -s - "$tmp/s2" && [ "$(pending_backups)" = "$nb" ]; then
		ok "malformed profile ($1) is refused with its line number; nothing changes"
	else
		fail "malformed profile ($1) is refused with its line number; nothing changes" "$out"
	fi
}
bad_case "no '='" "net.core.netdev_max_backlog 5000"
bad_case "garbage line" "this is not a sysctl"
bad_case "unknown sysctl tree" "bogus.tree.key = 1"
bad_case "duplicate key" "net.core.somaxconn = 2222"
bad_case "empty value" "net.ipv4.tcp_tw_reuse ="
bad_case "inline comment" "net.ipv4.tcp_tw_reuse = 1 # reuse"
bad_case "glob key" "net.ipv4.conf.*.rp_filter = 1"
bad_case "malformed key" "net..core = 1"

# 8. keys that cannot be set are reported and skipped ------------------------
sk="$tmp/profiles/skips.conf"
cat >"$sk" <<'EOF'
# settable
net.core.somaxconn = 1234
# missing on every kernel
net.ipv4.no_such_key_for_tests = 1
# read-only on every kernel
net.ipv4.tcp_available_congestion_control = reno
# exists only in the initial namespace
net.core.netdev_max_backlog = 5000
# rejected by the kernel (valid range 0-2)
net.ipv4.tcp_tw_reuse = 7
# settable, after the failures
net.ipv4.tcp_slow_start_after_idle = 0
EOF
snap >"$tmp/s3"
out=$("$tuning/apply" "$sk" 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ] &&
	grep -q 'no_such_key_for_tests .*SKIPPED: not present' <<<"$out" &&
	grep -q 'tcp_available_congestion_control .*SKIPPED: read-only' <<<"$out" &&
	grep -q 'netdev_max_backlog .*SKIPPED: not present in this network namespace' <<<"$out" &&
	grep -q 'tcp_tw_reuse .*SKIPPED: kernel rejected "7"' <<<"$out" &&
	grep -q '2 changed, 0 already set, 3 skipped, 1 rejected' <<<"$out" &&
	[ "$(val net.core.somaxconn)" = 1234 ] && [ "$(val net.ipv4.tcp_slow_start_after_idle)" = 0 ] &&
	[ "$(val net.ipv4.tcp_tw_reuse)" = 2 ]; then
	ok "missing, read-only, host-only and rejected keys are reported and skipped; the rest applies"
else
	fail "missing, read-only, host-only and rejected keys are reported and skipped; the rest applies" "exit $rc" "$out"
fi
"$tuning/revert" >/dev/null 2>&1 || true
if snap | cmp -s - "$tmp/s3"; then
	ok "revert after a partial apply restores everything"
else
	fail "revert after a partial apply restores everything" "$(snap | diff "$tmp/s3" - | head)"
fi
out=$("$tuning/apply" "$sk" --strict 2>&1) && rc=0 || rc=$?
"$tuning/revert" >/dev/null 2>&1 || true
check "apply --strict exits 3 when something was skipped" [ "$rc" = 3 ]

printf '# host-only\nnet.core.busy_poll = 50\n' >"$tmp/profiles/unsettable.conf"
nb=$(pending_backups)
out=$("$tuning/apply" "$tmp/profiles/unsettable.conf" 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ] && grep -q 'nothing can be set here' <<<"$out" && [ "$(pending_backups)" = "$nb" ]; then
	ok "a profile with nothing settable here is reported, and leaves no backup to revert"
else
	fail "a profile with nothing settable here is reported, and leaves no backup to revert" "$out"
fi

hw="$tmp/profiles/hostwide.conf"
printf '# host-wide\nfs.file-max = 1234567\n# net\nnet.core.somaxconn = 3333\n' >"$hw"
fmax=$(cat /proc/sys/fs/file-max)
out=$("$tuning/apply" "$hw" 2>&1) || true
"$tuning/revert" >/dev/null 2>&1 || true
if grep -q 'fs.file-max .*SKIPPED: not a net.\* key' <<<"$out" && [ "$(cat /proc/sys/fs/file-max)" = "$fmax" ]; then
	ok "COREGATE_TUNING_NET_ONLY=1 keeps host-wide keys untouched"
else
	fail "COREGATE_TUNING_NET_ONLY=1 keeps host-wide keys untouched" "$out"
fi

# 9. rights ------------------------------------------------------------------
if command -v setpriv >/dev/null; then
	cp -r "$tuning" "$tmp/tuning-copy"
	chmod -R a+rX "$tmp/tuning-copy" "$tmp/profiles"
	chmod a+rx "$tmp"
	as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
	out=$(as_nobody "$tmp/tuning-copy/apply" "$T_HC" 2>&1) && rc=0 || rc=$?
	if [ "$rc" != 0 ] && grep -q 'must run as root' <<<"$out"; then
		ok "apply refuses to run without root, with a clear message"
	else
		fail "apply refuses to run without root, with a clear message" "$out"
	fi
	out=$(as_nobody "$tmp/tuning-copy/revert" "$tmp/none.backup" 2>&1) && rc=0 || rc=$?
	out2=$(as_nobody env COREGATE_BIN=/bin/true "$tmp/tuning-copy/experiment" --profiles "$T_HC" --out "$tmp/x-nobody" -- 2>&1) && rc2=0 || rc2=$?
	if [ "$rc" != 0 ] && [ "$rc2" != 0 ] && grep -q 'must run as root' <<<"$out2"; then
		ok "revert and experiment refuse to run without root"
	else
		fail "revert and experiment refuse to run without root" "$out" "$out2"
	fi
	out=$(as_nobody "$tmp/tuning-copy/show" "$T_HC" 2>&1) && rc=0 || rc=$?
	out2=$(as_nobody "$tmp/tuning-copy/apply" "$T_HC" --dry-run 2>&1) && rc2=0 || rc2=$?
	if [ "$rc" = 0 ] && [ "$rc2" = 0 ]; then
		ok "show and apply --dry-run work without root"
	else
		fail "show and apply --dry-run work without root" "$out" "$out2"
	fi
else
	echo "skip - setpriv not installed: rights checks"
fi

# 10. revert refuses a backup from another namespace -------------------------
unshare -n "$tuning/apply" "$T_HC" >"$tmp/nested.out" 2>&1 || true
nested=$(sed -n 's/^backup: //p' "$tmp/nested.out")
snap >"$tmp/s4"
out=$("$tuning/revert" 2>&1) && rc=0 || rc=$?
if [ -n "$nested" ] && [ "$rc" != 0 ] && grep -q 'recorded in network namespace' <<<"$out" && snap | cmp -s - "$tmp/s4"; then
	ok "revert refuses a backup recorded in another network namespace"
else
	fail "revert refuses a backup recorded in another network namespace" "$out"
fi
rm -f "$nested"

# 11. experiment: failing load → still reverted -----------------------------
snap >"$tmp/s5"
out=$(COREGATE_BIN="$here/fakes/coregate-fail" "$tuning/experiment" \
	--profiles "$T_BASE,$T_HC,$T_LL" --repeat-baseline 2 --out "$tmp/exp-fail" -- --duration 1s 2>&1) && rc=0 || rc=$?
if [ "$rc" != 0 ] && snap | cmp -s - "$tmp/s5" && [ "$(pending_backups)" = 0 ]; then
	ok "experiment with a failing load exits non-zero and reverts every profile"
else
	fail "experiment with a failing load exits non-zero and reverts every profile" "exit $rc, pending backups $(pending_backups)" "$(snap | diff "$tmp/s5" - | head)" "$out"
fi
if [ -f "$tmp/exp-fail/comparison.md" ] && [ "$(awk -F '\t' 'NR > 1 && $6 == 1 && $7 == 0' "$tmp/exp-fail/runs.tsv" | wc -l)" = 4 ]; then
	ok "failed runs are recorded (load exit 1, revert exit 0) and still compared"
else
	fail "failed runs are recorded (load exit 1, revert exit 0) and still compared" "$(cat "$tmp/exp-fail/runs.tsv" 2>/dev/null)"
fi

# 12. experiment: comparison ------------------------------------------------
rm -f "$FAKE_STATE_DIR/fake-count"
out=$(COREGATE_BIN="$here/fakes/coregate-summary" "$tuning/experiment" \
	--profiles "$T_BASE,$T_HC,$T_LL" --repeat-baseline 3 --out "$tmp/exp-ok" \
	--after-apply "cat /proc/sys/net/core/somaxconn >>'$tmp/after-apply.log'" \
	-- --duration 1s --connections 100 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ] && snap | cmp -s - "$tmp/s5" && [ "$(pending_backups)" = 0 ]; then
	ok "experiment with a working load exits 0 and leaves every value as it was"
else
	fail "experiment with a working load exits 0 and leaves every value as it was" "exit $rc" "$out"
fi
if [ "$(tr '\n' ' ' <"$tmp/after-apply.log" 2>/dev/null)" = "4096 65535 4096 4096 4096 " ]; then
	ok "--after-apply runs after each apply, with the profile in effect"
else
	fail "--after-apply runs after each apply, with the profile in effect" "$(cat "$tmp/after-apply.log" 2>/dev/null)"
fi
if py=$(python3 - "$tmp/exp-ok/comparison.json" <<'EOF' 2>&1
import json, sys
c = json.load(open(sys.argv[1]))
ref = c["reference"]
assert ref == "t-baseline", ref
assert c["profiles"][ref]["runs"] == 3, c["profiles"][ref]
assert c["noise"]["rps"]["band"] > 0, c["noise"]["rps"]
hc, ll = c["comparison"]["t-high-concurrency"], c["comparison"]["t-low-latency"]
assert hc["rps"]["exceeds_noise"] is True and hc["rps"]["verdict"] == "better", hc["rps"]
assert ll["rps"]["exceeds_noise"] is False and ll["rps"]["verdict"] == "within noise", ll["rps"]
assert ll["p999_ms"]["verdict"] == "better", ll["p999_ms"]
assert hc["error_rate"]["exceeds_noise"] is False, hc["error_rate"]
assert "ephemeral_ports" in c["profiles"]["t-high-concurrency"]["client_limits_hit"]
assert c["profiles"][ref]["client_limits_hit"] == []
assert c["load_args"] == ["--duration", "1s", "--connections", "100"], c["load_args"]
assert all(r["ok"] and r["revert_exit"] == 0 for r in c["runs"])
EOF
); then
	ok "comparison.json: RPS gain beyond noise found, in-noise change not flagged, client limits reported"
else
	fail "comparison.json: RPS gain beyond noise found, in-noise change not flagged, client limits reported" "$py"
fi
if grep -q '| t-high-concurrency | RPS | .*\*\*better\*\* (beyond noise)' "$tmp/exp-ok/comparison.md" &&
	grep -q 'Run-to-run noise' "$tmp/exp-ok/comparison.md"; then
	ok "comparison.md shows the per-profile table and what exceeds noise"
else
	fail "comparison.md shows the per-profile table and what exceeds noise" "$(cat "$tmp/exp-ok/comparison.md" 2>/dev/null)"
fi

# 13. experiment: Ctrl-C while the load runs --------------------------------
rm -f "$FAKE_STATE_DIR/started"
set -m # own process group, so SIGINT is not ignored by the background job
COREGATE_BIN="$here/fakes/coregate-slow" "$tuning/experiment" \
	--profiles "$T_HC" --repeat-baseline 1 --out "$tmp/exp-int" -- >"$tmp/exp-int.out" 2>&1 &
xpid=$!
set +m
n=0
while [ ! -e "$FAKE_STATE_DIR/started" ] && [ "$n" -lt 100 ]; do
	sleep 0.1
	n=$((n + 1))
done
during=$(val net.core.somaxconn)
kill -INT "$xpid" 2>/dev/null || true
rc=0
wait "$xpid" || rc=$?
if [ "$during" = 65535 ] && [ "$rc" = 130 ] && snap | cmp -s - "$tmp/s5" && [ "$(pending_backups)" = 0 ]; then
	ok "Ctrl-C during the load: experiment stops it, reverts, exits 130"
else
	fail "Ctrl-C during the load: experiment stops it, reverts, exits 130" "during=$during exit=$rc" "$(cat "$tmp/exp-int.out")"
fi

# 14. experiment refuses an invalid profile before changing anything --------
printf 'net.core.somaxconn = 1\nnot valid\n' >"$tmp/profiles/bad2.conf"
out=$(COREGATE_BIN="$here/fakes/coregate-summary" "$tuning/experiment" \
	--profiles "$T_HC,$tmp/profiles/bad2.conf" --out "$tmp/exp-bad" -- 2>&1) && rc=0 || rc=$?
if [ "$rc" != 0 ] && [ ! -e "$tmp/exp-bad" ] && snap | cmp -s - "$tmp/s5" && grep -q 'bad2.conf:2:' <<<"$out"; then
	ok "experiment validates every profile before applying any"
else
	fail "experiment validates every profile before applying any" "$out"
fi
out=$(COREGATE_BIN="$tmp/no-such-binary" "$tuning/experiment" --profiles "$T_HC" --out "$tmp/exp-nobin" -- 2>&1) && rc=0 || rc=$?
check "experiment refuses a missing coregate binary" [ "$rc" != 0 ]

# 15. record-baseline (reads only) ------------------------------------------
snap >"$tmp/s6"
if out=$("$tuning/record-baseline" 2>&1); then
	miss=""
	for k in $(all_profile_keys); do
		grep -q "^$k = \|^# $k = " <<<"$out" || miss="$miss $k"
	done
	if [ -z "$miss" ] && grep -q '^net.core.somaxconn = [0-9]*    # fresh netns' <<<"$out" &&
		grep -q '^net.ipv4.tcp_mem = .*# host (initial netns only)' <<<"$out" && snap | cmp -s - "$tmp/s6"; then
		ok "record-baseline reads every key (net.* from a fresh netns, host-only keys from the host) and writes nothing"
	else
		fail "record-baseline reads every key (net.* from a fresh netns, host-only keys from the host) and writes nothing" "missing:$miss" "$out"
	fi
else
	fail "record-baseline runs" "$out"
fi

finish
