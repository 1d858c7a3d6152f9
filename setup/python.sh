#!/usr/bin/env bash
# Creates the project's virtualenv (.venv) with Python >= 3.11 and installs Kocoon with its
# development dependencies. Re-installs only when pyproject.toml changed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv
stamp=$venv/.kocoon-installed

python=${PYTHON:-}
if [[ -z $python ]]; then
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            python=$candidate
            break
        fi
    done
fi
[[ -n $python ]] || { echo "setup/python.sh: Python 3.11 or newer is required" >&2; exit 1; }

want=$(sha256sum "$root/pyproject.toml" | cut -c1-16)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "[python] .venv is up to date"
    exit 0
fi
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "[python] installing python3-venv"
    apt-get install -y -q python3-venv >/dev/null
fi
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
echo "[python] installing kocoon and its development dependencies into .venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e "$root[dev]"
echo "$want" > "$stamp"
echo "[python] ready: $("$venv/bin/python" --version)"
