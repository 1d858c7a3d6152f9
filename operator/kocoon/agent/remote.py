"""A copy of each checkpoint in an S3-compatible object store, for restores on any node.

Layout in the bucket, under an optional prefix:

    <prefix><checkpoint id>/archive.kckp   the sealed archive, byte for byte as on the node
    <prefix><checkpoint id>/meta.json      the checkpoint's record, authenticated (see below)

Only what the node keeps at rest leaves it: the archive is AES-256-GCM ciphertext, the record
says which sandbox it belongs to, its size, SHA-256 and compatibility. The record is uploaded
inside an envelope with an HMAC-SHA256 under a key derived from the sandbox's data key, so a
node that fetches a checkpoint trusts the sandbox (hence the key it decrypts with) and the
SHA-256 only if an agent holding that sandbox's key wrote them: an edited record, or objects
copied from another checkpoint, are refused before anything is decrypted. The archive must
then match the authenticated SHA-256, and the restore checks every GCM tag as for any archive.

Uploads stream the archive from disk in parts (S3 multipart upload), so memory stays at a few
parts whatever the archive's size; downloads stream into the store's partial directory and
move into place only once verified. A failed upload never touches the local checkpoint: its
record says why (`remote.state: Failed`), and asking for the same checkpoint id again retries.

The S3 client (`minio`) blocks; every call runs in a worker thread.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import urllib3
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from minio import Minio
from minio.credentials.credentials import Credentials
from minio.credentials.providers import EnvAWSProvider, Provider
from minio.error import S3Error
from pydantic import ValidationError

from kocoon.agent import metrics
from kocoon.agent.errors import ArchiveCorrupt, KeyMissing, NotFound, RemoteFailed
from kocoon.agent.keys import KeyProvider
from kocoon.agent.models import (
    REMOTE_FAILED,
    REMOTE_UPLOADED,
    CheckpointRecord,
    RemoteCopy,
)
from kocoon.agent.store import ARCHIVE_NAME, META_NAME, CheckpointStore

log = logging.getLogger(__name__)

ENVELOPE_FORMAT: Final = 1
MIN_PART_BYTES: Final = 5 << 20  # S3's minimum for every part but the last
MAX_PART_BYTES: Final = 5 << 30
MAX_PARTS: Final = 10_000
DEFAULT_PART_BYTES: Final = 16 << 20
DEFAULT_PARALLEL_PARTS: Final = 2
_READ_BYTES: Final = 1 << 20
_HMAC_INFO: Final = b"kocoon checkpoint record v1"
_NOT_THERE: Final = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})


@dataclass(frozen=True)
class RemoteConfig:
    """Where the copies go. Credentials come from files (a mounted Secret) or, without them,
    from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN."""

    endpoint: str
    bucket: str
    prefix: str = ""
    region: str | None = None
    access_key_file: Path | None = None
    secret_key_file: Path | None = None
    ca_file: Path | None = None
    part_bytes: int = DEFAULT_PART_BYTES
    parallel_parts: int = DEFAULT_PARALLEL_PARTS
    timeout_seconds: float = 60.0

    def validated(self) -> RemoteConfig:
        """Checks every setting; errors name the command-line flag."""
        url = urlsplit(self.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"--s3-endpoint: {self.endpoint!r} is not an http(s)://host[:port] URL"
            )
        if url.path not in ("", "/") or url.query or url.username:
            raise ValueError(
                f"--s3-endpoint: {self.endpoint!r} must be scheme://host[:port] only "
                "(the bucket goes in --s3-bucket, a folder in --s3-prefix)"
            )
        if not self.bucket:
            raise ValueError("--s3-bucket: required with --s3-endpoint")
        if self.prefix.startswith("/"):
            raise ValueError(f"--s3-prefix: {self.prefix!r} must not start with '/'")
        if not MIN_PART_BYTES <= self.part_bytes <= MAX_PART_BYTES:
            raise ValueError(
                f"--s3-part-size: {self.part_bytes} bytes is outside S3's "
                f"{MIN_PART_BYTES >> 20} MiB .. {MAX_PART_BYTES >> 30} GiB"
            )
        if self.parallel_parts < 1:
            raise ValueError(f"--s3-parallel-parts: {self.parallel_parts} must be at least 1")
        if (self.access_key_file is None) != (self.secret_key_file is None):
            raise ValueError("--s3-access-key-file, --s3-secret-key-file: give both or neither")
        for flag, path in (
            ("--s3-access-key-file", self.access_key_file),
            ("--s3-secret-key-file", self.secret_key_file),
            ("--s3-ca-file", self.ca_file),
        ):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag}: {path} does not exist")
        if self.access_key_file is None and not (
            os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
        ):
            raise ValueError(
                "--s3-access-key-file, --s3-secret-key-file: no S3 credentials (give the files, "
                "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        return self

    @property
    def key_prefix(self) -> str:
        return self.prefix if not self.prefix or self.prefix.endswith("/") else self.prefix + "/"


class FileCredentials(Provider):
    """Access and secret key from two files, re-read when they change (a rotated Secret)."""

    def __init__(self, access_key_file: Path, secret_key_file: Path) -> None:
        self._files = (access_key_file, secret_key_file)
        self._stamp: tuple[float, float] | None = None
        self._credentials: Credentials | None = None

    def retrieve(self) -> Credentials:
        access, secret = self._files
        stamp = (access.stat().st_mtime, secret.stat().st_mtime)
        if self._credentials is None or stamp != self._stamp:
            access_key, secret_key = access.read_text().strip(), secret.read_text().strip()
            if not access_key or not secret_key:
                raise ValueError(f"S3 credentials: {access} or {secret} is empty")
            self._credentials = Credentials(access_key, secret_key)
            self._stamp = stamp
        return self._credentials


def record_mac_key(data_key: bytes) -> bytes:
    """The sandbox's key for authenticating records: derived, never the data key itself."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HMAC_INFO)
    return hkdf.derive(data_key)


def seal_record(record: CheckpointRecord, data_key: bytes) -> bytes:
    """Pure: the meta.json uploaded beside an archive (its local `remote` field left out)."""
    text = record.model_copy(update={"remote": None}).model_dump_json(
        by_alias=True, exclude_none=True
    )
    mac = hmac.new(record_mac_key(data_key), text.encode(), hashlib.sha256).hexdigest()
    envelope = {"format": ENVELOPE_FORMAT, "record": text, "hmacSha256": mac}
    return json.dumps(envelope, indent=2).encode()


def read_envelope(body: bytes, where: str) -> tuple[CheckpointRecord, str, str]:
    """Pure: (record, its exact text, its MAC) from an uploaded meta.json, not yet verified."""
    try:
        envelope = json.loads(body)
        if envelope.get("format") != ENVELOPE_FORMAT:
            raise ValueError(f"format {envelope.get('format')!r}, expected {ENVELOPE_FORMAT}")
        text, mac = envelope["record"], envelope["hmacSha256"]
        if not isinstance(text, str) or not isinstance(mac, str):
            raise ValueError("record and hmacSha256 must be strings")
        return CheckpointRecord.model_validate_json(text), text, mac
    except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
        raise ArchiveCorrupt(f"{where} is not a checkpoint record: {exc}") from None


def verify_envelope(text: str, mac: str, data_key: bytes) -> bool:
    expected = hmac.new(record_mac_key(data_key), text.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, mac)


def describe_failure(exc: BaseException) -> str:
    """One line for a record, a log and an error: what the store answered, or why it did not."""
    if isinstance(exc, S3Error):
        return f"S3 answered {exc.code}: {exc.message}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return f"unreachable: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class RemoteStore:
    def __init__(self, config: RemoteConfig, credentials: Provider | None = None) -> None:
        self.config = config.validated()
        url = urlsplit(config.endpoint)
        if credentials is None:
            if config.access_key_file is not None and config.secret_key_file is not None:
                credentials = FileCredentials(config.access_key_file, config.secret_key_file)
            else:
                credentials = EnvAWSProvider()
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10.0, read=config.timeout_seconds),
            maxsize=max(4, config.parallel_parts + 2),
            cert_reqs="CERT_REQUIRED",
            ca_certs=str(config.ca_file) if config.ca_file else None,
            retries=urllib3.Retry(
                total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            url.netloc,
            secure=url.scheme == "https",
            region=config.region,
            credentials=credentials,
            http_client=http,
        )
        self._fetching: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RemoteStore | None:
        if not args.s3_endpoint:
            if args.s3_bucket:
                raise ValueError("--s3-endpoint: required with --s3-bucket")
            return None
        return cls(
            RemoteConfig(
                endpoint=args.s3_endpoint,
                bucket=args.s3_bucket or "",
                prefix=args.s3_prefix,
                region=args.s3_region,
                access_key_file=args.s3_access_key_file,
                secret_key_file=args.s3_secret_key_file,
                ca_file=args.s3_ca_file,
                part_bytes=args.s3_part_size << 20,
                parallel_parts=args.s3_parallel_parts,
            )
        )

    def where(self, key: str = "") -> str:
        return f"s3://{self.config.bucket}/{key or self.config.key_prefix}"

    def archive_key(self, checkpoint_id: str) -> str:
        return f"{self.config.key_prefix}{checkpoint_id}/{ARCHIVE_NAME}"

    def meta_key(self, checkpoint_id: str) -> str:
        return f"{self.config.key_prefix}{checkpoint_id}/{META_NAME}"

    def part_bytes(self, size: int) -> int:
        """The configured part size, grown (in MiB) when the archive would need too many parts."""
        needed = -(-size // MAX_PARTS)
        part = max(self.config.part_bytes, needed)
        return -(-part // (1 << 20)) * (1 << 20)

    async def check(self) -> str | None:
        """Why the bucket cannot be used, or None when it can."""
        try:
            if await asyncio.to_thread(self._client.bucket_exists, self.config.bucket):
                return None
            return f"bucket {self.config.bucket!r} does not exist at {self.config.endpoint}"
        except Exception as exc:
            return f"{self.config.endpoint}: {describe_failure(exc)}"

    # --- upload -------------------------------------------------------------------------

    def _upload(self, archive: Path, archive_key: str, meta_key: str, meta: bytes) -> str | None:
        size = archive.stat().st_size
        with archive.open("rb") as file:
            result = self._client.put_object(
                self.config.bucket,
                archive_key,
                file,
                size,
                part_size=self.part_bytes(size),
                num_parallel_uploads=self.config.parallel_parts,
            )
        # The record goes last: a meta.json in the bucket means its archive is complete.
        self._client.put_object(
            self.config.bucket,
            meta_key,
            io.BytesIO(meta),
            len(meta),
            content_type="application/json",
        )
        return result.etag

    async def replicate(
        self, record: CheckpointRecord, store: CheckpointStore, keys: KeyProvider
    ) -> CheckpointRecord:
        """Uploads a stored checkpoint unless it is already uploaded; returns (and stores) its
        record with `remote` saying where, or why not. Never raises for the store's failures:
        the local checkpoint stands either way."""
        if record.remote is not None and record.remote.state == REMOTE_UPLOADED:
            return record
        archive_key, meta_key = self.archive_key(record.id), self.meta_key(record.id)
        fields = {
            "sandbox": str(record.sandbox),
            "checkpoint": record.id,
            "bucket": self.config.bucket,
            "key": archive_key,
        }
        started = time.perf_counter()
        try:
            data_key = await keys.get(record.sandbox)
            if data_key is None:
                raise KeyMissing(f"no data key for sandbox {record.sandbox}")
            meta = seal_record(record, data_key)
            log.info("checkpoint: uploading", extra={**fields, "bytes": record.size_bytes})
            etag = await asyncio.to_thread(
                self._upload, store.archive_path(record.id), archive_key, meta_key, meta
            )
        except Exception as exc:
            error = describe_failure(exc)
            metrics.REMOTE_FAILURES.labels(metrics.REMOTE_UPLOAD).inc()
            log.warning(
                "checkpoint: upload failed; the local checkpoint is kept",
                extra={**fields, "endpoint": self.config.endpoint, "error": error},
            )
            copy = RemoteCopy(
                state=REMOTE_FAILED,
                bucket=self.config.bucket,
                key=archive_key,
                meta_key=meta_key,
                error=error,
            )
        else:
            seconds = time.perf_counter() - started
            metrics.REMOTE_DURATION.labels(metrics.REMOTE_UPLOAD).observe(seconds)
            metrics.REMOTE_BYTES.labels(metrics.REMOTE_UPLOAD).inc(record.size_bytes)
            log.info(
                "checkpoint: uploaded",
                extra={
                    **fields,
                    "etag": etag,
                    "bytes": record.size_bytes,
                    "seconds": round(seconds, 3),
                    "mibPerSecond": round(record.size_bytes / (1 << 20) / max(seconds, 1e-6), 1),
                },
            )
            copy = RemoteCopy(
                state=REMOTE_UPLOADED,
                bucket=self.config.bucket,
                key=archive_key,
                meta_key=meta_key,
                etag=etag,
                uploaded=datetime.now(UTC),
                upload_seconds=round(seconds, 4),
            )
        updated = record.model_copy(update={"remote": copy})
        try:
            store.save_record(updated)
        except FileNotFoundError:
            log.info("checkpoint deleted while uploading", extra=fields)
        return updated

    # --- download -----------------------------------------------------------------------

    def _get_small(self, key: str) -> bytes | None:
        try:
            response = self._client.get_object(self.config.bucket, key)
        except S3Error as exc:
            if exc.code in _NOT_THERE:
                return None
            raise
        try:
            return response.read(decode_content=False)
        finally:
            response.close()
            response.release_conn()

    def _download(self, key: str, dest: Path) -> tuple[int, str, str | None]:
        """Streams an object into `dest`; returns its size, SHA-256 and ETag."""
        digest = hashlib.sha256()
        size = 0
        response = self._client.get_object(self.config.bucket, key)
        try:
            with dest.open("wb") as file:
                for block in response.stream(_READ_BYTES, decode_content=False):
                    digest.update(block)
                    file.write(block)
                    size += len(block)
                file.flush()
                os.fsync(file.fileno())
            etag = response.headers.get("ETag")
        finally:
            response.close()
            response.release_conn()
        return size, digest.hexdigest(), etag.strip('"') if etag else None

    async def fetch(
        self, checkpoint_id: str, store: CheckpointStore, keys: KeyProvider
    ) -> CheckpointRecord:
        """Brings a checkpoint this node lacks from the bucket into the store, verified.

        Raises NotFound when the bucket lacks it too, ArchiveCorrupt when its record or archive
        is not what the sandbox's agent wrote, KeyMissing, or RemoteFailed.
        """
        lock = self._fetching.setdefault(checkpoint_id, asyncio.Lock())
        async with lock:
            try:
                return store.get(checkpoint_id)  # fetched by a concurrent request
            except NotFound:
                pass
            try:
                return await self._fetch(checkpoint_id, store, keys)
            except (ArchiveCorrupt, KeyMissing, RemoteFailed) as exc:
                metrics.REMOTE_FAILURES.labels(metrics.REMOTE_DOWNLOAD).inc()
                log.warning(
                    "restore: download refused or failed",
                    extra={
                        "checkpoint": checkpoint_id,
                        "bucket": self.config.bucket,
                        "key": self.archive_key(checkpoint_id),
                        "reason": exc.reason,
                        "error": exc.message,
                    },
                )
                raise
            finally:
                self._fetching.pop(checkpoint_id, None)

    async def _fetch(
        self, checkpoint_id: str, store: CheckpointStore, keys: KeyProvider
    ) -> CheckpointRecord:
        archive_key, meta_key = self.archive_key(checkpoint_id), self.meta_key(checkpoint_id)
        started = time.perf_counter()
        try:
            body = await asyncio.to_thread(self._get_small, meta_key)
        except Exception as exc:
            raise RemoteFailed(
                f"reading {self.where(meta_key)} at {self.config.endpoint}: {describe_failure(exc)}"
            ) from None
        if body is None:
            raise NotFound(
                f"checkpoint {checkpoint_id!r} is neither on this node nor in {self.where()}"
            )
        record, text, mac = read_envelope(body, self.where(meta_key))
        data_key = await keys.get(record.sandbox)
        if data_key is None:
            raise KeyMissing(
                f"no data key for sandbox {record.sandbox} ({keys.describe(record.sandbox)} "
                f"does not exist): {self.where(meta_key)} cannot be verified or decrypted"
            )
        if not verify_envelope(text, mac, data_key):
            raise ArchiveCorrupt(
                f"{self.where(meta_key)} fails authentication with sandbox {record.sandbox}'s "
                "key: the record was altered, or was not written for this sandbox"
            )
        if record.id != checkpoint_id:
            raise ArchiveCorrupt(
                f"{self.where(meta_key)} is the record of checkpoint {record.id!r}, "
                f"not {checkpoint_id!r}: objects were copied or moved in the bucket"
            )
        partial = store.partial_dir(checkpoint_id)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o700, parents=True)
        try:
            try:
                size, digest, etag = await asyncio.to_thread(
                    self._download, archive_key, partial / ARCHIVE_NAME
                )
            except Exception as exc:
                raise RemoteFailed(
                    f"downloading {self.where(archive_key)} from {self.config.endpoint}: "
                    f"{describe_failure(exc)}"
                ) from None
            if (size, digest) != (record.size_bytes, record.sha256):
                raise ArchiveCorrupt(
                    f"{self.where(archive_key)} has SHA-256 {digest} ({size} bytes), its "
                    f"authenticated record says {record.sha256} ({record.size_bytes} bytes): "
                    "the archive was altered or truncated in the bucket"
                )
            copy = RemoteCopy(
                state=REMOTE_UPLOADED,
                bucket=self.config.bucket,
                key=archive_key,
                meta_key=meta_key,
                etag=etag,
            )
            fetched = record.model_copy(update={"remote": copy})
            store.commit(fetched)
        except BaseException:
            store.abort(checkpoint_id)
            raise
        seconds = time.perf_counter() - started
        metrics.REMOTE_DURATION.labels(metrics.REMOTE_DOWNLOAD).observe(seconds)
        metrics.REMOTE_BYTES.labels(metrics.REMOTE_DOWNLOAD).inc(size)
        log.info(
            "restore: downloaded from the remote store",
            extra={
                "sandbox": str(record.sandbox),
                "checkpoint": checkpoint_id,
                "bucket": self.config.bucket,
                "key": archive_key,
                "bytes": size,
                "seconds": round(seconds, 3),
                "origin": record.node,
            },
        )
        return fetched

    # --- delete -------------------------------------------------------------------------

    def _delete(self, keys: tuple[str, ...], check: str | None) -> bool:
        if check is not None:
            try:
                self._client.stat_object(self.config.bucket, check)
            except S3Error as exc:
                if exc.code in _NOT_THERE:
                    return False
                raise
        for key in keys:
            self._client.remove_object(self.config.bucket, key)
        return True

    async def delete(self, checkpoint_id: str, record: CheckpointRecord | None) -> bool:
        """Removes a checkpoint's objects. With no local record, only when the bucket holds its
        record; returns whether it did. Raises RemoteFailed when the store fails and the copy
        is known or may exist; a copy whose upload had failed is removed on a best-effort basis.
        """
        copy = record.remote if record is not None else None
        meta_key = copy.meta_key if copy else self.meta_key(checkpoint_id)
        archive_key = copy.key if copy else self.archive_key(checkpoint_id)
        bucket = copy.bucket if copy else self.config.bucket
        if bucket != self.config.bucket:
            log.warning(
                "checkpoint was uploaded to another bucket; its copy there is left",
                extra={"checkpoint": checkpoint_id, "bucket": bucket, "key": archive_key},
            )
            return False
        started = time.perf_counter()
        try:
            removed = await asyncio.to_thread(
                self._delete, (meta_key, archive_key), meta_key if record is None else None
            )
        except Exception as exc:
            metrics.REMOTE_FAILURES.labels(metrics.REMOTE_DELETE).inc()
            error = describe_failure(exc)
            strict = record is None or (copy is not None and copy.state == REMOTE_UPLOADED)
            log.warning(
                "checkpoint: deleting the remote copy failed",
                extra={
                    "checkpoint": checkpoint_id,
                    "bucket": bucket,
                    "key": archive_key,
                    "error": error,
                    "kept": strict,
                },
            )
            if strict:
                raise RemoteFailed(
                    f"deleting {self.where(archive_key)} at {self.config.endpoint}: {error}"
                ) from None
            return False
        metrics.REMOTE_DURATION.labels(metrics.REMOTE_DELETE).observe(time.perf_counter() - started)
        if removed:
            log.info(
                "checkpoint: remote copy deleted",
                extra={"checkpoint": checkpoint_id, "bucket": bucket, "key": archive_key},
            )
        return removed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "remote store",
        "copy every archive (ciphertext only) and its record to an S3-compatible bucket, "
        "so a checkpoint can be restored when this node's copy is gone",
    )
    group.add_argument("--s3-endpoint", help="https://host[:port] of the S3 API; off if unset")
    group.add_argument("--s3-bucket", help="bucket for the archives (must exist)")
    group.add_argument("--s3-prefix", default="", help="key prefix, e.g. 'cluster-a/'")
    group.add_argument("--s3-region", help="region to sign requests for (default: us-east-1)")
    group.add_argument(
        "--s3-access-key-file",
        type=Path,
        help="file holding the access key id (default: $AWS_ACCESS_KEY_ID)",
    )
    group.add_argument(
        "--s3-secret-key-file",
        type=Path,
        help="file holding the secret access key (default: $AWS_SECRET_ACCESS_KEY)",
    )
    group.add_argument("--s3-ca-file", type=Path, help="CA bundle for the endpoint's TLS")
    group.add_argument(
        "--s3-part-size",
        type=int,
        default=DEFAULT_PART_BYTES >> 20,
        help="multipart upload part size in MiB (default: %(default)s)",
    )
    group.add_argument(
        "--s3-parallel-parts",
        type=int,
        default=DEFAULT_PARALLEL_PARTS,
        help="parts uploaded at once; memory is about (this + 1) x part size",
    )
