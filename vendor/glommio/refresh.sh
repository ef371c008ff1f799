#!/usr/bin/env bash
# Rebuild coregate's vendored glommio from a pristine glommio source plus patches/.
#
#   refresh.sh [--check] [PRISTINE_DIR]
#
# PRISTINE_DIR is an unpacked glommio-$VERSION crate (as cargo extracts it into
# ~/.cargo/registry/src/*/). Without it the script fetches glommio =$VERSION into a
# throwaway cargo project (`cargo fetch`, no build) and takes it from the registry.
#
# The source is copied into a temp dir, benches/ and tests/ are removed (the vendored
# copy leaves them out), and patches/*.patch are applied in order with `patch -p1`.
# Then:
#   --check  compare the result with this directory (ignoring patches/, refresh.sh and
#            PATCHES.md) and exit 1 on any difference, content or executable bit;
#   default  replace this directory's glommio source with the result, keeping
#            patches/, refresh.sh and PATCHES.md.
# A patch that does not apply stops the script (exit 1) naming it; the tree with the
# earlier patches applied is left in the temp dir for fixing it (see PATCHES.md).
#
# Environment: GLOMMIO_VERSION overrides VERSION below (e.g. to try an upgrade).
set -euo pipefail

VERSION="${GLOMMIO_VERSION:-0.9.0}"
# Top-level entries of this directory that are coregate's, not glommio's.
OURS=(patches refresh.sh PATCHES.md)
# Folders of the crate that the vendored copy leaves out.
DROPPED=(benches tests)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prog="$(basename "$0")"

die() {
    echo "$prog: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

check=0
src=""
while (($#)); do
    case "$1" in
    --check) check=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *)
        [[ -z "$src" ]] || die "more than one source directory given"
        src="$1"
        ;;
    esac
    shift
done

for entry in "${OURS[@]}"; do
    [[ -e "$here/$entry" ]] || die "$here does not look like the vendored glommio (no $entry)"
done
shopt -s nullglob
patches=("$here"/patches/*.patch)
shopt -u nullglob
((${#patches[@]})) || die "no patches in $here/patches"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/glommio-refresh.XXXXXX")"
keep_tmp=0
cleanup() {
    if ((keep_tmp)); then
        echo "$prog: left $tmp for inspection" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

if [[ -z "$src" ]]; then
    echo "$prog: fetching glommio =$VERSION with cargo" >&2
    mkdir -p "$tmp/fetch/src"
    cat >"$tmp/fetch/Cargo.toml" <<EOF
[package]
name = "glommio-refresh-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
glommio = "=$VERSION"

[workspace]
EOF
    echo 'fn main() {}' >"$tmp/fetch/src/main.rs"
    (cd "$tmp/fetch" && cargo fetch --quiet) || die "cargo fetch of glommio =$VERSION failed"
    shopt -s nullglob
    found=("${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"glommio-$VERSION")
    shopt -u nullglob
    ((${#found[@]})) || die "glommio-$VERSION not found under ${CARGO_HOME:-$HOME/.cargo}/registry/src"
    src="${found[0]}"
fi
[[ -f "$src/Cargo.toml" && -d "$src/src" ]] || die "$src is not a glommio source directory"
src="$(cd "$src" && pwd)"
[[ "$src" != "$here" ]] || die "the source must be a pristine glommio, not the vendored copy"
grep -q "^version = \"$VERSION\"" "$src/Cargo.toml" ||
    die "$src/Cargo.toml is not version $VERSION (set GLOMMIO_VERSION to the version you mean)"
echo "$prog: pristine source: $src" >&2

new="$tmp/glommio-$VERSION"
cp -a "$src" "$new"
for dir in "${DROPPED[@]}"; do
    rm -rf "${new:?}/$dir"
done
for entry in "${OURS[@]}"; do
    [[ ! -e "$new/$entry" ]] || die "glommio $VERSION itself has a top-level $entry; rename ours first"
done

for p in "${patches[@]}"; do
    name="$(basename "$p")"
    if ! out="$(cd "$new" && patch -p1 --dry-run --batch --forward --fuzz=0 <"$p" 2>&1)"; then
        keep_tmp=1
        printf '%s\n' "$out" >&2
        die "patch $name does not apply to glommio $VERSION; $new has the patches before it applied"
    fi
    (cd "$new" && patch -p1 --batch --forward --fuzz=0 --quiet --no-backup-if-mismatch <"$p") ||
        die "patch $name failed after a clean dry run"
    echo "$prog: applied $name" >&2
done

if ((check)); then
    cur="$tmp/vendored"
    cp -a "$here" "$cur"
    for entry in "${OURS[@]}"; do
        rm -rf "${cur:?}/$entry"
    done
    status=0
    diff -r --no-dereference "$new" "$cur" >&2 || status=1
    execs() { (cd "$1" && find . -type f -perm -u+x | LC_ALL=C sort); }
    if ! diff <(execs "$new") <(execs "$cur") >/dev/null; then
        echo "executable bits differ (< expected, > vendored):" >&2
        diff <(execs "$new") <(execs "$cur") >&2 || true
        status=1
    fi
    if ((status)); then
        die "vendor/glommio differs from glommio $VERSION + patches (diff above: < expected, > vendored)"
    fi
    echo "$prog: OK: vendor/glommio is glommio $VERSION without ${DROPPED[*]/%//}, plus ${#patches[@]} patches"
    exit 0
fi

find "$here" -mindepth 1 -maxdepth 1 \
    ! -name patches ! -name refresh.sh ! -name PATCHES.md -exec rm -rf {} +
cp -a "$new/." "$here/"
echo "$prog: replaced $here with glommio $VERSION without ${DROPPED[*]/%//}, plus ${#patches[@]} patches"
