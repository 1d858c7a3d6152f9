"""The names the router, the operator, the agent and the docs share. Constants only.

Dependency-free on purpose: the router imports this module and nothing else of the operator,
so a name changed here changes on both sides of every contract at once. The docs
(docs/router.md) describe the same names.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "kocoon.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

# --- activity: one Lease per target, written by the router, read by the operator ---------
LEASE_NAME_PREFIX: Final = "kocoon-activity-"
WAKE_REQUESTED_ANNOTATION: Final = "kocoon.io/wake-requested-at"
LAST_REQUEST_ANNOTATION: Final = "kocoon.io/last-request-at"
IN_FLIGHT_ANNOTATION: Final = "kocoon.io/in-flight"
# Requests the router holds for a target that is not ready (a model waking from zero): part
# of the demand the model autoscaler sizes replicas for.
QUEUED_ANNOTATION: Final = "kocoon.io/queued"
TARGET_KIND_LABEL: Final = "kocoon.io/target-kind"
TARGET_NAME_LABEL: Final = "kocoon.io/target-name"
TARGET_KIND_SANDBOX: Final = "sandbox"
TARGET_KIND_SESSION: Final = "agentsession"
TARGET_KIND_MODEL: Final = "modeldeployment"
# Set on a Sandbox by its AgentSession (value: a checkpoint id): release that checkpoint. Only
# the Sandbox controller acts on it and writes the Sandbox's status.
RELEASE_CHECKPOINT_ANNOTATION: Final = "kocoon.io/release-checkpoint"


def activity_lease_name(target_kind: str, name: str) -> str:
    """`kocoon-activity-<kind>-<name>`: the Lease the router writes a target's activity to."""
    return f"{LEASE_NAME_PREFIX}{target_kind}-{name}"


# --- tokens and keys ---------------------------------------------------------------------
TOKEN_SECRET_LABEL: Final = "kocoon.io/router-token"
TOKEN_KEY: Final = "token"
PREVIOUS_TOKEN_KEY: Final = "previousToken"
# API keys for the OpenAI-compatible endpoint: Secrets labelled `kocoon.io/api-key: "true"`
# with the key under `key`; the optional annotation lists the served model names it may call
# (comma-separated), all models of its namespace when absent.
API_KEY_SECRET_LABEL: Final = "kocoon.io/api-key"
API_KEY_KEY: Final = "key"
API_KEY_MODELS_ANNOTATION: Final = "kocoon.io/models"

# --- ModelDeployment replicas ------------------------------------------------------------
MODEL_LABEL: Final = "kocoon.io/model"
REPLICA_LABEL: Final = "kocoon.io/replica"
ENGINE_CONTAINER: Final = "engine"
# The port every engine container listens on (the builders pass it to the engine).
ENGINE_PORT: Final = 8000

# --- phases with a meaning on the data path ----------------------------------------------
PHASE_READY: Final = "Ready"
PHASE_RUNNING: Final = "Running"
PHASE_FAILED: Final = "Failed"
PHASE_TERMINATING: Final = "Terminating"
PHASE_EXPIRED: Final = "Expired"
PHASE_SCALED_TO_ZERO: Final = "ScaledToZero"
CONDITION_READY: Final = "Ready"

# --- values and status fields the router reads ---------------------------------------------
# The value of the label that selects token Secrets and API-key Secrets.
SECRET_LABEL_VALUE: Final = "true"
# ModelDeployment phases beyond the shared ones above.
PHASE_PENDING: Final = "Pending"
PHASE_LOADING: Final = "Loading"
PHASE_WAKING: Final = "Waking"
# The OpenAI-compatible endpoint's base path on the router.
OPENAI_BASE_PATH: Final = "/v1"
