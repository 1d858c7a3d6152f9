"""The `s3://` download step, run: the replica pod's init container command and environment,
as built, against the project's S3 test server (moto, setup/s3.sh).

The init container runs the AWS CLI's image; here the same `aws` program runs on this machine
(set KOCOON_AWS_CLI to it, or have `aws` on PATH), with the container's paths mapped to
temporary directories. Skips naming what is missing.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from kocoon.api.model import ModelDeploymentSpec
from kocoon.builders import engines
from kocoon.builders import model as builder
from kocoon.builders.context import BuildSettings
from tests.agent.s3kit import S3Server, server_binary

pytestmark = pytest.mark.s3

ACCESS, SECRET = "kocoon-access", "kocoon-secret"
OBJECTS = {"smol/m.gguf": b"G" * 1000, "dir/a.json": b"{}", "dir/sub/b.bin": b"B" * 10}


@pytest.fixture(scope="module")
def aws() -> str:
    found = os.environ.get("KOCOON_AWS_CLI") or shutil.which("aws")
    if not found:
        pytest.skip("no AWS CLI: set KOCOON_AWS_CLI or put `aws` on PATH")
    return found


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    binary = server_binary()
    if binary is None:
        pytest.skip("no S3 test server: run setup/s3.sh (make s3)")
    server = S3Server(binary, tmp_path_factory.mktemp("s3") / "server.log")
    server.start()
    client = Minio(server.endpoint.removeprefix("http://"), ACCESS, SECRET, secure=False)
    client.make_bucket("models")
    for name, data in OBJECTS.items():
        client.put_object("models", name, io.BytesIO(data), len(data))
    try:
        yield server
    finally:
        server.stop()


def run_init(aws: str, server: S3Server, uri: str, root: Path) -> tuple[Path, str]:
    """Run the built init container's command; returns the download volume and the engine's
    model path mapped onto it."""
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {
                "uri": uri,
                "s3": {"endpoint": server.endpoint, "credentialsSecretRef": {"name": "creds"}},
            },
            "engine": {"type": "llamacpp"},
        }
    )
    manifest = builder.replica_pod(builder.identity("m", "ns", "u"), spec, BuildSettings(), 0)
    (init,) = manifest["spec"]["initContainers"]
    download, scratch = root / "download", root / "scratch"
    download.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    secrets = {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}
    env = {e["name"]: e["value"] if "value" in e else secrets[e["name"]] for e in init["env"]}
    # The container's paths, mapped: /models/download and /tmp.
    env["DOWNLOAD_DIR"] = str(download)
    env["AWS_CONFIG_FILE"] = env["AWS_CONFIG_FILE"].replace(engines.SCRATCH_PATH, str(scratch))
    env["HOME"] = str(scratch)
    env["PATH"] = f"{Path(aws).parent}:/usr/bin:/bin"
    for _ in range(2):  # a second start finds the download and keeps it
        result = subprocess.run(
            init["command"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
    (engine,) = manifest["spec"]["containers"]
    source = next(m for m in engine["volumeMounts"] if m["name"] == builder.MODEL_VOLUME)
    model = builder.model_path(spec).replace(builder.MODEL_PATH, str(download / source["subPath"]))
    return download, model


def test_an_object_lands_where_the_engine_reads_it(aws: str, s3: S3Server, tmp_path: Path) -> None:
    download, model = run_init(aws, s3, "s3://models/smol/m.gguf", tmp_path)
    assert Path(model).read_bytes() == OBJECTS["smol/m.gguf"]
    assert not list(download.rglob("*.part"))


def test_a_prefix_is_synced_as_a_directory(aws: str, s3: S3Server, tmp_path: Path) -> None:
    _, model = run_init(aws, s3, "s3://models/dir/", tmp_path)
    assert (Path(model) / "a.json").read_bytes() == OBJECTS["dir/a.json"]
    assert (Path(model) / "sub" / "b.bin").read_bytes() == OBJECTS["dir/sub/b.bin"]


def test_a_missing_object_fails_the_init_container(aws: str, s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"404|Not Found|does not exist"):
        run_init(aws, s3, "s3://models/missing.gguf", tmp_path)
