#!/usr/bin/env bash
# Builds CRIU 4.2.1 from Debian's unstable source package against this machine's own
# build dependencies, installs runc and iptables, and caches the result outside the work tree,
# keyed by version. A second run finds a working cache and takes seconds.
#
# Why build, and why 4.2: the stable release's CRIU (3.17) fails `criu check` on recent kernels
# (it does not know the `[vvar_vclock]` vDSO mapping); newer suites' binary packages need a
# newer glibc; and CRIU 4.1 cannot checkpoint a process with a TCP socket on kernels from 6.16
# ("sockets: Can't get 1:16 opt: Operation not supported"), which 4.2 fixes. This script never
# falls back to the distribution's CRIU.
#
#   KOCOON_CACHE   cache root (default: ~/.cache/kocoon); CRIU lands in $KOCOON_CACHE/criu-4.2.1
#
# Code that runs CRIU finds it through $KOCOON_CRIU, else $KOCOON_CACHE/criu-4.2.1/bin/criu,
# else PATH.
set -euo pipefail

CRIU_VERSION=4.2.1
CRIU_DEBIAN_VERSION=4.2.1-1
SOURCE_SUITE=sid

cache=${KOCOON_CACHE:-$HOME/.cache/kocoon}
prefix=$cache/criu-$CRIU_VERSION
criu=$prefix/bin/criu

log() { printf '[criu %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[criu] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

[[ $(id -u) -eq 0 ]] || die "run as root: apt-get and CRIU need it"

BUILD_DEPS=(build-essential pkg-config protobuf-c-compiler libprotobuf-c-dev protobuf-compiler libprotobuf-dev
    libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev
    libaio-dev python3-protobuf xz-utils)
# runc drives CRIU for containers; its network lock needs iptables-restore.
RUNTIME_DEPS=(runc iptables)

cache_works() {
    [[ -x $criu ]] && "$criu" check >/dev/null 2>&1
}

build_criu() {
    local work start
    work=$(mktemp -d)
    fetch_debian_source criu "$CRIU_DEBIAN_VERSION" "$SOURCE_SUITE" "$work"
    tar -C "$work" -xf "$work"/criu_"$CRIU_VERSION".orig.tar.*
    local src=$work/criu-$CRIU_VERSION
    [[ -d $src ]] || die "unexpected tarball layout: $src missing"
    start=$SECONDS
    log "building criu $CRIU_VERSION (about a minute on two cores)"
    # Two jobs: the machine is shared; the build is short anyway. Only the criu program:
    # runc and the agent run it as a program, and nothing here links libcriu.
    make -C "$src" -j2 criu >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; die "criu build failed"; }
    log "built in $((SECONDS - start)) s; installing into $prefix"
    rm -rf "$prefix.tmp"
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
log "runc: $(command -v runc) ($(runc --version | head -n1))"
log "use it: export KOCOON_CRIU=$criu  (or PATH=$prefix/bin:\$PATH)"
