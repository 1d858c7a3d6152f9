"""The engine images: llama-server with exactly the libraries it loads, and the model image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kocoon.devcluster import engines, images

LDD = """\
\tlinux-vdso.so.1 (0x00007ffc6a5f1000)
\tlibgomp.so.1 => /lib/x86_64-linux-gnu/libgomp.so.1 (0x00007f0e0c2a0000)
\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f0e0c000000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e0be1f000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e0c31c000)
"""


@pytest.mark.unit
def test_shared_libraries_are_the_paths_ldd_names_loader_included() -> None:
    assert images.shared_libraries(LDD) == [
        Path("/lib/x86_64-linux-gnu/libgomp.so.1"),
        Path("/lib/x86_64-linux-gnu/libstdc++.so.6"),
        Path("/lib/x86_64-linux-gnu/libc.so.6"),
        Path("/lib64/ld-linux-x86-64.so.2"),
    ]


@pytest.mark.unit
def test_a_library_ldd_cannot_find_is_named() -> None:
    with pytest.raises(images.ImageBuildError, match=r"libgomp\.so\.1: not found by ldd"):
        images.shared_libraries("\tlibgomp.so.1 => not found\n")


@pytest.mark.unit
def test_engine_image_references_match_the_image_names() -> None:
    assert images.reference(images.LLAMACPP) == engines.LLAMACPP_IMAGE
    assert images.reference(images.SMOLLM2) == engines.SMOLLM2_IMAGE
    volume = engines.model_image_volume()
    assert volume["image"] == {"reference": engines.SMOLLM2_IMAGE, "pullPolicy": "Never"}
    mount = engines.model_volume_mount()
    # The image holds /models/<file>; mounting its `models` directory at /models puts the
    # model where the engine's arguments say.
    assert (mount["mountPath"], mount["subPath"]) == ("/models", "models")
    assert f"{mount['mountPath']}/{engines.SMOLLM2_FILE}" == engines.IMAGE_SMOLLM2


def unpack(name: str, rootfs: Path) -> dict[str, object]:
    """The image's layers in order into `rootfs`; returns the image config."""
    archive = images.archive(images.RECIPES[name]())
    with tarfile.open(archive) as tar:

        def document(name: str) -> Any:
            member = tar.extractfile(name)
            assert member is not None, name
            return json.load(member)

        index = document("index.json")
        manifest = document("blobs/" + index["manifests"][0]["digest"].replace(":", "/"))
        config: dict[str, object] = document(
            "blobs/" + manifest["config"]["digest"].replace(":", "/")
        )
    for layer in manifest["layers"]:
        blob = images.cache_root() / "blobs" / layer["digest"].replace(":", "/")
        subprocess.run(["tar", "-C", str(rootfs), "-xzf", str(blob)], check=True)
    return config


@pytest.mark.engine
def test_engine_image_runs_llama_server_with_only_its_own_files(
    engine_installed: None, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    config = unpack(images.LLAMACPP, rootfs)
    runtime = config["config"]
    assert isinstance(runtime, dict)
    assert runtime["Entrypoint"] == [engines.IMAGE_LLAMA_SERVER]
    # No distribution inside: the server, its libraries and a few empty directories.
    files = [p for p in rootfs.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 40 << 20
    assert not (rootfs / "bin" / "sh").exists()
    chroot = shutil.which("chroot")
    assert chroot is not None
    ran = subprocess.run(
        [chroot, str(rootfs), engines.IMAGE_LLAMA_SERVER, "--version"],
        capture_output=True,
        text=True,
        check=False,
        env={},
    )
    assert ran.returncode == 0, ran.stderr
    assert "version" in (ran.stdout + ran.stderr).lower()


@pytest.mark.engine
def test_model_image_holds_the_model_at_its_promised_path(
    engine_installed: None, tmp_path: Path
) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    unpack(images.SMOLLM2, rootfs)
    model = rootfs / engines.IMAGE_SMOLLM2.lstrip("/")
    assert model.stat().st_size == engines.SMOLLM2_SIZE
    assert [p.relative_to(rootfs).as_posix() for p in rootfs.rglob("*")] == [
        "models",
        engines.IMAGE_SMOLLM2.lstrip("/"),
    ]
