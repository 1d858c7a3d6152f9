"""Every condition type, reason and phase used in status, in one place.

Reasons are CamelCase (as `metav1.Condition` requires) and say why a condition has its status.
"""

from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    """Condition types across Sandbox, AgentSession and ModelDeployment."""

    READY = "Ready"
    HIBERNATED = "Hibernated"
    CHECKPOINT_AVAILABLE = "CheckpointAvailable"
    POD_SCHEDULED = "PodScheduled"
    MODEL_CACHED = "ModelCached"
    EXPIRED = "Expired"
    PREVIOUS_TOKEN_ACCEPTED = "PreviousTokenAccepted"
    CHILDREN_READY = "ChildrenReady"
    EGRESS_ENFORCED = "EgressEnforced"
    MODELS_AVAILABLE = "ModelsAvailable"
    # ModelDeployment: whether the model source can be read, and whether the wake strategy
    # can work where the replicas run.
    MODEL_SOURCE_READY = "ModelSourceReady"
    WAKE_STRATEGY_AVAILABLE = "WakeStrategyAvailable"


class Reason(StrEnum):
    """Reasons for conditions; each names the state it explains."""

    # Ready
    POD_READY = "PodReady"
    POD_NOT_READY = "PodNotReady"
    POD_PENDING = "PodPending"
    SANDBOX_HIBERNATED = "SandboxHibernated"
    SANDBOX_WAKING = "SandboxWaking"
    SANDBOX_EXPIRED = "SandboxExpired"
    RECONCILER_ERROR = "ReconcilerError"
    POD_FAILED = "PodFailed"
    SANDBOX_TERMINATING = "SandboxTerminating"
    # ChildrenReady
    CHILDREN_APPLIED = "ChildrenApplied"
    CHILD_APPLY_FAILED = "ChildApplyFailed"
    # EgressEnforced
    EGRESS_POLICY_APPLIED = "EgressPolicyApplied"
    HOST_RULES_NOT_ENFORCED = "HostRulesNotEnforced"
    # Deletion: the cleanup gave up after bounded retries
    CLEANUP_ABANDONED = "CleanupAbandoned"
    REPLICAS_READY = "ReplicasReady"
    SCALED_TO_ZERO = "ScaledToZero"
    # Hibernated
    IDLE_TIMEOUT = "IdleTimeout"
    REQUESTED_BY_USER = "RequestedByUser"
    NOT_HIBERNATED = "NotHibernated"
    HIBERNATION_DISABLED = "HibernationDisabled"
    # CheckpointAvailable
    CHECKPOINT_STORED = "CheckpointStored"
    CHECKPOINT_FAILED = "CheckpointFailed"
    CHECKPOINT_EXPIRED = "CheckpointExpired"
    NO_CHECKPOINT = "NoCheckpoint"
    RESTORE_FAILED = "RestoreFailed"
    WOKE_COLD = "WokeCold"
    # PodScheduled
    POD_SCHEDULED = "PodScheduled"
    UNSCHEDULABLE = "Unschedulable"
    # ModelCached
    MODEL_DOWNLOADED = "ModelDownloaded"
    MODEL_DOWNLOADING = "ModelDownloading"
    MODEL_DOWNLOAD_FAILED = "ModelDownloadFailed"
    # Expired
    SHUTDOWN_TIME_REACHED = "ShutdownTimeReached"
    MAX_LIFETIME_REACHED = "MaxLifetimeReached"
    # AgentSession
    SANDBOX_CREATING = "SandboxCreating"
    SANDBOX_REPLACING = "SandboxReplacing"
    SANDBOX_NAME_TAKEN = "SandboxNameTaken"
    INVALID_SANDBOX_TEMPLATE = "InvalidSandboxTemplate"
    TOKEN_ROTATED = "TokenRotated"
    PREVIOUS_TOKEN_EXPIRED = "PreviousTokenExpired"
    HIBERNATED_STATE_RELEASED = "HibernatedStateReleased"
    # ModelsAvailable (AgentSession)
    MODELS_FOUND = "ModelsFound"
    MODEL_NOT_FOUND = "ModelNotFound"
    # Ready (ModelDeployment), besides ReplicasReady and ScaledToZero
    REPLICAS_LOADING = "ReplicasLoading"
    REPLICAS_WAKING = "ReplicasWaking"
    REPLICA_FAILED = "ReplicaFailed"
    # PodScheduled (ModelDeployment), besides PodScheduled and Unschedulable
    NO_NODE_OFFERS_SLICE = "NoNodeOffersSlice"
    # ModelSourceReady
    MODEL_SOURCE_VALID = "ModelSourceValid"
    MODEL_SOURCE_INVALID = "ModelSourceInvalid"
    MODEL_SOURCE_NOT_FOUND = "ModelSourceNotFound"
    CACHE_TOO_SMALL = "CacheTooSmall"
    # WakeStrategyAvailable
    WAKE_STRATEGY_SUPPORTED = "WakeStrategySupported"
    WAKE_STRATEGY_UNSUPPORTED = "WakeStrategyUnsupported"
    CUDA_CHECKPOINT_MISSING = "CudaCheckpointMissing"


class SandboxPhase(StrEnum):
    """Where a Sandbox is in its life; conditions carry the detail."""

    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    HIBERNATING = "Hibernating"
    HIBERNATED = "Hibernated"
    WAKING = "Waking"
    EXPIRED = "Expired"
    FAILED = "Failed"
    TERMINATING = "Terminating"


class SessionPhase(StrEnum):
    """Where an AgentSession is in its life (mirrors its Sandbox, plus Expired)."""

    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    HIBERNATING = "Hibernating"
    HIBERNATED = "Hibernated"
    WAKING = "Waking"
    EXPIRED = "Expired"
    FAILED = "Failed"
    TERMINATING = "Terminating"


class ModelPhase(StrEnum):
    """Where a ModelDeployment is: serving, scaled to zero, or on the way."""

    PENDING = "Pending"
    LOADING = "Loading"
    READY = "Ready"
    SCALED_TO_ZERO = "ScaledToZero"
    WAKING = "Waking"
    FAILED = "Failed"
