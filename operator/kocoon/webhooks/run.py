"""Serving the admission webhooks on their own: an embedded kopf operator with only the
admission handlers (used by `kocoon operator` through `register`/`configure`, and by tests)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf

from kocoon.config import OperatorConfig
from kocoon.webhooks import handlers
from kocoon.webhooks.handlers import ConfigGetter
from kocoon.webhooks.server import CONFIGURATION_NAME, WebhookServing, configure

log = logging.getLogger("kocoon.webhooks")


def admission_registry(config: OperatorConfig | ConfigGetter) -> kopf.OperatorRegistry:
    """The admission handlers; `config` is the configuration or a function that reads the
    current one (so a test can change it while serving)."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config if callable(config) else lambda: config)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Reads $KUBECONFIG (or the in-cluster service account) at the time of login.
        info: kopf.ConnectionInfo | None = kopf.login_with_kubeconfig(**kwargs)
        return info or kopf.login_with_service_account(**kwargs)

    return registry


async def serve_admission(
    config: OperatorConfig | ConfigGetter,
    serving: WebhookServing,
    *,
    configuration_name: str = CONFIGURATION_NAME,
    stop_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Serve the admission webhooks until `stop_flag` is set."""
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    settings.posting.enabled = False
    configure(settings, serving, configuration_name)
    log.info(
        "serving admission webhooks",
        extra={"addr": serving.addr, "port": serving.port, "configuration": configuration_name},
    )
    await kopf.operator(
        registry=admission_registry(config),
        settings=settings,
        clusterwide=True,
        stop_flag=stop_flag,
    )
