"""Chunked AES-256-GCM for checkpoint archives: streamed, authenticated, truncation-proof.

Format (all integers big-endian):

    header   = MAGIC (4) | VERSION (1) | chunk size (4) | salt (16)
    records  = one per chunk: ciphertext of the chunk | GCM tag (16)

Every record but the last holds exactly `chunk size` plaintext bytes; the last holds fewer
(possibly none), so a reader knows where the stream ends and a truncated archive fails. The
archive key is HKDF-SHA256(data key, salt), so a sandbox's one data key never reuses a nonce
across archives. The nonce of chunk i is i (8 bytes) | final flag (4 bytes), and the header
is the associated data of every chunk: chunks cannot be reordered, dropped, or moved between
archives (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC: Final = b"KCKP"
VERSION: Final = 1
DATA_KEY_BYTES: Final = 32
SALT_BYTES: Final = 16
TAG_BYTES: Final = 16
DEFAULT_CHUNK_BYTES: Final = 4 << 20
MAX_CHUNK_BYTES: Final = 64 << 20
_HEADER = struct.Struct(">4sBI16s")
HEADER_BYTES: Final = _HEADER.size
_HKDF_INFO: Final = b"kocoon checkpoint archive v1"


class DecryptionError(Exception):
    """The archive is not what was written: wrong key, corrupt, truncated or not an archive."""


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_BYTES)


def _archive_key(data_key: bytes, salt: bytes) -> AESGCM:
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"data key must be {DATA_KEY_BYTES} bytes, got {len(data_key)}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=DATA_KEY_BYTES, salt=salt, info=_HKDF_INFO)
    return AESGCM(hkdf.derive(data_key))


def _nonce(index: int, final: bool) -> bytes:
    return struct.pack(">QI", index, 1 if final else 0)


class ChunkEncryptor:
    """Seals a stream chunk by chunk; the caller feeds plaintext, the sink receives records.

    The sink gets a view of a reused buffer, valid only during the call: it must write (or
    copy) the record before returning. Reusing the buffers keeps the cost near AES-GCM's own;
    allocating fresh memory per chunk costs more than the cipher.
    """

    def __init__(
        self,
        data_key: bytes,
        sink: Callable[[memoryview], object],
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk size must be in 1..{MAX_CHUNK_BYTES}, got {chunk_bytes}")
        salt = os.urandom(SALT_BYTES)
        self._header = _HEADER.pack(MAGIC, VERSION, chunk_bytes, salt)
        self._aead = _archive_key(data_key, salt)
        self._sink = sink
        self._chunk = chunk_bytes
        self._sealed = bytearray(chunk_bytes + TAG_BYTES)
        # One reused buffer: fresh allocations per chunk cost more than AES-GCM itself.
        self._buffer = bytearray(chunk_bytes)
        self._filled = 0
        self._index = 0
        self._closed = False
        self.plaintext_bytes = 0
        sink(memoryview(self._header))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed archive")
        view = memoryview(data).cast("B")
        size = len(view)
        self.plaintext_bytes += size
        chunk = self._chunk
        while view:
            if self._filled == 0 and len(view) >= chunk:
                self._seal(view[:chunk], final=False)
                view = view[chunk:]
                continue
            take = min(chunk - self._filled, len(view))
            self._buffer[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == chunk:
                self._seal(memoryview(self._buffer), final=False)
                self._filled = 0
        return size

    def close(self) -> None:
        """Seals the final (short) chunk; without it a reader reports truncation."""
        if not self._closed:
            self._seal(memoryview(self._buffer)[: self._filled], final=True)
            self._filled = 0
            self._closed = True

    def _seal(self, chunk: memoryview, *, final: bool) -> None:
        out = memoryview(self._sealed)[: len(chunk) + TAG_BYTES]
        self._aead.encrypt_into(_nonce(self._index, final), chunk, self._header, out)
        self._sink(out)
        self._index += 1


class ChunkDecryptor:
    """Opens a stream record by record: `records()` yields plaintext chunks, in order."""

    def __init__(self, data_key: bytes, read: Callable[[int], bytes]) -> None:
        self._read = read
        header = _read_exactly(read, HEADER_BYTES)
        if len(header) != HEADER_BYTES:
            raise DecryptionError("archive is shorter than its header")
        magic, version, chunk, salt = _HEADER.unpack(header)
        if magic != MAGIC:
            raise DecryptionError("not a Kocoon checkpoint archive (bad magic)")
        if version != VERSION:
            raise DecryptionError(f"archive format version {version} is not supported")
        if not 0 < chunk <= MAX_CHUNK_BYTES:
            raise DecryptionError(f"archive declares an invalid chunk size {chunk}")
        self._header = header
        self._record = chunk + TAG_BYTES
        self._aead = _archive_key(data_key, salt)

    def records(self) -> _Records:
        return _Records(self)

    def _open(self, index: int, record: bytes, final: bool) -> bytes:
        try:
            return self._aead.decrypt(_nonce(index, final), record, self._header)
        except InvalidTag:
            raise DecryptionError(
                f"chunk {index} failed authentication: the archive is corrupt, truncated, "
                "or was sealed with another key"
            ) from None


class _Records:
    def __init__(self, decryptor: ChunkDecryptor) -> None:
        self._d = decryptor
        self._index = 0
        self._done = False

    def __iter__(self) -> _Records:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        d = self._d
        record = _read_exactly(d._read, d._record)
        if len(record) < TAG_BYTES:
            raise DecryptionError(f"archive ends inside chunk {self._index}: it is truncated")
        final = len(record) < d._record
        plaintext = d._open(self._index, record, final)
        self._index += 1
        if final:
            self._done = True
            if d._read(1):
                raise DecryptionError("data after the final chunk: the archive is corrupt")
        return plaintext


def _read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining:
        part = read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)
