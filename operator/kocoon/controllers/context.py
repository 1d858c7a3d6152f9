"""What every controller shares in one operator process: the API client, configuration,
the checkpoint client, and one lock per object so two triggers never reconcile it at once."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from dataclasses import dataclass, field

from kubernetes_asyncio import client as k8s

from kocoon.builders.context import BuildSettings
from kocoon.config import OperatorConfig, load_config
from kocoon.controllers.checkpoints import Checkpointer

RECONCILE_INTERVAL_ENV = "KOCOON_RECONCILE_INTERVAL"
RELEASE_NAMESPACE_ENV = "KOCOON_NAMESPACE"


def reconcile_interval() -> float:
    """Seconds between periodic reconciles (idle checks, usage metering)."""
    return float(os.environ.get(RECONCILE_INTERVAL_ENV, "10"))


@dataclass
class OperatorContext:
    api: k8s.ApiClient
    config: OperatorConfig
    build: BuildSettings
    checkpointer: Checkpointer
    _locks: defaultdict[tuple[str, str, str], asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )

    def lock(self, kind: str, namespace: str, name: str) -> asyncio.Lock:
        return self._locks[(kind, namespace, name)]

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._locks.pop((kind, namespace, name), None)


def build_settings(config: OperatorConfig) -> BuildSettings:
    return BuildSettings(
        default_runtime_class=config.default_runtime_class,
        default_gpu_runtime_class=config.default_gpu_runtime_class,
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
