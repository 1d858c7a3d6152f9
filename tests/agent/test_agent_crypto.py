from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kocoon.agent import crypto

pytestmark = pytest.mark.unit


def seal(data: bytes, key: bytes, chunk: int) -> bytes:
    out = io.BytesIO()
    encryptor = crypto.ChunkEncryptor(key, out.write, chunk)
    # Uneven writes: chunk boundaries must not depend on how callers slice their data.
    for start in range(0, len(data), 7):
        encryptor.write(data[start : start + 7])
    encryptor.close()
    return out.getvalue()


def open_all(sealed: bytes, key: bytes) -> bytes:
    reader = io.BytesIO(sealed)
    return b"".join(crypto.ChunkDecryptor(key, reader.read).records())


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300), chunk=st.integers(min_value=1, max_value=64))
def test_round_trip_any_size_and_chunking(data: bytes, chunk: int) -> None:
    key = crypto.new_data_key()
    assert open_all(seal(data, key, chunk), key) == data


def test_ciphertext_hides_plaintext_and_differs_per_archive() -> None:
    key = crypto.new_data_key()
    data = b"SECRET-MARKER " * 1000
    first, second = seal(data, key, 256), seal(data, key, 256)
    assert b"SECRET-MARKER" not in first
    # A fresh salt per archive: the same data under the same key never repeats ciphertext.
    assert first[crypto.HEADER_BYTES :] != second[crypto.HEADER_BYTES :]


def test_flipped_bit_is_rejected() -> None:
    key = crypto.new_data_key()
    sealed = bytearray(seal(os.urandom(1000), key, 100))
    sealed[crypto.HEADER_BYTES + 150] ^= 0x01
    with pytest.raises(crypto.DecryptionError, match="chunk 1 failed authentication"):
        open_all(bytes(sealed), key)


def test_truncation_at_a_chunk_boundary_is_rejected() -> None:
    key = crypto.new_data_key()
    sealed = seal(os.urandom(1000), key, 100)
    record = 100 + crypto.TAG_BYTES
    # Drop the final (short) chunk: every remaining chunk still authenticates on its own.
    cut = sealed[: crypto.HEADER_BYTES + 10 * record]
    with pytest.raises(crypto.DecryptionError, match="truncated"):
        open_all(cut, key)


def test_dropped_middle_chunk_is_rejected() -> None:
    key = crypto.new_data_key()
    sealed = seal(os.urandom(1000), key, 100)
    record = 100 + crypto.TAG_BYTES
    start = crypto.HEADER_BYTES
    spliced = sealed[:start] + sealed[start + record :]
    with pytest.raises(crypto.DecryptionError):
        open_all(spliced, key)


def test_trailing_garbage_is_rejected() -> None:
    key = crypto.new_data_key()
    with pytest.raises(crypto.DecryptionError):
        open_all(seal(b"abc", key, 100) + b"x", key)


def test_wrong_key_is_rejected() -> None:
    sealed = seal(b"data", crypto.new_data_key(), 100)
    with pytest.raises(crypto.DecryptionError, match="another key"):
        open_all(sealed, crypto.new_data_key())


def test_not_an_archive() -> None:
    with pytest.raises(crypto.DecryptionError, match="bad magic"):
        open_all(b"PK\x03\x04" + bytes(40), crypto.new_data_key())


def test_header_tampering_is_rejected() -> None:
    key = crypto.new_data_key()
    sealed = bytearray(seal(b"data" * 50, key, 64))
    sealed[crypto.HEADER_BYTES - 1] ^= 0xFF  # last salt byte: derives another key
    with pytest.raises(crypto.DecryptionError):
        open_all(bytes(sealed), key)
