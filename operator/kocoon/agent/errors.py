"""Errors the agent reports: each carries a reason (a named constant) and an HTTP status."""

from __future__ import annotations

# Reasons: stable strings the operator may branch on and metrics are labelled with.
REASON_INVALID_REQUEST = "InvalidRequest"
REASON_NOT_FOUND = "NotFound"
REASON_DRIVER_UNKNOWN = "DriverUnknown"
REASON_DRIVER_UNAVAILABLE = "DriverUnavailable"
REASON_TARGET_NOT_FOUND = "TargetNotFound"
REASON_CHECKPOINT_FAILED = "CheckpointFailed"
REASON_RESTORE_FAILED = "RestoreFailed"
REASON_RESTORE_UNSUPPORTED = "RestoreUnsupported"
REASON_ARCHIVE_CORRUPT = "ArchiveCorrupt"
REASON_INCOMPATIBLE = "Incompatible"
REASON_KEY_MISSING = "KeyMissing"
REASON_KEY_INVALID = "KeyInvalid"
REASON_KEY_UNAVAILABLE = "KeyUnavailable"
REASON_REMOTE_FAILED = "RemoteFailed"
REASON_BUSY = "Busy"
REASON_STORE_FAILED = "StoreFailed"
REASON_UNAUTHORIZED = "Unauthorized"


class AgentError(Exception):
    """An error with a reason and the HTTP status the API answers with."""

    reason: str = REASON_CHECKPOINT_FAILED
    status: int = 500

    def __init__(self, message: str, *, reason: str | None = None, status: int | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self)


class InvalidRequest(AgentError):
    reason = REASON_INVALID_REQUEST
    status = 400


class NotFound(AgentError):
    reason = REASON_NOT_FOUND
    status = 404


class DriverUnknown(AgentError):
    reason = REASON_DRIVER_UNKNOWN
    status = 400


class DriverUnavailable(AgentError):
    reason = REASON_DRIVER_UNAVAILABLE
    status = 422


class TargetNotFound(AgentError):
    reason = REASON_TARGET_NOT_FOUND
    status = 404


class CheckpointFailed(AgentError):
    reason = REASON_CHECKPOINT_FAILED
    status = 500


class RestoreFailed(AgentError):
    reason = REASON_RESTORE_FAILED
    status = 500


class RestoreUnsupported(AgentError):
    reason = REASON_RESTORE_UNSUPPORTED
    status = 422


class ArchiveCorrupt(AgentError):
    reason = REASON_ARCHIVE_CORRUPT
    status = 422


class Incompatible(AgentError):
    reason = REASON_INCOMPATIBLE
    status = 409


class KeyMissing(AgentError):
    reason = REASON_KEY_MISSING
    status = 409


class KeyInvalid(AgentError):
    """A data key exists but is damaged: it is never replaced, since that would orphan archives."""

    reason = REASON_KEY_INVALID
    status = 500


class KeyUnavailable(AgentError):
    """Where the keys are kept cannot be read or written right now (API server, permissions)."""

    reason = REASON_KEY_UNAVAILABLE
    status = 503


class RemoteFailed(AgentError):
    """The remote object store could not be reached or refused an operation."""

    reason = REASON_REMOTE_FAILED
    status = 502


class Busy(AgentError):
    reason = REASON_BUSY
    status = 409
