"""Container images for the real node, built locally: no registry is involved.

Each image is an OCI archive that containerd imports under `kocoon.local/<name>:local`:

- `pause`: the pod sandbox's process (`images/pause`, a tiny Go program);
- `busybox`: the distribution's static busybox with its applet links;
- `python`: a debootstrap minbase of this machine's Debian release with `python3`, plus the
  in-memory-state test workload `kocoon-counter` (`images/python/counter_server.py`);
- `llamacpp`: the CPU model engine, `llama-server` (built by setup/llamacpp.sh) and exactly the
  shared libraries it loads (glibc, libstdc++, libgomp, libgcc_s), entrypoint the server;
- `smollm2`: data only, the SmolLM2-135M GGUF at `/models/`, for a Kubernetes image volume.

The two engine images are built when setup/llamacpp.sh has run (`make llamacpp`); without it
they are left out of the default set with a note, and asking for them by name fails.

Layers are cached by the content of their inputs under `$KOCOON_CACHE/images`, so a second
build only re-packs the small archives. Pods that use these images set
`imagePullPolicy: Never`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kocoon import contract
from kocoon.devcluster import binaries, engines

log = logging.getLogger("kocoon.devcluster.images")

REGISTRY = "kocoon.local"
TAG = "local"
PAUSE = "pause"
BUSYBOX = "busybox"
PYTHON = "python"
LLAMACPP = "llamacpp"
SMOLLM2 = "smollm2"
# Bump when a recipe changes in a way its inputs do not show.
RECIPE_VERSION = "1"
# Where the test workload lives inside the python image.
COUNTER_PATH = "/usr/local/bin/kocoon-counter"
COUNTER_PORT = 8080

MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says which tool failed and how to fix it."""


def reference(name: str) -> str:
    """The image reference pods use, e.g. `kocoon.local/python:local`."""
    return f"{REGISTRY}/{name}:{TAG}"


def cache_root() -> Path:
    return binaries.cache_dir() / "images"


# ---- pure builders of the OCI documents ------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """A content-addressed layer: the gzip blob's digest and size, and the tar's digest."""

    digest: str
    size: int
    diff_id: str


@dataclass(frozen=True)
class ImageConfig:
    """The runtime defaults an image carries."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}",)
    working_dir: str = "/"
    exposed_ports: tuple[int, ...] = ()


def config_document(config: ImageConfig, layers: Iterable[Blob]) -> dict[str, Any]:
    """The OCI image configuration (architecture, runtime defaults, layer diff ids)."""
    runtime: dict[str, Any] = {"Env": list(config.env), "WorkingDir": config.working_dir}
    if config.entrypoint:
        runtime["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        runtime["Cmd"] = list(config.cmd)
    if config.exposed_ports:
        runtime["ExposedPorts"] = {f"{port}/tcp": {} for port in config.exposed_ports}
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    }


def manifest_document(
    config_digest: str, config_size: int, layers: Iterable[Blob]
) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }


def index_document(ref: str, manifest_digest: str, manifest_size: int) -> dict[str, Any]:
    """The archive's index; containerd names the imported image from the annotations."""
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {
                    ANNOTATION_CONTAINERD_NAME: ref,
                    ANNOTATION_REF_NAME: ref.rsplit(":", 1)[1],
                },
            }
        ],
    }


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def content_key(*parts: str | bytes) -> str:
    """A short hash over a recipe's inputs: the cache key of a layer or an image."""
    hasher = hashlib.sha256(RECIPE_VERSION.encode())
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
        hasher.update(b"\0")
    return hasher.hexdigest()[:16]


# ---- layers: root filesystems made on disk, packed once, cached by key -----------------------


@dataclass(frozen=True)
class Layer:
    """A layer recipe: `make(rootfs)` fills an empty directory; `key` names its inputs."""

    name: str
    key: str
    make: Callable[[Path], None]


@dataclass(frozen=True)
class Recipe:
    name: str
    layers: tuple[Layer, ...]
    config: ImageConfig = field(default_factory=ImageConfig)


def _blob_path(digest: str) -> Path:
    return cache_root() / "blobs" / digest.replace(":", "/")


def _layer(layer: Layer) -> Blob:
    record = cache_root() / "layers" / f"{layer.name}-{layer.key}.json"
    if record.exists():
        blob = Blob(**json.loads(record.read_text()))
        if _blob_path(blob.digest).exists():
            return blob
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"kocoon-image-{layer.name}-") as work:
        rootfs = Path(work) / "rootfs"
        rootfs.mkdir()
        layer.make(rootfs)
        blob = _pack(rootfs, Path(work) / "layer.tar.gz")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(blob.__dict__))
    log.info(
        "built layer %s in %.1f s (%s bytes)", layer.name, time.monotonic() - started, blob.size
    )
    return blob


class _HashingWriter(io.RawIOBase):
    """Hashes what passes through on its way to `target` (the tar stream before gzip)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.hasher = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hasher.update(view)
        self.target.write(view)
        return len(view)


def _pack(rootfs: Path, out: Path) -> Blob:
    with (
        out.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz,
    ):
        tee = _HashingWriter(gz)
        with tarfile.open(fileobj=tee, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for entry in sorted(rootfs.iterdir()):
                tar.add(entry, arcname=entry.name, recursive=True)
        diff_id = "sha256:" + tee.hasher.hexdigest()
    data_digest = hashlib.sha256()
    with out.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            data_digest.update(chunk)
    digest = "sha256:" + data_digest.hexdigest()
    dest = _blob_path(digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(out, dest)
    return Blob(digest=digest, size=dest.stat().st_size, diff_id=diff_id)


def archive(recipe: Recipe) -> Path:
    """The image's OCI archive (built and cached on first use) for `ctr images import`."""
    blobs = [_layer(layer) for layer in recipe.layers]
    config = json.dumps(config_document(recipe.config, blobs), sort_keys=True).encode()
    config_digest = digest_of(config)
    manifest = json.dumps(
        manifest_document(config_digest, len(config), blobs), sort_keys=True
    ).encode()
    manifest_digest = digest_of(manifest)
    key = manifest_digest.split(":", 1)[1][:16]
    path = cache_root() / "archives" / f"{recipe.name}-{key}.tar"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    index = json.dumps(
        index_document(reference(recipe.name), manifest_digest, len(manifest))
    ).encode()
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add_bytes(tar, "index.json", index)
        _add_bytes(tar, _blob_name(config_digest), config)
        _add_bytes(tar, _blob_name(manifest_digest), manifest)
        for blob in blobs:
            tar.add(_blob_path(blob.digest), arcname=_blob_name(blob.digest))
    tmp.rename(path)
    return path


def _blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


# ---- the recipes -----------------------------------------------------------------------------


def _project_file(*parts: str) -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.joinpath(*parts)
        if candidate.exists() and (parent / "pyproject.toml").is_file():
            return candidate
    raise ImageBuildError(f"{'/'.join(parts)} not found above {here}: run from a project checkout")


def _run(argv: list[str], what: str, **kwargs: Any) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=True, **kwargs)
    except FileNotFoundError as error:
        raise ImageBuildError(f"{what}: {argv[0]} is missing; run setup/node.sh") from error
    except subprocess.CalledProcessError as error:
        tail = "\n".join((error.stderr or error.stdout or "").splitlines()[-15:])
        raise ImageBuildError(f"{what} failed (exit {error.returncode}):\n{tail}") from error
    return str(done.stdout)


def _base_dirs(rootfs: Path) -> None:
    for directory in ("bin", "dev", "etc", "proc", "sys", "tmp", "var/run"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
    )
    (rootfs / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")


def pause_recipe() -> Recipe:
    source = _project_file("images", "pause")
    inputs = [(source / name).read_bytes() for name in ("go.mod", "main.go")]
    go = shutil.which("go")
    go_version = _run([go, "version"], "go version") if go else "missing"

    def make(rootfs: Path) -> None:
        if go is None:
            raise ImageBuildError("building the pause image needs Go: run setup/node.sh")
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
        _run(
            [
                go,
                "build",
                "-C",
                str(source),
                "-trimpath",
                "-ldflags=-s -w",
                "-o",
                str(rootfs / "pause"),
                ".",
            ],
            "go build of images/pause",
            env=env,
        )

    layer = Layer(PAUSE, content_key(go_version, *inputs), make)
    return Recipe(PAUSE, (layer,), ImageConfig(entrypoint=("/pause",), env=()))


def busybox_recipe() -> Recipe:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise ImageBuildError("/bin/busybox is missing: install busybox-static (setup/node.sh)")
    binary = busybox.read_bytes()

    def make(rootfs: Path) -> None:
        _base_dirs(rootfs)
        target = rootfs / "bin" / "busybox"
        target.write_bytes(binary)
        target.chmod(0o755)
        for applet in _run([str(busybox), "--list"], "busybox --list").split():
            link = rootfs / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")

    layer = Layer(BUSYBOX, content_key(hashlib.sha256(binary).hexdigest()), make)
    return Recipe(BUSYBOX, (layer,), ImageConfig(cmd=("/bin/sh",)))


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (first non-security URI), deb822 files first."""
    candidates: list[str] = []
    for path in sorted(sources_dir.glob("sources.list.d/*.sources")):
        for line in path.read_text().splitlines():
            if line.lower().startswith("uris:"):
                candidates += line.split()[1:]
    for path in [sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                candidates += re.findall(r"^deb(?:-src)?\s+(?:\[[^]]*\]\s+)?(\S+://\S+)", line)
    usable = [uri.rstrip("/") for uri in candidates if "-security" not in uri]
    if usable:
        return usable[0]
    raise ImageBuildError(
        f"no Debian mirror in {sources_dir}/sources.list.d/*.sources or sources.list: add one"
    )


def debian_suite(os_release: Path = Path("/etc/os-release")) -> str:
    for line in os_release.read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    raise ImageBuildError(f"VERSION_CODENAME missing from {os_release}: not a Debian system?")


PYTHON_PACKAGES = ("python3",)
# Files a container never reads; dropping them shrinks the layer by about a third.
PYTHON_PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
)


def python_recipe() -> Recipe:
    suite = debian_suite()
    counter = _project_file("images", "python", "counter_server.py").read_bytes()

    def make_base(rootfs: Path) -> None:
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            raise ImageBuildError("debootstrap is missing: run setup/node.sh")
        _run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(PYTHON_PACKAGES)}",
                suite,
                str(rootfs),
                debian_mirror(),
            ],
            f"debootstrap {suite}",
            timeout=900,
        )
        for relative in PYTHON_PRUNE:
            target = rootfs / relative
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()

    def make_app(rootfs: Path) -> None:
        target = rootfs / COUNTER_PATH.lstrip("/")
        target.parent.mkdir(parents=True)
        target.write_bytes(b"#!/usr/bin/python3\n" + counter)
        target.chmod(0o755)

    base = Layer("python-base", content_key(suite, *PYTHON_PACKAGES, *PYTHON_PRUNE), make_base)
    app = Layer("python-app", content_key(counter), make_app)
    config = ImageConfig(
        cmd=(COUNTER_PATH,),
        env=(f"PATH={DEFAULT_PATH}", "PYTHONUNBUFFERED=1", "LANG=C.UTF-8"),
        exposed_ports=(COUNTER_PORT,),
    )
    return Recipe(PYTHON, (base, app), config)


def shared_libraries(ldd_output: str) -> list[Path]:
    """The libraries `ldd` says a program loads (the loader included), as the paths it names."""
    found: list[Path] = []
    for line in ldd_output.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
            if target == "not found" or not target:
                lib = line.split("=>", 1)[0].strip()
                raise ImageBuildError(f"{lib}: not found by ldd (is its Debian package installed?)")
        else:
            target = line.split(" (", 1)[0].strip()
        if target.startswith("/"):
            found.append(Path(target))
    return found


def _copy_file(source: Path, rootfs: Path, at: Path, mode: int = 0o755) -> None:
    target = rootfs / str(at).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.resolve().read_bytes())
    target.chmod(mode)


def llamacpp_recipe() -> Recipe:
    """llama-server with exactly the host libraries it loads: no distribution root filesystem."""
    try:
        server = engines.llama_server()
    except engines.EngineNotInstalledError as error:
        raise ImageBuildError(str(error)) from error
    libraries = shared_libraries(_run(["ldd", str(server)], f"ldd {server}"))
    digests = [hashlib.sha256(server.read_bytes()).hexdigest()]
    digests += [
        f"{lib}:{hashlib.sha256(lib.resolve().read_bytes()).hexdigest()}" for lib in libraries
    ]

    def make(rootfs: Path) -> None:
        _base_dirs(rootfs)
        _copy_file(server, rootfs, Path(engines.IMAGE_LLAMA_SERVER))
        for lib in libraries:
            _copy_file(lib, rootfs, lib)
        (rootfs / engines.IMAGE_MODEL_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)

    layer = Layer(LLAMACPP, content_key(*digests), make)
    config = ImageConfig(
        entrypoint=(engines.IMAGE_LLAMA_SERVER,),
        cmd=("--host", "0.0.0.0", "--port", str(contract.ENGINE_PORT)),
        env=(f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8"),
        exposed_ports=(contract.ENGINE_PORT,),
    )
    return Recipe(LLAMACPP, (layer,), config)


def smollm2_recipe() -> Recipe:
    """The model as an image: `/models/SmolLM2-135M-Instruct.Q4_1.gguf`, nothing else."""
    try:
        model = engines.smollm2_model()
    except engines.EngineNotInstalledError as error:
        raise ImageBuildError(str(error)) from error

    def make(rootfs: Path) -> None:
        _copy_file(model, rootfs, Path(engines.IMAGE_SMOLLM2), mode=0o444)

    # setup/llamacpp.sh verified the file's sha256; the size check above guards a swap since.
    layer = Layer(SMOLLM2, content_key(engines.SMOLLM2_SHA256, str(engines.SMOLLM2_SIZE)), make)
    return Recipe(SMOLLM2, (layer,), ImageConfig(env=()))


RECIPES: dict[str, Callable[[], Recipe]] = {
    PAUSE: pause_recipe,
    BUSYBOX: busybox_recipe,
    PYTHON: python_recipe,
    LLAMACPP: llamacpp_recipe,
    SMOLLM2: smollm2_recipe,
}
# Built only when setup/llamacpp.sh has put the engine and the model in the cache.
ENGINE_IMAGES = (LLAMACPP, SMOLLM2)


def default_images() -> tuple[str, ...]:
    """Every image, less the engine images while setup/llamacpp.sh has not run."""
    if engines.installed():
        return tuple(RECIPES)
    log.info("engine images %s skipped: %s", ", ".join(ENGINE_IMAGES), engines.SETUP_HINT)
    return tuple(name for name in RECIPES if name not in ENGINE_IMAGES)


def build_all(names: Iterable[str] | None = None) -> dict[str, Path]:
    """Build (or find cached) archives for the named images (default: `default_images()`):
    {name: archive path}."""
    archives = {}
    for name in default_images() if names is None else names:
        started = time.monotonic()
        archives[name] = archive(RECIPES[name]())
        log.info(
            "image %s ready in %.1f s: %s",
            reference(name),
            time.monotonic() - started,
            archives[name],
        )
    return archives


def main(argv: list[str] | None = None) -> int:
    """`python -m kocoon.devcluster.images [name...]`: build the images ahead of `up`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    names = argv if argv is not None else sys.argv[1:]
    unknown = [name for name in names if name not in RECIPES]
    if unknown:
        print(f"unknown image(s) {unknown}: choose from {sorted(RECIPES)}", file=sys.stderr)
        return 2
    try:
        for name, path in build_all(names or None).items():
            print(f"{reference(name)} {path}")
    except ImageBuildError as error:
        print(f"images: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
