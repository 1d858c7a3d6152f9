#!/usr/bin/env bash
# Prepares the optional real node of the local cluster (`kocoon dev up --real-node`):
#   - containerd 2.x, its runc shim and ctr, built from the Go module in binaries/containerd
#     and cached like the other pinned binaries;
#   - runc, the CNI plugins, iptables, busybox and debootstrap from Debian's packages;
#   - CRIU: setup/criu.sh's build deps, and CRIU 4.2.1 from Debian's unstable source package,
#     because kernels from 6.16 refuse SO_PASSCRED on TCP sockets and CRIU 4.1.1 then fails to
#     checkpoint any process with a TCP socket ("Can't get 1:16 opt: Operation not supported").
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

[[ $(id -u) -eq 0 ]] || die "run as root: apt-get, the kubelet and containerd need it"
command -v go >/dev/null || die "Go is required (go 1.26.6 or newer) to build containerd"

# runc drives containers and CRIU; containernetworking-plugins gives bridge, host-local and
# loopback; iptables is needed by the bridge plugin's masquerade rules and by CRIU's network
# lock; busybox-static and debootstrap build the root filesystems of the local images.
PACKAGES=(runc containernetworking-plugins iptables busybox-static debootstrap)

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
    local newest
    newest=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit)
    if [[ -z $newest ]]; then
        log "apt-get update (package lists are missing or older than a day)"
        apt-get update -qq
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

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

# The Debian mirror this machine already uses: the first non-security URI of its apt sources.
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

CRIU_VERSION=4.2.1
CRIU_DEBIAN_VERSION=4.2.1-1
CRIU_SUITE=sid
criu_prefix=$cache/criu-$CRIU_VERSION

# Only the criu binary: runc drives it as a program (4.2's install-lib also wants pip).
build_criu() {
    local work mirror apt_dir begun
    work=$(mktemp -d)
    mirror=$(debian_mirror) || die "no Debian mirror in /etc/apt/sources.list.d/*.sources or sources.list; add one"
    apt_dir=$work/apt
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $CRIU_SUITE main" \
        >"$apt_dir/sources.list"
    printf '%s\n' "Dir::Etc::SourceList \"$apt_dir/sources.list\";" \
        'Dir::Etc::SourceParts "/nonexistent";' "Dir::State::Lists \"$apt_dir/lists\";" \
        "Dir::Cache \"$apt_dir/cache\";" 'APT::Sandbox::User "root";' >"$apt_dir/apt.conf"
    log "downloading criu=$CRIU_DEBIAN_VERSION source ($CRIU_SUITE) from $mirror"
    APT_CONFIG=$apt_dir/apt.conf apt-get update -qq
    (cd "$work" && APT_CONFIG=$apt_dir/apt.conf apt-get source --download-only -qq \
        "criu=$CRIU_DEBIAN_VERSION" >/dev/null 2>&1) || true
    compgen -G "$work/criu_$CRIU_VERSION.orig.tar.*" >/dev/null ||
        die "criu_$CRIU_VERSION.orig.tar.* was not downloaded from $mirror ($CRIU_SUITE)"
    tar -C "$work" -xf "$work"/criu_"$CRIU_VERSION".orig.tar.*
    begun=$SECONDS
    log "building criu $CRIU_VERSION"
    make -C "$work/criu-$CRIU_VERSION" -j2 criu >"$work/build.log" 2>&1 ||
        { tail -n 30 "$work/build.log" >&2; die "criu build failed"; }
    rm -rf "$criu_prefix.tmp"
    install -D -m 0755 "$work/criu-$CRIU_VERSION/criu/criu" "$criu_prefix.tmp/bin/criu"
    rm -rf "$criu_prefix"
    mv "$criu_prefix.tmp" "$criu_prefix"
    rm -rf "$work"
    log "built criu $CRIU_VERSION in $((SECONDS - begun)) s"
}

start=$SECONDS
apt_install "${PACKAGES[@]}"
# Build dependencies, runc and iptables, and the CRIU 4.1.1 the other tiers use.
bash "$root/setup/criu.sh"
if ! { [[ -x $criu_prefix/bin/criu ]] && "$criu_prefix/bin/criu" check >/dev/null 2>&1; }; then
    build_criu
fi
"$criu_prefix/bin/criu" check >/dev/null 2>&1 || die "criu check fails with $criu_prefix/bin/criu"

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
log "criu: $criu_prefix/bin/criu ($("$criu_prefix/bin/criu" --version | head -n1))"
log "CNI plugins: $(dpkg-query -W -f='${Version}' containernetworking-plugins) in /usr/lib/cni"
log "ready in $((SECONDS - start)) s"
