"""The operator's Prometheus metrics, all in one place, with low-cardinality labels."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TRANSITIONS = Counter(
    "kocoon_sandbox_transitions_total", "Sandbox phase transitions, by the phase entered", ["phase"]
)
CHECKPOINT_SECONDS = Histogram(
    "kocoon_sandbox_checkpoint_seconds",
    "Time to checkpoint a sandbox's memory",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
CHECKPOINT_BYTES = Histogram(
    "kocoon_sandbox_checkpoint_bytes",
    "Size of memory checkpoints",
    buckets=(1e6, 1e7, 1e8, 5e8, 1e9, 4e9, 1.6e10),
)
CHECKPOINT_FAILURES = Counter(
    "kocoon_sandbox_checkpoint_failures_total", "Memory checkpoints not taken, by cause", ["kind"]
)
RESTORE_FAILURES = Counter(
    "kocoon_sandbox_restore_failures_total", "Restores that failed and woke the sandbox cold"
)
WAKE_SECONDS = Histogram(
    "kocoon_sandbox_wake_seconds",
    "From the wake decision to Ready",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 60),
)
MODEL_TRANSITIONS = Counter(
    "kocoon_model_transitions_total",
    "ModelDeployment phase transitions, by the phase entered",
    ["phase"],
)
MODEL_WAKE_SECONDS = Histogram(
    "kocoon_model_wake_seconds",
    "From Waking to the first ready replica, for wakes from zero",
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 60, 120, 300),
)
