"""Checkpoint and restore as the agent performs them: driver, key, store, checks, metrics, logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kocoon.agent import compat, crypto, metrics, node
from kocoon.agent.drivers.base import (
    Available,
    CheckpointTarget,
    Driver,
    RestoreTarget,
    Unsupported,
)
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.errors import (
    AgentError,
    Busy,
    DriverUnavailable,
    DriverUnknown,
    Incompatible,
    InvalidRequest,
    KeyMissing,
    NotFound,
)
from kocoon.agent.keys import KeyProvider
from kocoon.agent.models import (
    CheckpointRecord,
    CheckpointRequest,
    Compatibility,
    DriverStatus,
    NodeFacts,
    PruneRequest,
    RestoreRequest,
    RestoreResult,
    SandboxRef,
)
from kocoon.agent.remote import RemoteStore
from kocoon.agent.store import CheckpointStore, select_for_pruning

log = logging.getLogger(__name__)

# Request fields that override what the checkpoint recorded about its target.
_TARGET_OVERRIDES = {
    "container_id": "containerId",
    "bundle": "bundle",
    "pod_uid": "podUid",
    "container": "container",
}


def new_checkpoint_id(now: datetime) -> str:
    return f"ckpt-{now:%Y%m%dt%H%M%Sz}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class ServiceConfig:
    node_name: str
    # Scratch space for CRIU images before archiving and after extraction. On tmpfs the
    # images never touch the disk in plaintext; on disk they are removed right after use.
    scratch_dir: Path
    chunk_bytes: int = crypto.DEFAULT_CHUNK_BYTES


class CheckpointService:
    def __init__(
        self,
        config: ServiceConfig,
        store: CheckpointStore,
        keys: KeyProvider,
        drivers: Mapping[str, Driver],
        criu: CriuTool,
        remote: RemoteStore | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.keys = keys
        self.drivers = dict(drivers)
        self.criu = criu
        # Optional copies in an object store: uploaded after each checkpoint, fetched by a
        # restore when this node lacks the checkpoint, deleted with it.
        self.remote = remote
        self._locks: dict[SandboxRef, asyncio.Lock] = {}
        config.scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.refresh_store_gauges()

    def refresh_store_gauges(self) -> None:
        records = self.store.list_records()
        metrics.STORED_CHECKPOINTS.set(len(records))
        metrics.STORED_BYTES.set(sum(r.size_bytes for r in records))

    async def _driver(self, name: str) -> Driver:
        driver = self.drivers.get(name)
        if driver is None:
            raise DriverUnknown(f"driver: {name!r} is not one of {', '.join(sorted(self.drivers))}")
        availability = await driver.probe()
        if isinstance(availability, Unsupported):
            raise DriverUnavailable(
                f"driver {name!r} is unsupported on this node: {availability.reason}"
            )
        return driver

    def _lock(self, sandbox: SandboxRef) -> asyncio.Lock:
        return self._locks.setdefault(sandbox, asyncio.Lock())

    async def node_compatibility(self, driver: Driver, image_digest: str | None) -> Compatibility:
        runtime, runtime_version = await driver.runtime_identity()
        gpu_model, gpu_driver = await node.gpu()
        return Compatibility(
            architecture=node.architecture(),
            kernel_release=node.kernel_release(),
            criu_version=await self.criu.version(),
            runtime=runtime,
            runtime_version=runtime_version,
            image_digest=image_digest,
            gpu_model=gpu_model,
            gpu_driver=gpu_driver,
        )

    async def checkpoint(self, request: CheckpointRequest) -> CheckpointRecord:
        try:
            record = await self._checkpoint(request)
        except AgentError as exc:
            metrics.FAILURES_TOTAL.labels(metrics.OPERATION_CHECKPOINT, exc.reason).inc()
            log.warning(
                "checkpoint failed",
                extra={
                    "sandbox": str(request.sandbox),
                    "driver": request.driver,
                    "reason": exc.reason,
                    "error": exc.message,
                },
            )
            raise
        if self.remote is not None:
            # Outside the sandbox's lock; a failed upload is recorded, the checkpoint stands.
            record = await self.remote.replicate(record, self.store, self.keys)
        return record

    async def _checkpoint(self, request: CheckpointRequest) -> CheckpointRecord:
        driver = await self._driver(request.driver)
        lock = self._lock(request.sandbox)
        if lock.locked():
            raise Busy(f"sandbox {request.sandbox} has a checkpoint or restore in progress")
        async with lock:
            if request.id is not None:
                existing = await self._existing(request.id, request.sandbox)
                if existing is not None:
                    return existing
            started = time.perf_counter()
            now = datetime.now(UTC)
            checkpoint_id = request.id or new_checkpoint_id(now)
            fields = {
                "sandbox": str(request.sandbox),
                "driver": driver.name,
                "checkpoint": checkpoint_id,
            }
            scratch = self.config.scratch_dir / checkpoint_id
            image_dir, work_dir = scratch / "images", scratch / "work"
            image_dir.mkdir(parents=True)
            work_dir.mkdir()
            try:
                log.info("checkpoint: dumping", extra=fields)
                target = CheckpointTarget(
                    sandbox=request.sandbox,
                    container_id=request.container_id,
                    pid=request.pid,
                    pod=request.pod,
                    pod_uid=request.pod_uid,
                    container=request.container,
                    leave_running=request.leave_running,
                )
                dumped = await driver.checkpoint(target, image_dir, work_dir)
                dump_seconds = time.perf_counter() - started
                metrics.PHASE_DURATION.labels(metrics.PHASE_DUMP).observe(dump_seconds)
                log.info(
                    "checkpoint: dumped; archiving",
                    extra={**fields, "seconds": round(dump_seconds, 3)},
                )
                key = await self.keys.get_or_create(request.sandbox)
                archive_started = time.perf_counter()
                try:
                    info = await asyncio.to_thread(
                        self.store.write,
                        checkpoint_id,
                        image_dir,
                        key,
                        chunk_bytes=self.config.chunk_bytes,
                    )
                except BaseException:
                    # Synchronous on purpose: it must run even while the task is cancelled.
                    self.store.abort(checkpoint_id)
                    raise
                archive_seconds = time.perf_counter() - archive_started
                metrics.PHASE_DURATION.labels(metrics.PHASE_ARCHIVE).observe(archive_seconds)
                here = await self.node_compatibility(driver, request.image_digest)
                record = CheckpointRecord(
                    id=checkpoint_id,
                    sandbox=request.sandbox,
                    driver=driver.name,
                    node=self.config.node_name,
                    created=now,
                    size_bytes=info.size_bytes,
                    image_bytes=info.image_bytes,
                    sha256=info.sha256,
                    compatibility=here.model_copy(
                        update={
                            "runtime": dumped.runtime,
                            "runtime_version": dumped.runtime_version,
                            "criu_version": dumped.criu_version,
                        }
                    ),
                    target=dumped.target,
                    dump_seconds=round(dump_seconds, 4),
                    archive_seconds=round(archive_seconds, 4),
                )
                self.store.commit(record)
            finally:
                await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)
            total = time.perf_counter() - started
            metrics.CHECKPOINT_DURATION.labels(driver.name).observe(total)
            metrics.ARCHIVE_BYTES.labels(driver.name).observe(info.size_bytes)
            metrics.BYTES_TOTAL.labels(metrics.OPERATION_CHECKPOINT).inc(info.size_bytes)
            self.refresh_store_gauges()
            log.info(
                "checkpoint: stored",
                extra={
                    **fields,
                    "seconds": round(total, 3),
                    "archiveSeconds": round(archive_seconds, 3),
                    "bytes": info.size_bytes,
                    "sha256": info.sha256,
                },
            )
            return record

    async def _existing(self, checkpoint_id: str, sandbox: SandboxRef) -> CheckpointRecord | None:
        """The stored checkpoint with this id, if any; an id of another sandbox is refused."""
        try:
            record = self.store.get(checkpoint_id)
        except NotFound:
            # Leftovers of an interrupted attempt with this id: start it over cleanly.
            await asyncio.to_thread(self.store.abort, checkpoint_id)
            await asyncio.to_thread(
                shutil.rmtree, self.config.scratch_dir / checkpoint_id, ignore_errors=True
            )
            return None
        if record.sandbox != sandbox:
            raise InvalidRequest(f"id: checkpoint {checkpoint_id} belongs to {record.sandbox}")
        return record

    async def _record_here(self, checkpoint_id: str) -> CheckpointRecord:
        """The checkpoint's record, fetched with its archive from the remote store first when
        this node lacks it (another node made it, or this node's disk was wiped)."""
        try:
            record = self.store.get(checkpoint_id)
        except NotFound:
            if self.remote is None:
                raise
        else:
            if self.remote is None or self.store.archive_path(checkpoint_id).is_file():
                return record
            # A record without its archive: fetch both.
            await asyncio.to_thread(self.store.delete, checkpoint_id)
        record = await self.remote.fetch(checkpoint_id, self.store, self.keys)
        self.refresh_store_gauges()
        return record

    async def restore(self, checkpoint_id: str, request: RestoreRequest) -> RestoreResult:
        record = await self._record_here(checkpoint_id)
        done = self.store.restore_result(checkpoint_id)
        if done is not None and request.container_id in (None, done.container_id):
            # Asked again after a caller's crash: the processes already run; restoring twice
            # would start them twice. Answer what the first restore answered.
            log.info("restore: already done", extra={"checkpoint": checkpoint_id})
            return done
        try:
            result = await self._restore(record, request)
            self.store.save_restore_result(checkpoint_id, result)
            return result
        except AgentError as exc:
            metrics.FAILURES_TOTAL.labels(metrics.OPERATION_RESTORE, exc.reason).inc()
            log.warning(
                "restore failed",
                extra={
                    "sandbox": str(record.sandbox),
                    "checkpoint": record.id,
                    "driver": record.driver,
                    "reason": exc.reason,
                    "error": exc.message,
                },
            )
            raise

    async def _restore(self, record: CheckpointRecord, request: RestoreRequest) -> RestoreResult:
        driver = await self._driver(record.driver)
        fields = {"sandbox": str(record.sandbox), "driver": driver.name, "checkpoint": record.id}
        here = await self.node_compatibility(driver, request.image_digest)
        problems = compat.incompatibilities(record.compatibility, here)
        if problems:
            raise Incompatible(
                f"checkpoint {record.id} cannot be restored on node {self.config.node_name}: "
                + "; ".join(problems)
            )
        key = await self.keys.get(record.sandbox)
        if key is None:
            raise KeyMissing(
                f"no data key for sandbox {record.sandbox} ({self.keys.describe(record.sandbox)} "
                "does not exist): the archive cannot be decrypted "
                "(was the key deleted with the sandbox?)"
            )
        lock = self._lock(record.sandbox)
        if lock.locked():
            raise Busy(f"sandbox {record.sandbox} has a checkpoint or restore in progress")
        async with lock:
            started = time.perf_counter()
            scratch = self.config.scratch_dir / f"restore-{record.id}-{secrets.token_hex(3)}"
            image_dir, work_dir = scratch / "images", scratch / "work"
            scratch.mkdir(parents=True)
            work_dir.mkdir()
            try:
                log.info("restore: verifying and extracting", extra=fields)
                await asyncio.to_thread(self.store.extract, record, image_dir, key)
                extract_seconds = time.perf_counter() - started
                metrics.PHASE_DURATION.labels(metrics.PHASE_EXTRACT).observe(extract_seconds)
                log.info(
                    "restore: extracted; restoring",
                    extra={**fields, "seconds": round(extract_seconds, 3)},
                )
                overrides = {
                    wire: value
                    for attr, wire in _TARGET_OVERRIDES.items()
                    if (value := getattr(request, attr)) is not None
                }
                target = RestoreTarget(
                    sandbox=record.sandbox, target={**record.target, **overrides}
                )
                restore_started = time.perf_counter()
                restored = await driver.restore(target, image_dir, work_dir)
                restore_seconds = time.perf_counter() - restore_started
                metrics.PHASE_DURATION.labels(metrics.PHASE_RESTORE).observe(restore_seconds)
            finally:
                await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)
            total = time.perf_counter() - started
            metrics.RESTORE_DURATION.labels(driver.name).observe(total)
            metrics.BYTES_TOTAL.labels(metrics.OPERATION_RESTORE).inc(record.size_bytes)
            log.info(
                "restore: done",
                extra={
                    **fields,
                    "seconds": round(total, 3),
                    "pid": restored.pid,
                    "coldStart": restored.cold_start,
                },
            )
            return RestoreResult(
                checkpoint_id=record.id,
                driver=driver.name,
                pid=restored.pid,
                container_id=restored.container_id,
                cold_start=restored.cold_start,
                message=restored.message,
                extract_seconds=round(extract_seconds, 4),
                restore_seconds=round(restore_seconds, 4),
            )

    async def delete(self, checkpoint_id: str) -> None:
        try:
            record: CheckpointRecord | None = self.store.get(checkpoint_id)
        except NotFound:
            if self.remote is None:
                raise
            record = None
        if self.remote is not None:
            # The remote copy first: when that fails, the local checkpoint stays, so asking
            # again retries (after the local one is gone, nothing would point at the copy).
            removed = await self.remote.delete(checkpoint_id, record)
            if record is None and not removed:
                raise NotFound(
                    f"checkpoint {checkpoint_id!r} is neither on this node nor in "
                    f"{self.remote.where()}"
                )
        if record is not None:
            await asyncio.to_thread(self.store.delete, checkpoint_id)
        self.refresh_store_gauges()
        log.info("checkpoint deleted", extra={"checkpoint": checkpoint_id})

    async def prune(self, request: PruneRequest) -> list[str]:
        records = self.store.list_records(request.sandbox)
        doomed = select_for_pruning(
            records,
            keep_last=request.keep_last,
            max_age=timedelta(seconds=request.max_age_seconds) if request.max_age_seconds else None,
            now=datetime.now(UTC),
        )
        by_id = {record.id: record for record in records}
        deleted = []
        for checkpoint_id in doomed:
            if self.remote is not None:
                try:
                    await self.remote.delete(checkpoint_id, by_id[checkpoint_id])
                except AgentError:
                    continue  # kept, with its remote copy; the next prune tries again
            await asyncio.to_thread(self.store.delete, checkpoint_id)
            deleted.append(checkpoint_id)
        self.refresh_store_gauges()
        if deleted:
            log.info(
                "checkpoints pruned", extra={"sandbox": str(request.sandbox), "deleted": deleted}
            )
        return deleted

    async def forget_sandbox(self, sandbox: SandboxRef) -> list[str]:
        """Deletes every checkpoint of a sandbox and then its key: its memory is gone for good."""
        records = self.store.list_records(sandbox)
        deleted = [record.id for record in records]
        for record in records:
            if self.remote is not None:
                # A copy left in the bucket is unreadable once the key below is gone.
                with contextlib.suppress(AgentError):
                    await self.remote.delete(record.id, record)
            await asyncio.to_thread(self.store.delete, record.id)
        await self.keys.delete(sandbox)
        self.refresh_store_gauges()
        log.info("sandbox forgotten", extra={"sandbox": str(sandbox), "deleted": deleted})
        return deleted

    async def node_facts(self) -> NodeFacts:
        statuses = []
        for name, driver in sorted(self.drivers.items()):
            availability = await driver.probe()
            if isinstance(availability, Available):
                statuses.append(DriverStatus(name=name, available=True, detail=availability.detail))
            else:
                statuses.append(
                    DriverStatus(name=name, available=False, detail=availability.reason)
                )
        info = await self.criu.info()
        gpu_model, gpu_driver = await node.gpu()
        return NodeFacts(
            node=self.config.node_name,
            architecture=node.architecture(),
            kernel_release=node.kernel_release(),
            criu_path=str(info.path) if info else None,
            criu_version=info.version if info else None,
            runtimes=await node.runtimes(),
            gpu_model=gpu_model,
            gpu_driver=gpu_driver,
            drivers=statuses,
        )
