#!/usr/bin/env bash
# Builds the agent-sandbox controller pinned in binaries/agent-sandbox (the peer that
# bench/bench_scale.py measures against) and caches it like setup/binaries.sh does:
# $KOCOON_CACHE/builds/agent-sandbox-<version>-<hash of go.mod and go.sum>/, linked into
# $KOCOON_CACHE/bin. Run by `make bench` only; a second run with nothing changed takes a second.
#
#   KOCOON_CACHE   cache root (default: ~/.cache/kocoon)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KOCOON_CACHE:-$HOME/.cache/kocoon}
bindir=$cache/bin
moddir=$root/binaries/agent-sandbox
pkg=sigs.k8s.io/agent-sandbox/cmd/agent-sandbox-controller
name=agent-sandbox-controller

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
command -v go >/dev/null || { echo "setup/agent-sandbox.sh: Go is required (go 1.26 or newer)" >&2; exit 1; }
log() { printf '[agent-sandbox %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

version=$(awk '$1 == "sigs.k8s.io/agent-sandbox" { print $2 }' "$moddir/go.mod")
key=$(cat "$moddir/go.mod" "$moddir/go.sum" | sha256sum | cut -c1-12)
dest=$cache/builds/agent-sandbox-$version-$key
mkdir -p "$bindir"
if [[ ! -x $dest/$name ]]; then
    log "building $name $version (the first build takes a few minutes)"
    mkdir -p "$dest"
    start=$SECONDS
    v=sigs.k8s.io/agent-sandbox/internal/version
    (cd "$moddir" && go build -trimpath \
        -ldflags "-s -w -X $v.gitVersion=$version -X $v.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        -o "$dest/$name.tmp" "$pkg")
    mv "$dest/$name.tmp" "$dest/$name"
    log "built $name in $((SECONDS - start)) s"
fi
# The CRDs and RBAC ship in the module: keep the pinned copies beside the binary.
if [[ ! -d $dest/k8s ]]; then
    src=$(cd "$moddir" && go list -m -f '{{.Dir}}' sigs.k8s.io/agent-sandbox)
    mkdir -p "$dest/k8s.tmp"
    cp -r "$src/k8s/crds" "$src/k8s/controller.yaml" "$src/k8s/rbac.generated.yaml" "$dest/k8s.tmp/"
    chmod -R u+w "$dest/k8s.tmp"
    mv "$dest/k8s.tmp" "$dest/k8s"
fi
ln -sfn "$dest/$name" "$bindir/$name"
ln -sfn "$dest/k8s" "$cache/agent-sandbox-k8s"
log "ready: $bindir/$name"
