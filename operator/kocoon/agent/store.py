"""The node-local checkpoint store: one directory per checkpoint, an encrypted archive and metadata.

    <root>/<id>/archive.kckp   tar of the image directory, sealed with `crypto` (streamed)
    <root>/<id>/meta.json      the `CheckpointRecord` (sandbox, driver, size, sha256, compatibility)

A checkpoint is written under `<root>/.partial-<id>` and renamed into place only when complete,
so a crash never leaves a half archive that looks valid. Reading verifies every chunk's GCM tag
and the archive's SHA-256 while extracting; a failure removes only what was extracted, never
the archive.

Blocking work (tar, encryption, disk) runs in the calling thread; the service runs it in a
worker thread. Hashing and file I/O run in a second thread, in parallel with encryption
(both release the GIL), so encryption, hashing and disk overlap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from kocoon.agent import crypto
from kocoon.agent.errors import ArchiveCorrupt, NotFound
from kocoon.agent.models import CheckpointRecord, RestoreResult, SandboxRef

ARCHIVE_NAME = "archive.kckp"
META_NAME = "meta.json"
# Written after a successful restore, so a repeated request is answered, not redone.
RESTORED_NAME = "restored.json"
PARTIAL_PREFIX = ".partial-"
_COPY_BYTES = 1 << 20
_QUEUE_DEPTH = 8


@dataclass(frozen=True)
class ArchiveInfo:
    size_bytes: int
    image_bytes: int
    sha256: str


class _HashingWriter:
    """Writes records to a file and hashes them; the hash runs in a second thread, in parallel
    with the write (both release the GIL), and both finish before the record's buffer is reused.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-hash")
        self.size = 0

    def __call__(self, record: memoryview) -> None:
        hashed = self._pool.submit(self._hash.update, record)
        try:
            self._file.write(record)
        finally:
            hashed.result()
        self.size += len(record)

    def finish(self) -> str:
        self._pool.shutdown(wait=True)
        return self._hash.hexdigest()


class _PlainSink:
    """The file-like object tarfile writes to: plaintext goes into the encryptor."""

    def __init__(self, encryptor: crypto.ChunkEncryptor) -> None:
        self._encryptor = encryptor
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._encryptor.write(data)
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset


class _HashingReader:
    """Reads an archive file, hashing what it reads in a background thread (in order)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-hash")
        self._pending: deque[Future[None]] = deque()

    def read(self, size: int) -> bytes:
        data = self._file.read(size)
        if data:
            self._pending.append(self._pool.submit(self._hash.update, data))
            # Bounded read-ahead: never hold more than a few chunks waiting for the hash.
            while len(self._pending) > _QUEUE_DEPTH:
                self._pending.popleft().result()
        return data

    def finish(self) -> str:
        """Reads the rest of the file (so the hash covers all of it) and returns the digest."""
        while self.read(4 << 20):
            pass
        while self._pending:
            self._pending.popleft().result()
        return self._hash.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _PlainSource:
    """The file-like object tarfile reads from: decrypted chunks, in order."""

    def __init__(self, records: Iterable[bytes]) -> None:
        self._records = iter(records)
        self._buffer = b""
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        out: list[bytes] = []
        wanted = size if size >= 0 else 1 << 62
        while wanted > 0:
            if self._pos >= len(self._buffer):
                chunk = next(self._records, None)
                if chunk is None:
                    break
                self._buffer, self._pos = chunk, 0
                continue
            piece = self._buffer[self._pos : self._pos + wanted]
            self._pos += len(piece)
            wanted -= len(piece)
            out.append(piece)
        return b"".join(out)


def write_archive(
    image_dir: Path,
    archive: Path,
    data_key: bytes,
    *,
    chunk_bytes: int = crypto.DEFAULT_CHUNK_BYTES,
) -> ArchiveInfo:
    """Tars `image_dir`, seals it chunk by chunk into `archive`, and hashes the result."""
    with archive.open("wb") as file:
        writer = _HashingWriter(file)
        try:
            encryptor = crypto.ChunkEncryptor(data_key, writer, chunk_bytes)
            # typeshed lacks `copybufsize`; tarfile accepts it (Python >= 3.8).
            with tarfile.open(  # type: ignore[call-overload]
                fileobj=_PlainSink(encryptor),
                mode="w",
                format=tarfile.PAX_FORMAT,
                copybufsize=_COPY_BYTES,
            ) as tar:
                tar.add(str(image_dir), arcname=".", recursive=True)
            encryptor.close()
        finally:
            digest = writer.finish()
        file.flush()
        os.fsync(file.fileno())
    return ArchiveInfo(size_bytes=writer.size, image_bytes=encryptor.plaintext_bytes, sha256=digest)


def extract_archive(archive: Path, dest: Path, data_key: bytes, expected_sha256: str) -> None:
    """Opens, verifies and extracts into `dest`.

    Raises ArchiveCorrupt, after removing what was extracted, when any check fails.
    """
    dest.mkdir(parents=True, exist_ok=False)
    try:
        with archive.open("rb") as file:
            reader = _HashingReader(file)
            try:
                records = crypto.ChunkDecryptor(data_key, reader.read).records()
                with tarfile.open(  # type: ignore[call-overload]
                    fileobj=_PlainSource(records),
                    mode="r|",
                    bufsize=_COPY_BYTES,
                    copybufsize=_COPY_BYTES,
                ) as tar:
                    # The 'data' filter refuses absolute paths, links out of `dest` and devices.
                    tar.extractall(dest, filter="data")
                # Reading on to the end also checks the final chunk and trailing bytes.
                for _ in records:
                    pass
                digest = reader.finish()
            finally:
                reader.close()
        if digest != expected_sha256:
            raise ArchiveCorrupt(
                f"archive {archive} has SHA-256 {digest}, its record says {expected_sha256}"
            )
    except crypto.DecryptionError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveCorrupt(f"archive {archive} cannot be opened: {exc}") from None
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveCorrupt(f"archive {archive} does not extract: {exc}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def select_for_pruning(
    records: Iterable[CheckpointRecord],
    *,
    keep_last: int | None,
    max_age: timedelta | None,
    now: datetime,
) -> list[str]:
    """Pure: ids to delete so at most `keep_last` remain and none is older than `max_age`."""
    newest_first = sorted(records, key=lambda r: r.created, reverse=True)
    doomed: list[str] = []
    for position, record in enumerate(newest_first):
        too_many = keep_last is not None and position >= keep_last
        too_old = max_age is not None and now - record.created > max_age
        if too_many or too_old:
            doomed.append(record.id)
    return doomed


class CheckpointStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _dir(self, checkpoint_id: str) -> Path:
        return self.root / checkpoint_id

    def partial_dir(self, checkpoint_id: str) -> Path:
        return self.root / f"{PARTIAL_PREFIX}{checkpoint_id}"

    def archive_path(self, checkpoint_id: str) -> Path:
        return self._dir(checkpoint_id) / ARCHIVE_NAME

    def write(
        self,
        checkpoint_id: str,
        image_dir: Path,
        data_key: bytes,
        *,
        chunk_bytes: int = crypto.DEFAULT_CHUNK_BYTES,
    ) -> ArchiveInfo:
        partial = self.partial_dir(checkpoint_id)
        partial.mkdir(mode=0o700)
        return write_archive(image_dir, partial / ARCHIVE_NAME, data_key, chunk_bytes=chunk_bytes)

    def commit(self, record: CheckpointRecord) -> None:
        partial = self.partial_dir(record.id)
        (partial / META_NAME).write_text(record.model_dump_json(by_alias=True, indent=2))
        os.rename(partial, self._dir(record.id))

    def abort(self, checkpoint_id: str) -> None:
        shutil.rmtree(self.partial_dir(checkpoint_id), ignore_errors=True)

    def save_record(self, record: CheckpointRecord) -> None:
        """Replaces a stored checkpoint's record (write, then rename: never half a file)."""
        meta = self._dir(record.id) / META_NAME
        tmp = meta.with_name(f".{META_NAME}.tmp")
        tmp.write_text(record.model_dump_json(by_alias=True, indent=2))
        os.replace(tmp, meta)

    def get(self, checkpoint_id: str) -> CheckpointRecord:
        meta = self._dir(checkpoint_id) / META_NAME
        if checkpoint_id.startswith(".") or "/" in checkpoint_id or not meta.is_file():
            raise NotFound(f"checkpoint {checkpoint_id!r} does not exist on this node")
        return CheckpointRecord.model_validate(json.loads(meta.read_text()))

    def list_records(self, sandbox: SandboxRef | None = None) -> list[CheckpointRecord]:
        records = []
        for meta in sorted(self.root.glob(f"*/{META_NAME}")):
            if meta.parent.name.startswith("."):
                continue
            record = CheckpointRecord.model_validate(json.loads(meta.read_text()))
            if sandbox is None or record.sandbox == sandbox:
                records.append(record)
        return sorted(records, key=lambda r: r.created)

    def extract(self, record: CheckpointRecord, dest: Path, data_key: bytes) -> None:
        extract_archive(self.archive_path(record.id), dest, data_key, record.sha256)

    def restore_result(self, checkpoint_id: str) -> RestoreResult | None:
        """What the restore of this checkpoint answered, if it has been restored."""
        path = self._dir(checkpoint_id) / RESTORED_NAME
        if not path.is_file():
            return None
        return RestoreResult.model_validate_json(path.read_text())

    def save_restore_result(self, checkpoint_id: str, result: RestoreResult) -> None:
        path = self._dir(checkpoint_id) / RESTORED_NAME
        path.write_text(result.model_dump_json(by_alias=True))

    def delete(self, checkpoint_id: str) -> None:
        self.get(checkpoint_id)
        shutil.rmtree(self._dir(checkpoint_id))

    def prune(
        self,
        sandbox: SandboxRef,
        *,
        keep_last: int | None,
        max_age: timedelta | None,
        now: datetime,
        on_delete: Callable[[str], None] | None = None,
    ) -> list[str]:
        doomed = select_for_pruning(
            self.list_records(sandbox), keep_last=keep_last, max_age=max_age, now=now
        )
        for checkpoint_id in doomed:
            self.delete(checkpoint_id)
            if on_delete:
                on_delete(checkpoint_id)
        return doomed

    def clean_partials(self) -> list[str]:
        """Removes archives a crash left unfinished; run at start-up."""
        removed = []
        for partial in self.root.glob(f"{PARTIAL_PREFIX}*"):
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial.name)
        return removed
