"""What every controller shares in one operator process: the API client, configuration,
the checkpoint client, the watch-fed stores (one per kind) and the reconcilers (one per
controller)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kubernetes_asyncio import client as k8s

from kocoon.builders.context import BuildSettings
from kocoon.config import OperatorConfig, load_config
from kocoon.controllers.checkpoints import Checkpointer
from kocoon.controllers.reconciler import DEFAULT_RESYNC, Reconciler, Store

RESYNC_ENV = "KOCOON_RESYNC_SECONDS"
RELEASE_NAMESPACE_ENV = "KOCOON_NAMESPACE"


def resync_seconds() -> float:
    """How long a worker sleeps when nothing is due and nothing happens (default 5 min)."""
    return float(os.environ.get(RESYNC_ENV, str(DEFAULT_RESYNC)))


@dataclass
class OperatorContext:
    api: k8s.ApiClient
    config: OperatorConfig
    build: BuildSettings
    checkpointer: Checkpointer
    # One watch-fed store per kind (by Kind.kind; children by their own kind, e.g. "Pod").
    stores: dict[str, Store] = field(default_factory=dict)
    # One reconciler per controller (by the Kind.kind it reconciles).
    reconcilers: dict[str, Reconciler] = field(default_factory=dict)

    def store(self, kind: str) -> Store:
        """The store of `kind`, created empty on first use."""
        found = self.stores.get(kind)
        if found is None:
            found = self.stores[kind] = Store(kind)
        return found

    async def close(self) -> None:
        """Stop every reconciler's workers."""
        for reconciler in self.reconcilers.values():
            await reconciler.close()


def build_settings(config: OperatorConfig) -> BuildSettings:
    return BuildSettings(
        default_runtime_class=config.default_runtime_class,
        default_gpu_runtime_class=config.default_gpu_runtime_class,
        pod_hardening=config.pod_hardening,
        router_namespace=os.environ.get(RELEASE_NAMESPACE_ENV, "kocoon-system"),
        restore_hold_command=tuple(config.restore_hold_command),
    )


_current: OperatorContext | None = None


def current() -> OperatorContext:
    if _current is None:
        raise RuntimeError("the operator context is not set up (kopf startup has not run)")
    return _current


def install(context: OperatorContext | None) -> None:
    global _current
    _current = context


def load() -> OperatorConfig:
    return load_config()
