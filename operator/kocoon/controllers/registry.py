"""Importing this module registers every controller's handlers with kopf."""

from __future__ import annotations

from typing import Any

import kopf

from kocoon.controllers import context, sandbox  # noqa: F401  (registers handlers)
from kocoon.controllers.checkpoints import AgentCheckpointer
from kocoon.kube.client import new_api_client


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: the kubeconfig from --kubeconfig/$KUBECONFIG."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "kocoon.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kocoon.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kocoon.io", key="last-handled-configuration"
    )
    settings.posting.level = 30  # kopf's own per-handler events only for warnings and errors
    settings.watching.server_timeout = 300
    config = context.load()
    api = await new_api_client()
    context.install(
        context.OperatorContext(
            api=api,
            config=config,
            build=context.build_settings(config),
            checkpointer=AgentCheckpointer.from_environment(),
        )
    )


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    # The API client is left open: handlers that are still finishing may use it, and the
    # process is about to exit and free it anyway.
    context.install(None)
