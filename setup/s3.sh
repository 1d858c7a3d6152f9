#!/usr/bin/env bash
# Installs the S3-compatible server the agent's remote-store tests run on loopback (moto's
# server) into a virtualenv of its own, cached outside the work tree and keyed by version.
#
# Why a separate virtualenv: moto needs boto3/botocore, which require python-dateutil<3, while
# the Kubernetes client in the development dependencies requires python-dateutil>=3.
#
#   KOCOON_CACHE   cache root (default: ~/.cache/kocoon); the server is linked into $KOCOON_CACHE/bin
set -euo pipefail

MOTO_VERSION=5.2.5

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KOCOON_CACHE:-$HOME/.cache/kocoon}
bindir=$cache/bin
venv=$cache/s3/moto-$MOTO_VERSION
python=${PYTHON:-$root/.venv/bin/python}
[[ -x $python ]] || python=python3

log() { printf '[s3 %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

mkdir -p "$bindir"
if [[ ! -x $venv/bin/moto_server || ! -f $venv/.installed ]]; then
    log "installing moto[server] $MOTO_VERSION into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "moto[server]==$MOTO_VERSION"
    # Written last: an interrupted install is redone, never taken for a complete one.
    touch "$venv/.installed"
fi
ln -sfn "$venv/bin/moto_server" "$bindir/moto_server"
log "ready: $bindir/moto_server (moto $MOTO_VERSION)"
