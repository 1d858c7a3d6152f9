from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kocoon.agent import crypto
from kocoon.agent.errors import ArchiveCorrupt, NotFound
from kocoon.agent.models import CheckpointRecord, Compatibility, SandboxRef
from kocoon.agent.store import ARCHIVE_NAME, META_NAME, CheckpointStore, select_for_pruning

pytestmark = pytest.mark.unit

SANDBOX = SandboxRef(namespace="team-a", name="s1")
COMPAT = Compatibility(architecture="x86_64", kernel_release="6.18.0")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def make_images(root: Path) -> Path:
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    (images / "pages-1.img").write_bytes(os.urandom(300_000) + b"PLAINTEXT-MARKER" * 10)
    (images / "core-1.img").write_bytes(b"core")
    (images / "sub" / "empty.img").write_bytes(b"")
    return images


def record(checkpoint_id: str, created: datetime, **info: object) -> CheckpointRecord:
    fields: dict[str, object] = {
        "size_bytes": 1,
        "image_bytes": 1,
        "sha256": "0" * 64,
        **info,
    }
    return CheckpointRecord(
        id=checkpoint_id,
        sandbox=SANDBOX,
        driver="process",
        node="n1",
        created=created,
        compatibility=COMPAT,
        **fields,  # type: ignore[arg-type]
    )


def write_checkpoint(
    store: CheckpointStore, images: Path, key: bytes, checkpoint_id: str
) -> CheckpointRecord:
    info = store.write(checkpoint_id, images, key, chunk_bytes=4096)
    rec = record(
        checkpoint_id,
        NOW,
        size_bytes=info.size_bytes,
        image_bytes=info.image_bytes,
        sha256=info.sha256,
    )
    store.commit(rec)
    return rec


def test_write_extract_round_trip_and_metadata(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    key = crypto.new_data_key()
    images = make_images(tmp_path)
    rec = write_checkpoint(store, images, key, "ckpt-20261123t120000z-00000001")

    archive = store.archive_path(rec.id)
    assert b"PLAINTEXT-MARKER" not in archive.read_bytes()
    assert rec.size_bytes == archive.stat().st_size
    meta = json.loads((archive.parent / META_NAME).read_text())
    assert meta["sandbox"] == {"namespace": "team-a", "name": "s1"}
    assert meta["sha256"] == rec.sha256
    assert meta["compatibility"]["kernelRelease"] == "6.18.0"
    assert store.get(rec.id) == rec
    assert store.list_records(SANDBOX) == [rec]
    assert store.list_records(SandboxRef(namespace="team-a", name="other")) == []

    out = tmp_path / "out"
    store.extract(rec, out, key)
    for name in ("pages-1.img", "core-1.img", "sub/empty.img"):
        assert (out / name).read_bytes() == (images / name).read_bytes()


def test_corrupt_archive_is_refused_and_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    key = crypto.new_data_key()
    rec = write_checkpoint(store, make_images(tmp_path), key, "ckpt-20261123t120000z-00000002")
    archive = store.archive_path(rec.id)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x10
    archive.write_bytes(bytes(data))

    out = tmp_path / "out"
    with pytest.raises(ArchiveCorrupt, match="failed authentication"):
        store.extract(rec, out, key)
    assert not out.exists()
    assert archive.read_bytes() == bytes(data)
    assert store.get(rec.id) == rec


def test_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    key = crypto.new_data_key()
    rec = write_checkpoint(store, make_images(tmp_path), key, "ckpt-20261123t120000z-00000003")
    wrong = rec.model_copy(update={"sha256": "f" * 64})
    with pytest.raises(ArchiveCorrupt, match="SHA-256"):
        store.extract(wrong, tmp_path / "out", key)
    assert not (tmp_path / "out").exists()


def test_uncommitted_archive_is_invisible_and_cleaned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    store.write("ckpt-20261123t120000z-00000004", make_images(tmp_path), crypto.new_data_key())
    assert store.list_records() == []
    with pytest.raises(NotFound):
        store.get("ckpt-20261123t120000z-00000004")
    assert store.clean_partials() == [".partial-ckpt-20261123t120000z-00000004"]
    assert list((tmp_path / "store").iterdir()) == []


def test_delete_and_unknown_ids(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store")
    rec = write_checkpoint(
        store, make_images(tmp_path), crypto.new_data_key(), "ckpt-20261123t120000z-00000005"
    )
    store.delete(rec.id)
    assert not (tmp_path / "store" / rec.id / ARCHIVE_NAME).exists()
    for bad in (rec.id, "../etc", ".partial-x"):
        with pytest.raises(NotFound):
            store.get(bad)


def test_prune_selection_by_count_and_age() -> None:
    records = [
        record(f"ckpt-20261123t1{i}0000z-0000000{i}", NOW - timedelta(hours=i)) for i in range(5)
    ]
    assert select_for_pruning(records, keep_last=2, max_age=None, now=NOW) == [
        r.id for r in records[2:]
    ]
    assert select_for_pruning(
        records, keep_last=None, max_age=timedelta(hours=2, minutes=30), now=NOW
    ) == [r.id for r in records[3:]]
    assert select_for_pruning(records, keep_last=None, max_age=None, now=NOW) == []
    assert select_for_pruning(records, keep_last=0, max_age=None, now=NOW) == [
        r.id for r in records
    ]


def test_secret_manifest_holds_the_key_in_the_sandbox_namespace() -> None:
    import base64

    from kocoon.agent.keys import SECRET_DATA_KEY, secret_manifest

    key = crypto.new_data_key()
    secret = secret_manifest(SANDBOX, key)
    assert secret["metadata"]["namespace"] == "team-a"
    assert secret["metadata"]["name"] == "kocoon-checkpoint-key-s1"
    assert base64.b64decode(secret["data"][SECRET_DATA_KEY]) == key


async def test_file_keys_are_private_and_stable(tmp_path: Path) -> None:
    from kocoon.agent.keys import FileKeyProvider

    keys = FileKeyProvider(tmp_path / "keys")
    assert await keys.get(SANDBOX) is None
    key = await keys.get_or_create(SANDBOX)
    assert await keys.get_or_create(SANDBOX) == key
    (path,) = (tmp_path / "keys").iterdir()
    assert path.stat().st_mode & 0o777 == 0o600
    await keys.delete(SANDBOX)
    assert await keys.get(SANDBOX) is None
