#!/usr/bin/env bash
# Prepares the optional real node of the local cluster (`kocoon dev up --real-node`):
#   - containerd 2.x, its runc shim and ctr, built from the Go module in binaries/containerd
#     and cached like the other pinned binaries;
#   - runc, crun, the CNI plugins, iptables, busybox and debootstrap from Debian's packages;
#   - CRIU from setup/criu.sh (4.2.1: 4.1 cannot checkpoint TCP sockets on kernels from 6.16).
# The container images themselves are built by `kocoon dev images` (cached by content).
# Only the node tier needs this; `make test` without the node tier never runs it.
#
#   KOCOON_CACHE   cache root (default: ~/.cache/kocoon); binaries are linked into $KOCOON_CACHE/bin
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KOCOON_CACHE:-$HOME/.cache/kocoon}
bindir=$cache/bin
moddir=$root/binaries/containerd

log() { printf '[node %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[node] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=lib.sh
source "$root/setup/lib.sh"

[[ $(id -u) -eq 0 ]] || die "run as root: apt-get, the kubelet and containerd need it"
command -v go >/dev/null || die "Go is required (go 1.26.6 or newer) to build containerd"

# runc drives containers and CRIU (crun too, where built with CRIU: the agent checks);
# containernetworking-plugins gives bridge, host-local and loopback; iptables is needed by
# the bridge plugin's masquerade rules and by CRIU's network lock; busybox-static and
# debootstrap build the root filesystems of the local images.
PACKAGES=(runc crun containernetworking-plugins iptables busybox-static debootstrap)



# build <binary-name> <main-package> [tags] [ldflags...]: cached under a key of the module files.
build() {
    local name=$1 pkg=$2 tags=$3; shift 3
    local key dest start
    key=$(cat "$moddir/go.mod" "$moddir/go.sum" | sha256sum | cut -c1-12)
    dest=$cache/builds/containerd-$CONTAINERD_VERSION-$key
    if [[ ! -x $dest/$name ]]; then
        log "building $name $CONTAINERD_VERSION"
        mkdir -p "$dest"
        start=$SECONDS
        (cd "$moddir" && go build -trimpath -tags "$tags" -ldflags "-s -w $*" -o "$dest/$name.tmp" "$pkg")
        mv "$dest/$name.tmp" "$dest/$name"
        log "built $name in $((SECONDS - start)) s"
    fi
    ln -sfn "$dest/$name" "$bindir/$name"
}

export GOTOOLCHAIN=local GOFLAGS=-mod=mod
# cgo is only needed by the btrfs snapshotter, which the node does not use (overlayfs).
export CGO_ENABLED=0
mkdir -p "$bindir"




start=$SECONDS
apt_install "${PACKAGES[@]}"
# runc, iptables and the CRIU every tier uses.
bash "$root/setup/criu.sh" >/dev/null

CONTAINERD_VERSION=$(cd "$moddir" && go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)
pkgbase=github.com/containerd/containerd/v2
ldflags="-X $pkgbase/version.Version=$CONTAINERD_VERSION -X $pkgbase/version.Package=$pkgbase"
# Tags as upstream's Makefile: the shim is built without gRPC; none of the optional snapshotters.
daemon_tags=urfave_cli_no_docs,no_btrfs,no_devmapper,no_zfs
build containerd "$pkgbase/cmd/containerd" "$daemon_tags" "$ldflags"
build containerd-shim-runc-v2 "$pkgbase/cmd/containerd-shim-runc-v2" "$daemon_tags,no_grpc" "$ldflags"
build ctr "$pkgbase/cmd/ctr" "$daemon_tags" "$ldflags"

log "containerd: $("$bindir/containerd" --version)"
log "runc: $(runc --version | head -n1)"
log "CNI plugins: $(dpkg-query -W -f='${Version}' containernetworking-plugins) in /usr/lib/cni"
log "ready in $((SECONDS - start)) s"
