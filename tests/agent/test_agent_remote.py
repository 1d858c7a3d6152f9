"""The agent's copy of checkpoints in an S3-compatible store, against a real server on loopback.

The agent runs in-process over HTTPS (as in test_agent_api); the store is moto's S3 server
as a process (tests/agent/s3kit.py), reached by the agent's own client. The driver below
dumps a known payload, so a restore proves the bytes came back through the bucket.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentkit import in_process_agent
from minio import Minio
from s3kit import Gate, S3Server, server_binary, write_credentials

from kocoon.agent import crypto, metrics
from kocoon.agent.drivers.base import (
    Availability,
    Available,
    CheckpointTarget,
    Dumped,
    Restored,
    RestoreTarget,
)
from kocoon.agent.errors import ArchiveCorrupt
from kocoon.agent.keys import FileKeyProvider
from kocoon.agent.models import CheckpointRecord, SandboxRef
from kocoon.agent.remote import (
    MIN_PART_BYTES,
    RemoteConfig,
    RemoteStore,
    read_envelope,
    seal_record,
)
from kocoon.agent.store import ARCHIVE_NAME, META_NAME

pytestmark = pytest.mark.s3

SANDBOX = {"namespace": "team-a", "name": "s1"}
PAYLOAD_NAME = "pages-1.img"


class PayloadDriver:
    """Dumps `payload` (random bytes and a marker) as its image; a restore reports the SHA-256
    of what it found in the extracted image."""

    def __init__(self, megabytes: float, marker: bytes) -> None:
        self.payload = os.urandom(int(megabytes * (1 << 20))) + marker
        self.restored: list[str] = []

    @property
    def name(self) -> str:
        return "payload"

    async def probe(self) -> Availability:
        return Available("test payload")

    async def runtime_identity(self) -> tuple[str | None, str | None]:
        return None, None

    async def checkpoint(self, target: CheckpointTarget, image_dir: Path, work_dir: Path) -> Dumped:
        (image_dir / PAYLOAD_NAME).write_bytes(self.payload)
        return Dumped(target={"payload": True})

    async def restore(self, target: RestoreTarget, image_dir: Path, work_dir: Path) -> Restored:
        digest = hashlib.sha256((image_dir / PAYLOAD_NAME).read_bytes()).hexdigest()
        self.restored.append(digest)
        return Restored(message=digest)


def metric(name: str, operation: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"operation": operation}) or 0.0


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    binary = server_binary()
    if binary is None:
        pytest.skip("no S3 test server: run setup/s3.sh (make s3)")
    server = S3Server(binary, tmp_path_factory.mktemp("s3") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_remote(
    server: S3Server,
    bucket: str,
    directory: Path,
    *,
    prefix: str = "cluster-a/",
    endpoint: str | None = None,
) -> RemoteStore:
    access, secret = write_credentials(directory / "s3-credentials")
    return RemoteStore(
        RemoteConfig(
            endpoint=endpoint or server.endpoint,
            bucket=bucket,
            prefix=prefix,
            region="us-east-1",
            access_key_file=access,
            secret_key_file=secret,
            part_bytes=MIN_PART_BYTES,
            timeout_seconds=10,
        )
    )


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"kocoon-{secrets.token_hex(4)}"
    s3.client().make_bucket(name)
    return name


def objects(client: Minio, bucket: str) -> dict[str, int]:
    return {
        str(o.object_name): int(o.size or 0) for o in client.list_objects(bucket, recursive=True)
    }


def get(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def put(client: Minio, bucket: str, key: str, data: bytes) -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data))


async def test_checkpoint_is_uploaded_in_parts_and_restored_from_the_bucket(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    marker = f"KOCOON-MARKER-{secrets.token_hex(8)}".encode()
    driver = PayloadDriver(12, marker)  # 12 MiB: three 5 MiB parts, whatever compression
    remote = make_remote(s3, bucket, tmp_path)
    uploaded_before = metric("kocoon_agent_remote_bytes_total", "upload")
    async with in_process_agent(tmp_path / "a", {"payload": driver}, remote=remote) as agent:
        status, record = await agent.call(
            "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "payload"}
        )
        assert status == 201, record
        copy = record["remote"]
        key = f"cluster-a/{record['id']}/{ARCHIVE_NAME}"
        assert copy["state"] == "Uploaded", copy
        assert (copy["bucket"], copy["key"]) == (bucket, key)
        assert copy["metaKey"] == f"cluster-a/{record['id']}/{META_NAME}"
        # A multipart upload's ETag ends in the number of parts.
        assert copy["etag"].endswith("-3"), copy["etag"]
        local_dir = agent.state_dir / "checkpoints" / record["id"]
        local_archive = (local_dir / ARCHIVE_NAME).read_bytes()
        assert objects(s3.client(), bucket) == {
            key: len(local_archive),
            copy["metaKey"]: len(get(s3.client(), bucket, copy["metaKey"])),
        }
        # Only ciphertext leaves the node: the bucket holds the sealed archive byte for byte.
        remote_archive = get(s3.client(), bucket, key)
        assert remote_archive == local_archive
        assert remote_archive[:4] == crypto.MAGIC
        assert marker not in remote_archive
        # The local record says where the copy is.
        stored = CheckpointRecord.model_validate_json((local_dir / META_NAME).read_text())
        assert stored.remote is not None
        assert stored.remote.etag == copy["etag"]
        assert metric("kocoon_agent_remote_bytes_total", "upload") - uploaded_before == len(
            local_archive
        )

        # The node's copy is lost (a wiped disk): the restore fetches it from the bucket.
        shutil.rmtree(local_dir)
        status, result = await agent.call("POST", f"/v1/checkpoints/{record['id']}/restore", {})
        assert status == 200, result
        assert driver.restored == [hashlib.sha256(driver.payload).hexdigest()]
        assert (local_dir / ARCHIVE_NAME).read_bytes() == local_archive
        status, listed = await agent.call("GET", f"/v1/checkpoints/{record['id']}")
        assert status == 200
        assert listed["remote"]["state"] == "Uploaded"
        assert not list((agent.state_dir / "checkpoints").glob(".partial-*"))


async def test_another_node_restores_a_checkpoint_it_did_not_make(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    # Both agents read the same keys, as nodes do with the Secret key provider.
    keys = tmp_path / "shared-keys"
    made = PayloadDriver(1, b"node-a")
    other = PayloadDriver(0, b"")
    async with in_process_agent(
        tmp_path / "a",
        {"payload": made},
        remote=make_remote(s3, bucket, tmp_path),
        keys_dir=keys,
        node_name="node-a",
    ) as node_a:
        status, record = await node_a.call(
            "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "payload"}
        )
        assert status == 201, record
    async with in_process_agent(
        tmp_path / "b",
        {"payload": other},
        remote=make_remote(s3, bucket, tmp_path),
        keys_dir=keys,
        node_name="node-b",
    ) as node_b:
        status, result = await node_b.call("POST", f"/v1/checkpoints/{record['id']}/restore", {})
        assert status == 200, result
        assert other.restored == [hashlib.sha256(made.payload).hexdigest()]
        status, fetched = await node_b.call("GET", f"/v1/checkpoints/{record['id']}")
        assert fetched["node"] == "node-a"  # where it was made
        status, body = await node_b.call("POST", "/v1/checkpoints/no-such-checkpoint/restore", {})
        assert (status, body["reason"]) == (404, "NotFound")
        assert f"s3://{bucket}/cluster-a/" in body["message"]


async def test_delete_and_prune_remove_the_remote_copies(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    client = s3.client()
    remote = make_remote(s3, bucket, tmp_path)
    async with in_process_agent(
        tmp_path / "a", {"payload": PayloadDriver(0.1, b"")}, remote=remote
    ) as agent:
        ids = []
        for _ in range(3):
            status, record = await agent.call(
                "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "payload"}
            )
            assert status == 201, record
            ids.append(record["id"])
        assert len(objects(client, bucket)) == 6

        status, _ = await agent.call("DELETE", f"/v1/checkpoints/{ids[0]}")
        assert status == 204
        assert not any(ids[0] in key for key in objects(client, bucket))

        # Gone from this node but still in the bucket: delete removes the copy all the same.
        shutil.rmtree(agent.state_dir / "checkpoints" / ids[1])
        status, _ = await agent.call("DELETE", f"/v1/checkpoints/{ids[1]}")
        assert status == 204
        assert not any(ids[1] in key for key in objects(client, bucket))
        status, body = await agent.call("DELETE", f"/v1/checkpoints/{ids[1]}")
        assert (status, body["reason"]) == (404, "NotFound")

        status, record = await agent.call(
            "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "payload"}
        )
        status, pruned = await agent.call("POST", "/v1/prune", {"sandbox": SANDBOX, "keepLast": 1})
        assert status == 200
        assert pruned["deleted"] == [ids[2]]
        assert set(objects(client, bucket)) == {
            f"cluster-a/{record['id']}/{ARCHIVE_NAME}",
            f"cluster-a/{record['id']}/{META_NAME}",
        }

        status, _ = await agent.call("DELETE", f"/v1/sandboxes/{SANDBOX['namespace']}/s1")
        assert status == 200
        assert objects(client, bucket) == {}


async def test_an_upload_failure_keeps_the_local_checkpoint_and_says_why(
    s3: S3Server, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate(s3.port)  # the agent reaches the store through it
    await gate.open()
    driver = PayloadDriver(0.5, b"")
    remote = make_remote(s3, bucket, tmp_path, endpoint=gate.endpoint)
    try:
        async with in_process_agent(tmp_path / "a", {"payload": driver}, remote=remote) as agent:
            await gate.close()
            failures = metric("kocoon_agent_remote_failures_total", "upload")
            request = {"sandbox": SANDBOX, "driver": "payload", "id": "s1-upload-failure"}
            with caplog.at_level(logging.WARNING, logger="kocoon.agent.remote"):
                status, record = await agent.call("POST", "/v1/checkpoints", request)
            assert status == 201, record
            copy = record["remote"]
            assert copy["state"] == "Failed"
            assert copy["bucket"] == bucket
            assert "unreachable" in copy["error"]
            assert "Connection refused" in copy["error"]
            assert metric("kocoon_agent_remote_failures_total", "upload") == failures + 1
            [line] = [r for r in caplog.records if "upload failed" in r.getMessage()]
            fields: Any = line
            assert fields.checkpoint == "s1-upload-failure"
            assert fields.sandbox == "team-a/s1"
            assert fields.bucket == bucket
            assert fields.endpoint == gate.endpoint
            assert fields.error == copy["error"]
            assert objects(s3.client(), bucket) == {}

            # The local checkpoint is whole: its record says why, and it restores.
            status, stored = await agent.call("GET", "/v1/checkpoints/s1-upload-failure")
            assert stored["remote"]["state"] == "Failed"
            status, result = await agent.call(
                "POST", "/v1/checkpoints/s1-upload-failure/restore", {}
            )
            assert status == 200, result
            assert driver.restored == [hashlib.sha256(driver.payload).hexdigest()]

            # The store is back: asking for the same checkpoint again uploads it.
            await gate.open()
            status, again = await agent.call("POST", "/v1/checkpoints", request)
            assert status in (200, 201), again
            assert again["remote"]["state"] == "Uploaded", again["remote"]
            assert again["created"] == record["created"]
            assert set(objects(s3.client(), bucket)) == {
                f"cluster-a/s1-upload-failure/{ARCHIVE_NAME}",
                f"cluster-a/s1-upload-failure/{META_NAME}",
            }

            # With the store unreachable, deleting an uploaded checkpoint fails and keeps it,
            # so the caller's retry still finds the copy to delete.
            await gate.close()
            status, body = await agent.call("DELETE", "/v1/checkpoints/s1-upload-failure")
            assert (status, body["reason"]) == (502, "RemoteFailed"), body
            assert "cluster-a/s1-upload-failure" in body["message"]
            status, _ = await agent.call("GET", "/v1/checkpoints/s1-upload-failure")
            assert status == 200
            assert len(objects(s3.client(), bucket)) == 2
            await gate.open()
            status, _ = await agent.call("DELETE", "/v1/checkpoints/s1-upload-failure")
            assert status == 204
            assert objects(s3.client(), bucket) == {}
    finally:
        await gate.close()


async def test_tampered_remote_objects_are_refused(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    client = s3.client()
    driver = PayloadDriver(0.5, b"")
    async with in_process_agent(
        tmp_path / "a", {"payload": driver}, remote=make_remote(s3, bucket, tmp_path)
    ) as agent:
        records = []
        for _ in range(2):
            status, record = await agent.call(
                "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "payload"}
            )
            assert status == 201, record
            records.append(record)
        first, second = records
        checkpoints = agent.state_dir / "checkpoints"
        archive_key, meta_key = first["remote"]["key"], first["remote"]["metaKey"]
        sealed, meta = get(client, bucket, archive_key), get(client, bucket, meta_key)

        async def restore_from_bucket() -> tuple[int, Any]:
            shutil.rmtree(checkpoints / first["id"], ignore_errors=True)
            return await agent.call("POST", f"/v1/checkpoints/{first['id']}/restore", {})

        # One flipped byte in the archive: refused before decryption, by its SHA-256.
        tampered = bytearray(sealed)
        tampered[len(tampered) // 2] ^= 0x01
        put(client, bucket, archive_key, bytes(tampered))
        status, body = await restore_from_bucket()
        assert (status, body["reason"]) == (422, "ArchiveCorrupt"), body
        assert f"s3://{bucket}/{archive_key}" in body["message"]
        assert "altered or truncated" in body["message"]
        assert not (checkpoints / first["id"]).exists()
        assert not list(checkpoints.glob(".partial-*"))

        # The record edited to match the tampered archive: its MAC no longer holds.
        envelope = json.loads(meta)
        inner = json.loads(envelope["record"])
        inner["sha256"] = hashlib.sha256(tampered).hexdigest()
        envelope["record"] = json.dumps(inner)
        put(client, bucket, meta_key, json.dumps(envelope).encode())
        status, body = await restore_from_bucket()
        assert (status, body["reason"]) == (422, "ArchiveCorrupt"), body
        assert "fails authentication with sandbox team-a/s1's key" in body["message"]

        # Another checkpoint's objects copied under this id: authentic, but not this one.
        put(client, bucket, archive_key, get(client, bucket, second["remote"]["key"]))
        put(client, bucket, meta_key, get(client, bucket, second["remote"]["metaKey"]))
        status, body = await restore_from_bucket()
        assert (status, body["reason"]) == (422, "ArchiveCorrupt"), body
        assert f"record of checkpoint {second['id']!r}" in body["message"]

        # Not a record at all.
        put(client, bucket, meta_key, b"{not json")
        status, body = await restore_from_bucket()
        assert (status, body["reason"]) == (422, "ArchiveCorrupt"), body
        assert "is not a checkpoint record" in body["message"]

        # Put back as uploaded: it restores, so the refusals above were about the tampering.
        put(client, bucket, archive_key, sealed)
        put(client, bucket, meta_key, meta)
        status, result = await restore_from_bucket()
        assert status == 200, result
        assert driver.restored == [hashlib.sha256(driver.payload).hexdigest()]
        assert objects(client, bucket)  # nothing was deleted on the way


async def test_a_checkpoint_without_its_key_is_not_fetched(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    remote = make_remote(s3, bucket, tmp_path)
    async with in_process_agent(
        tmp_path / "a", {"payload": PayloadDriver(0.1, b"")}, remote=remote
    ) as agent:
        status, record = await agent.call(
            "POST", "/v1/checkpoints", {"sandbox": SANDBOX, "driver": "payload"}
        )
        shutil.rmtree(agent.state_dir / "checkpoints" / record["id"])
        (agent.state_dir / "keys" / "team-a_s1.key").unlink()
        status, body = await agent.call("POST", f"/v1/checkpoints/{record['id']}/restore", {})
        assert (status, body["reason"]) == (409, "KeyMissing"), body
        assert "team-a_s1.key does not exist" in body["message"]


def test_sealed_records_bind_the_sandbox_key() -> None:
    record = CheckpointRecord(
        id="c1",
        sandbox=SandboxRef(namespace="a", name="b"),
        driver="payload",
        node="n",
        created="2026-11-23T12:00:00Z",  # type: ignore[arg-type]
        size_bytes=1,
        image_bytes=1,
        sha256="0" * 64,
        compatibility={"architecture": "x86_64", "kernelRelease": "6"},  # type: ignore[arg-type]
    )
    key = crypto.new_data_key()
    body = seal_record(record, key)
    parsed, text, mac = read_envelope(body, "here")
    assert parsed == record
    from kocoon.agent.remote import verify_envelope

    assert verify_envelope(text, mac, key)
    assert not verify_envelope(text, mac, crypto.new_data_key())
    with pytest.raises(ArchiveCorrupt, match="here is not a checkpoint record"):
        read_envelope(b'{"format": 2}', "here")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint": "ftp://x"}, r"--s3-endpoint: 'ftp://x' is not an http\(s\)://host"),
        ({"endpoint": "https://s3.example.com/bucket"}, "--s3-endpoint: .* scheme://host"),
        ({"bucket": ""}, "--s3-bucket: required"),
        ({"prefix": "/abs"}, "--s3-prefix"),
        ({"part_bytes": 1 << 20}, "--s3-part-size: 1048576 bytes"),
        ({"parallel_parts": 0}, "--s3-parallel-parts"),
        ({"secret_key_file": None}, "--s3-access-key-file, --s3-secret-key-file: give both"),
        ({"ca_file": Path("/nonexistent/ca.crt")}, "--s3-ca-file: /nonexistent/ca.crt"),
    ],
)
def test_settings_are_checked_and_errors_name_the_flag(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    access, secret = write_credentials(tmp_path)
    fields: dict[str, Any] = {
        "endpoint": "https://s3.example.com",
        "bucket": "b",
        "access_key_file": access,
        "secret_key_file": secret,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        RemoteStore(RemoteConfig(**fields))


def test_without_credentials_the_error_says_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ValueError, match=r"no S3 credentials .* AWS_ACCESS_KEY_ID"):
        RemoteStore(RemoteConfig(endpoint="https://s3.example.com", bucket="b"))


def test_part_size_grows_for_archives_beyond_ten_thousand_parts(tmp_path: Path) -> None:
    access, secret = write_credentials(tmp_path)
    remote = RemoteStore(
        RemoteConfig(
            endpoint="https://s3.example.com",
            bucket="b",
            access_key_file=access,
            secret_key_file=secret,
        )
    )
    assert remote.part_bytes(1 << 30) == 16 << 20
    huge = 500 << 30
    part = remote.part_bytes(huge)
    assert part % (1 << 20) == 0
    assert -(-huge // part) <= 10_000


async def test_credential_files_are_reread_when_rotated(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    remote = make_remote(s3, bucket, tmp_path)
    assert await remote.check() is None
    provider: Any = remote._client._provider  # the provider the client signs with
    first = provider.retrieve()
    access = tmp_path / "s3-credentials" / "access-key"
    access.write_text("rotated-access\n")
    os.utime(access, (1, 1))
    assert provider.retrieve().access_key == "rotated-access"
    assert first.access_key != "rotated-access"
    keys = FileKeyProvider(tmp_path / "keys")
    assert keys.describe(SandboxRef(**SANDBOX)).endswith("team-a_s1.key")
    missing = make_remote(s3, "no-such-bucket", tmp_path)
    assert "bucket 'no-such-bucket' does not exist" in (await missing.check() or "")
