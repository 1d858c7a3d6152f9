"""The agent's Prometheus metrics. Labels are low-cardinality: driver, operation, reason, phase."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY: Final = CollectorRegistry(auto_describe=True)

OPERATION_CHECKPOINT: Final = "checkpoint"
OPERATION_RESTORE: Final = "restore"
PHASE_DUMP: Final = "dump"
PHASE_ARCHIVE: Final = "archive"
PHASE_EXTRACT: Final = "extract"
PHASE_RESTORE: Final = "restore"
# Operations on the remote object store.
REMOTE_UPLOAD: Final = "upload"
REMOTE_DOWNLOAD: Final = "download"
REMOTE_DELETE: Final = "delete"

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
_SIZE_BUCKETS = tuple(float(1 << shift) for shift in range(20, 38, 2))  # 1 MiB .. 128 GiB

CHECKPOINT_DURATION: Final = Histogram(
    "kocoon_agent_checkpoint_duration_seconds",
    "Time from request to stored archive, per driver.",
    ["driver"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
RESTORE_DURATION: Final = Histogram(
    "kocoon_agent_restore_duration_seconds",
    "Time from request to a running restored workload, per driver.",
    ["driver"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
PHASE_DURATION: Final = Histogram(
    "kocoon_agent_phase_duration_seconds",
    "Time spent per phase: dump, archive (tar+encrypt+hash), extract (verify+decrypt), restore.",
    ["phase"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
ARCHIVE_BYTES: Final = Histogram(
    "kocoon_agent_archive_bytes",
    "Size of encrypted checkpoint archives written.",
    ["driver"],
    buckets=_SIZE_BUCKETS,
    registry=REGISTRY,
)
BYTES_TOTAL: Final = Counter(
    "kocoon_agent_bytes",
    "Archive bytes written by checkpoints and read by restores.",
    ["operation"],
    registry=REGISTRY,
)
FAILURES_TOTAL: Final = Counter(
    "kocoon_agent_failures",
    "Failed checkpoints and restores, by reason.",
    ["operation", "reason"],
    registry=REGISTRY,
)
STORED_CHECKPOINTS: Final = Gauge(
    "kocoon_agent_stored_checkpoints",
    "Checkpoints held in this node's store.",
    registry=REGISTRY,
)
STORED_BYTES: Final = Gauge(
    "kocoon_agent_stored_bytes",
    "Bytes of archives held in this node's store.",
    registry=REGISTRY,
)
REMOTE_DURATION: Final = Histogram(
    "kocoon_agent_remote_duration_seconds",
    "Time of successful remote object store operations: upload, download, delete.",
    ["operation"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
REMOTE_BYTES: Final = Counter(
    "kocoon_agent_remote_bytes",
    "Archive bytes uploaded to and downloaded from the remote object store.",
    ["operation"],
    registry=REGISTRY,
)
REMOTE_FAILURES: Final = Counter(
    "kocoon_agent_remote_failures",
    "Failed remote object store operations; a failed upload keeps the local checkpoint.",
    ["operation"],
    registry=REGISTRY,
)
