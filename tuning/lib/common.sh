# shellcheck shell=bash
# shellcheck disable=SC2034 # KEY_*, WRITE_ERR, REPLY are read by the scripts that source this file
# Shared helpers for the tuning/ scripts (apply, revert, show, experiment,
# record-baseline). Sourced, never executed on its own.
#
# Conventions:
#   * a "profile" is a sysctl.d-style file: `key = value` lines, `#` or `;`
#     comment lines, blank lines. Keys use the dotted form (net.core.somaxconn)
#     or the slash form (net/ipv4/conf/eth0.100/rp_filter).
#   * a "backup" has the same format plus a `# netns:` header line, so the
#     same parser reads both.
#   * values are compared after normalisation: tabs become spaces, runs of
#     spaces collapse, leading/trailing blanks go. The kernel prints vectors
#     with tabs (4096<TAB>131072<TAB>6291456) and accepts them with spaces.

prog=${0##*/}

# Where the scripts live (tuning/), independent of the caller's cwd.
TUNING_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
	printf '%s: error: %s\n' "$prog" "$*" >&2
	exit 1
}

warn() {
	printf '%s: warning: %s\n' "$prog" "$*" >&2
}

backup_dir() {
	printf '%s\n' "${COREGATE_TUNING_DIR:-/var/lib/coregate/tuning}"
}

profiles_dir() {
	printf '%s\n' "${COREGATE_TUNING_PROFILES:-$TUNING_ROOT/profiles}"
}

list_profiles() {
	local f names=""
	for f in "$(profiles_dir)"/*.conf; do
		[ -e "$f" ] || continue
		f=${f##*/}
		names="$names ${f%.conf}"
	done
	printf '%s\n' "${names# }"
}

# resolve_profile NAME|PATH -> prints the profile file path.
# A bare name is looked up in the profiles directory; anything containing a
# slash or ending in .conf is taken as a path.
resolve_profile() {
	local p=$1 f
	case $p in
	*/* | *.conf)
		[ -f "$p" ] || die "profile file not found: $p"
		printf '%s\n' "$p"
		;;
	'')
		die "empty profile name"
		;;
	*)
		f="$(profiles_dir)/$p.conf"
		[ -f "$f" ] || die "unknown profile '$p' (no $f; available: $(list_profiles))"
		printf '%s\n' "$f"
		;;
	esac
}

profile_name() {
	local b=${1##*/}
	printf '%s\n' "${b%.conf}"
}

# norm_r VALUE -> sets REPLY to VALUE with tabs as spaces, spaces squeezed
# and trimmed (no subshell: it runs for every profile line).
norm_r() {
	REPLY=$1
	REPLY=${REPLY//$'\t'/ }
	REPLY=${REPLY//$'\r'/}
	while [[ $REPLY == *'  '* ]]; do REPLY=${REPLY//  / }; done
	REPLY=${REPLY# }
	REPLY=${REPLY% }
}

# norm VALUE -> prints the normalised VALUE.
norm() {
	norm_r "$1"
	printf '%s' "$REPLY"
}

# key_path KEY -> /proc/sys path. Dotted keys map dots to slashes; keys that
# already contain a slash are used as they are (that form allows dots inside
# a component, e.g. VLAN interface names).
key_path() {
	local k=$1
	if [[ $k == */* ]]; then
		printf '/proc/sys/%s' "$k"
	else
		printf '/proc/sys/%s' "${k//./\/}"
	fi
}

is_net_key() {
	case $1 in net.* | net/*) return 0 ;; esac
	return 1
}

# Top-level sysctl trees a profile may name; anything else is refused as an
# unknown line before a single value changes.
KNOWN_TREES=" abi crypto debug dev fs kernel net sunrpc user vm "

# parse_profile FILE -> prints "key<TAB>normalised value" per setting.
# Returns 1 (after reporting every bad line on stderr) when the file has a
# malformed or unknown line, a duplicate key, or no keys at all.
parse_profile() {
	local file=$1 line n=0 errs=0 key val top out="" seen=" "
	[ -r "$file" ] || {
		printf '%s: cannot read %s\n' "$prog" "$file" >&2
		return 1
	}
	while IFS= read -r line || [ -n "$line" ]; do
		n=$((n + 1))
		norm_r "$line"
		line=$REPLY
		case $line in
		'' | '#'* | ';'*) continue ;;
		esac
		if [[ $line != *=* ]]; then
			printf '%s:%d: not a "key = value" line: %s\n' "$file" "$n" "$line" >&2
			errs=$((errs + 1))
			continue
		fi
		norm_r "${line%%=*}"
		key=$REPLY
		norm_r "${line#*=}"
		val=$REPLY
		# systemd-sysctl's "-" prefix means "ignore failure"; failures are
		# always reported-and-skipped here, so it is accepted and dropped.
		key=${key#-}
		if [ -z "$key" ]; then
			printf '%s:%d: missing key before "=": %s\n' "$file" "$n" "$line" >&2
			errs=$((errs + 1))
			continue
		fi
		if [[ $key == *[*?\[\]]* ]]; then
			printf '%s:%d: glob keys are not supported: %s\n' "$file" "$n" "$key" >&2
			errs=$((errs + 1))
			continue
		fi
		if ! [[ $key =~ ^[A-Za-z0-9_]+([./][A-Za-z0-9_:@+-]+)+$ ]]; then
			printf '%s:%d: malformed key: %s\n' "$file" "$n" "$key" >&2
			errs=$((errs + 1))
			continue
		fi
		top=${key%%[./]*}
		if [[ $KNOWN_TREES != *" $top "* ]]; then
			printf '%s:%d: unknown sysctl tree "%s" in key %s\n' "$file" "$n" "$top" "$key" >&2
			errs=$((errs + 1))
			continue
		fi
		if [ -z "$val" ]; then
			printf '%s:%d: empty value for %s\n' "$file" "$n" "$key" >&2
			errs=$((errs + 1))
			continue
		fi
		if [[ $val == *'#'* ]]; then
			printf '%s:%d: inline comment in value of %s (the kernel would receive it): %s\n' "$file" "$n" "$key" "$val" >&2
			errs=$((errs + 1))
			continue
		fi
		if [[ $val == *[![:print:]]* ]]; then
			printf '%s:%d: non-printable character in value of %s\n' "$file" "$n" "$key" >&2
			errs=$((errs + 1))
			continue
		fi
		if [[ $seen == *" $key "* ]]; then
			printf '%s:%d: duplicate key %s\n' "$file" "$n" "$key" >&2
			errs=$((errs + 1))
			continue
		fi
		seen="$seen$key "
		out+="$key"$'\t'"$val"$'\n'
	done <"$file"
	if [ "$errs" -gt 0 ]; then
		printf '%s: %s: %d bad line(s)\n' "$prog" "$file" "$errs" >&2
		return 1
	fi
	if [ -z "$out" ]; then
		printf '%s: %s: no settings in file\n' "$prog" "$file" >&2
		return 1
	fi
	printf '%s' "$out"
}

netns_id() {
	readlink /proc/self/ns/net 2>/dev/null || printf 'unknown'
}

# host_netns -> path of the host's (initial) network namespace handle:
# $COREGATE_TUNING_HOST_NETNS if set (tests point it at a process that stayed
# on the host), else PID 1's.
host_netns() {
	printf '%s\n' "${COREGATE_TUNING_HOST_NETNS:-/proc/1/ns/net}"
}

# 0 when this process is in a network namespace other than the host's.
# Compares namespace ids when the host handle is readable; otherwise falls
# back on a kernel fact: net.core.netdev_max_backlog is registered only in
# the initial network namespace, so its absence means a child namespace.
in_child_netns() {
	local mine init
	if mine=$(readlink /proc/self/ns/net 2>/dev/null) &&
		init=$(readlink "$(host_netns)" 2>/dev/null); then
		[ "$mine" != "$init" ]
		return
	fi
	[ -d /proc/sys/net/core ] && [ ! -e /proc/sys/net/core/netdev_max_backlog ]
}

# key_state KEY -> sets KEY_STATE to one of
#   ok | missing | notfile | unreadable | readonly | netonly
# and KEY_VALUE to the normalised current value (when readable), KEY_WHY to a
# human explanation for anything but ok.
KEY_STATE="" KEY_VALUE="" KEY_WHY=""
key_state() {
	local k=$1 p v
	p=$(key_path "$k")
	KEY_VALUE="" KEY_WHY=""
	if [ "${COREGATE_TUNING_NET_ONLY:-0}" = 1 ] && ! is_net_key "$k"; then
		KEY_STATE=netonly
		KEY_WHY="not a net.* key and COREGATE_TUNING_NET_ONLY=1 (host-wide keys are off limits)"
		return 0
	fi
	if [ ! -e "$p" ]; then
		KEY_STATE=missing
		if is_net_key "$k" && in_child_netns; then
			KEY_WHY="not present in this network namespace (host-only key, module not loaded, or unknown to this kernel)"
		else
			KEY_WHY="not present on this kernel (unknown key or module not loaded)"
		fi
		return 0
	fi
	if [ ! -f "$p" ]; then
		KEY_STATE=notfile
		KEY_WHY="$p is a directory, not a key"
		return 0
	fi
	if ! { v=$(<"$p"); } 2>/dev/null; then
		KEY_STATE=unreadable
		KEY_WHY="cannot read $p"
		return 0
	fi
	norm_r "$v"
	KEY_VALUE=$REPLY
	if [ ! -w "$p" ]; then
		KEY_STATE="readonly"
		if is_net_key "$k" && in_child_netns; then
			KEY_WHY="read-only here (writable only in the host's initial network namespace, or read-only key)"
		else
			KEY_WHY="read-only key"
		fi
		return 0
	fi
	KEY_STATE=ok
}

# write_key KEY VALUE -> 0 on success; on failure sets WRITE_ERR.
WRITE_ERR=""
write_key() {
	local p err
	p=$(key_path "$1")
	WRITE_ERR=""
	if err=$({ printf '%s\n' "$2" >"$p"; } 2>&1); then
		return 0
	fi
	WRITE_ERR=${err##*: }
	[ -n "$WRITE_ERR" ] || WRITE_ERR="write failed"
	return 1
}

# read_norm KEY -> prints the normalised current value; non-zero if unreadable.
read_norm() {
	local p v
	p=$(key_path "$1")
	{ v=$(<"$p"); } 2>/dev/null || return 1
	norm "$v"
}

# Refuse early, with a clear message, when we cannot write sysctls.
require_write_rights() {
	if [ "$(id -u)" != 0 ]; then
		die "must run as root: it writes /proc/sys (try again with sudo)"
	fi
	if awk '($2 == "/proc/sys" || $2 == "/proc") && $4 ~ /(^|,)ro(,|$)/ { f = 1 } END { exit !f }' /proc/self/mounts 2>/dev/null; then
		die "/proc/sys is mounted read-only here (an unprivileged container?); sysctls cannot be changed from this environment"
	fi
	if [ ! -w /proc/sys/net/ipv4/tcp_slow_start_after_idle ] && [ ! -w /proc/sys/kernel/printk ]; then
		die "no write access to /proc/sys (need root with CAP_SYS_ADMIN / CAP_NET_ADMIN)"
	fi
}

# ensure_backup_dir -> creates and checks the backup directory.
ensure_backup_dir() {
	local d
	d=$(backup_dir)
	mkdir -p "$d" 2>/dev/null || die "cannot create backup directory $d (set COREGATE_TUNING_DIR to a writable place)"
	[ -w "$d" ] || die "backup directory $d is not writable (set COREGATE_TUNING_DIR)"
	chmod 0700 "$d" 2>/dev/null || true
}

stamp() {
	date -u +%Y%m%dT%H%M%S.%NZ
}

# latest_backup -> newest not-yet-reverted backup in the backup directory.
latest_backup() {
	local d f last=""
	d=$(backup_dir)
	for f in "$d"/*.backup; do
		[ -e "$f" ] || continue
		last=$f # glob expansion is sorted; names start with a UTC timestamp
	done
	[ -n "$last" ] || return 1
	printf '%s\n' "$last"
}
