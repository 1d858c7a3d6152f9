#!/usr/bin/env bash
# Builds the pinned Kubernetes, etcd, kwok and helm binaries from the Go modules in binaries/
# and caches them outside the work tree, keyed by version and by the module files' hash.
# A second run with nothing changed takes seconds.
#
#   KOCOON_CACHE   cache root (default: ~/.cache/kocoon); binaries are linked into $KOCOON_CACHE/bin
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KOCOON_CACHE:-$HOME/.cache/kocoon}
bindir=$cache/bin
# shellcheck source=../binaries/versions.env
source "$root/binaries/versions.env"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
command -v go >/dev/null || { echo "setup/binaries.sh: Go is required (go 1.26 or newer)" >&2; exit 1; }
mkdir -p "$bindir"

log() { printf '[binaries %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# wait_for PID SECONDS: true once PID has exited, false if it still runs after SECONDS.
wait_for() {
    local pid=$1 i
    for ((i = 0; i < $2; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 1
    done
    ! kill -0 "$pid" 2>/dev/null
}

# build <module-dir> <version> <binary-name> <main-package> [ldflags...]
build() {
    local moddir=$1 version=$2 name=$3 pkg=$4; shift 4
    local key
    key=$(cat "$root/binaries/$moddir/go.mod" "$root/binaries/$moddir/go.sum" | sha256sum | cut -c1-12)
    local dest=$cache/builds/$moddir-$version-$key
    if [[ ! -x $dest/$name ]]; then
        log "building $name $version (first build of a release takes minutes; later ones seconds)"
        mkdir -p "$dest"
        local start=$SECONDS
        (cd "$root/binaries/$moddir" &&
            go build -trimpath -tags "${BUILD_TAGS:-}" -ldflags "-s -w $*" -o "$dest/$name.tmp" "$pkg") &
        local build=$!
        # A first build is silent for minutes: say it is still going.
        while ! wait_for "$build" 30; do log "  still building $name ($((SECONDS - start)) s)"; done
        wait "$build"
        mv "$dest/$name.tmp" "$dest/$name"
        log "built $name in $((SECONDS - start)) s"
    fi
    ln -sfn "$dest/$name" "$bindir/$name"
}

kube_ldflags() {
    local v=$KUBERNETES_VERSION major minor date
    major=${v#v}; major=${major%%.*}
    minor=${v#v*.}; minor=${minor%%.*}
    date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        printf -- "-X '%s.gitVersion=%s' -X '%s.gitMajor=%s' -X '%s.gitMinor=%s' -X '%s.gitTreeState=clean' -X '%s.buildDate=%s' " \
            "$pkg" "$v" "$pkg" "$major" "$pkg" "$minor" "$pkg" "$pkg" "$date"
    done
}

log "cache: $cache"
# The build date is part of the ldflags only; the cache key is the module files, so a cached
# binary is reused whatever its stamp date.
kflags=$(kube_ldflags)
# One binary at a time: linking Kubernetes binaries needs several GB of memory each.
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
    BUILD_TAGS=selinux,notest,grpcnotrace build kubernetes "$KUBERNETES_VERSION" "$b" "k8s.io/kubernetes/cmd/$b" "$kflags"
done
build etcd "$ETCD_VERSION" etcd go.etcd.io/etcd/server/v3
build etcd "$ETCD_VERSION" etcdctl go.etcd.io/etcd/etcdctl/v3
build kwok "$KWOK_VERSION" kwok sigs.k8s.io/kwok/cmd/kwok \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION#v}"
build helm "$HELM_VERSION" helm helm.sh/helm/v4/cmd/helm \
    "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

log "ready in $bindir: $(ls "$bindir" | tr '\n' ' ')"
