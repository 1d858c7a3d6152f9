#!/usr/bin/env bash
# Builds CRIU 4.1.1 (and libcriu) from Debian's trixie source package against this machine's own
# build dependencies, installs runc and iptables, and caches the result outside the work tree,
# keyed by version. A second run finds a working cache and takes seconds.
#
# Why build: the stable release's CRIU (3.17) fails `criu check` on recent kernels (it does not
# know the `[vvar_vclock]` vDSO mapping), and trixie's binary package needs a newer glibc. This
# script never falls back to the distribution's CRIU.
#
#   KOCOON_CACHE   cache root (default: ~/.cache/kocoon); CRIU lands in $KOCOON_CACHE/criu-4.1.1
#
# Code that runs CRIU finds it through $KOCOON_CRIU, else $KOCOON_CACHE/criu-4.1.1/bin/criu,
# else PATH.
set -euo pipefail

CRIU_VERSION=4.1.1
CRIU_DEBIAN_VERSION=4.1.1-1
SOURCE_SUITE=trixie

cache=${KOCOON_CACHE:-$HOME/.cache/kocoon}
prefix=$cache/criu-$CRIU_VERSION
criu=$prefix/bin/criu

log() { printf '[criu %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[criu] error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root: apt-get and CRIU need it"

BUILD_DEPS=(build-essential pkg-config protobuf-c-compiler libprotobuf-c-dev protobuf-compiler libprotobuf-dev
    libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev
    libaio-dev python3-protobuf xz-utils)
# runc drives CRIU for containers; its network lock needs iptables-restore.
RUNTIME_DEPS=(runc iptables)

missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

apt_install() {
    local -a missing
    mapfile -t missing < <(missing_packages "$@")
    ((${#missing[@]})) || return 0
    # Refresh the package lists once when they are absent or older than a day.
    local newest
    newest=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit)
    if [[ -z $newest ]]; then
        log "apt-get update (package lists are missing or older than a day)"
        apt-get update -qq
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Debian mirror this machine already uses: the first non-security URI of its apt sources
# (deb822 `.sources` files first, then the one-line `sources.list` format).
debian_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        uri=$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f" |
            grep -v -- '-security' | head -n1 || true)
        [[ -n $uri ]] && { echo "${uri%/}"; return 0; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        uri=$(awk '$1 == "deb" || $1 == "deb-src" {
                for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$f" |
            grep -v -- '-security' | head -n1 || true)
        [[ -n $uri ]] && { echo "${uri%/}"; return 0; }
    done
    return 1
}

cache_works() {
    [[ -x $criu ]] && "$criu" check >/dev/null 2>&1
}

# Downloads the orig tarball into $1 through a private apt configuration: the machine's own
# sources stay untouched. Only the orig tarball is fetched (the mirror may lack the .dsc).
fetch_source() {
    local dest=$1 mirror apt_dir
    mirror=$(debian_mirror) || die "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; add one"
    log "mirror from the machine's apt sources: $mirror"
    apt_dir=$(mktemp -d)
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $SOURCE_SUITE main" \
        >"$apt_dir/sources.list"
    cat >"$apt_dir/apt.conf" <<EOF
Dir::Etc::SourceList "$apt_dir/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "$apt_dir/lists";
Dir::Cache "$apt_dir/cache";
// The private directory is not readable by the _apt user; download as root.
APT::Sandbox::User "root";
EOF
    log "apt-get update for $SOURCE_SUITE source packages (private configuration)"
    APT_CONFIG=$apt_dir/apt.conf apt-get update -qq
    log "downloading criu=$CRIU_DEBIAN_VERSION source"
    # apt-get source reports the missing .dsc as an error even when the tarball arrived.
    (cd "$dest" && APT_CONFIG=$apt_dir/apt.conf apt-get source --download-only -qq \
        "criu=$CRIU_DEBIAN_VERSION" >/dev/null 2>&1) || true
    rm -rf "$apt_dir"
    compgen -G "$dest/criu_$CRIU_VERSION.orig.tar.*" >/dev/null ||
        die "criu_$CRIU_VERSION.orig.tar.* was not downloaded from $mirror ($SOURCE_SUITE)"
}

build_criu() {
    local work start
    work=$(mktemp -d)
    fetch_source "$work"
    tar -C "$work" -xf "$work"/criu_"$CRIU_VERSION".orig.tar.*
    local src=$work/criu-$CRIU_VERSION
    [[ -d $src ]] || die "unexpected tarball layout: $src missing"
    start=$SECONDS
    log "building criu $CRIU_VERSION (about a minute on two cores)"
    # Two jobs: the machine is shared; the build is short anyway.
    make -C "$src" -j2 criu >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; die "criu build failed"; }
    log "building libcriu"
    make -C "$src" -j2 lib >>"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; die "libcriu build failed"; }
    log "built in $((SECONDS - start)) s; installing into $prefix"
    rm -rf "$prefix.tmp"
    make -C "$src" install-lib PREFIX="$prefix.tmp" LIBDIR="$prefix.tmp/lib" >>"$work/build.log" 2>&1 ||
        { tail -n 30 "$work/build.log" >&2; die "libcriu install failed"; }
    install -D -m 0755 "$src/criu/criu" "$prefix.tmp/bin/criu"
    # Publish atomically so a half-built cache is never taken for a good one.
    rm -rf "$prefix"
    mv "$prefix.tmp" "$prefix"
    rm -rf "$work"
}

log "cache: $prefix"
apt_install "${RUNTIME_DEPS[@]}"
if cache_works; then
    log "cached criu $CRIU_VERSION passes criu check; nothing to build"
else
    apt_install "${BUILD_DEPS[@]}"
    build_criu
fi

log "criu check:"
# Every CRIU run logs a harmless RLIMIT_NOFILE notice; it is filtered from the output.
check_output=$("$criu" check 2>&1) || { echo "$check_output" >&2; die "criu check failed with $criu"; }
grep -v 'RLIMIT_NOFILE' <<<"$check_output" || true
log "criu: $criu ($("$criu" --version | head -n1))"
log "libcriu: $prefix/lib, headers: $prefix/include"
log "runc: $(command -v runc) ($(runc --version | head -n1))"
log "use it: export KOCOON_CRIU=$criu  (or PATH=$prefix/bin:\$PATH)"
