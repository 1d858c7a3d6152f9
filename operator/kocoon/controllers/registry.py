"""Importing this module registers every controller's handlers with kopf."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from kubernetes_asyncio.client import ApiClient

from kocoon.controllers import context, model, sandbox, session  # noqa: F401  (registers handlers)
from kocoon.controllers.checkpoints import AGENT_SELECTOR, AgentCheckpointer, agent_pod_url
from kocoon.kube.client import list_objects, new_api_client
from kocoon.kube.resources import POD
from kocoon.webhooks.server import WebhookServing
from kocoon.webhooks.server import configure as configure_webhooks

WEBHOOKS_ENV = "KOCOON_WEBHOOKS"


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
    if os.environ.get(WEBHOOKS_ENV) == "1":
        configure_webhooks(settings, WebhookServing.from_env())
    config = context.load()
    api = await new_api_client()
    context.install(
        context.OperatorContext(
            api=api,
            config=config,
            build=context.build_settings(config),
            checkpointer=AgentCheckpointer.from_environment(discover=_agent_discovery(api)),
        )
    )


def _agent_discovery(api: ApiClient) -> Callable[[str], Awaitable[str | None]]:
    """Find the agent DaemonSet's pod on a node (in the operator's namespace)."""
    namespace = os.environ.get(context.RELEASE_NAMESPACE_ENV, "kocoon-system")

    async def discover(node: str) -> str | None:
        pods = await list_objects(api, POD, namespace, label_selector=AGENT_SELECTOR)
        return agent_pod_url(pods, node)

    return discover


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    # kopf runs cleanup once the handlers have stopped: nothing uses the client any more, and
    # closing it lets the process exit without complaints about unclosed connections.
    try:
        api = context.current().api
    except RuntimeError:
        return
    context.install(None)
    await api.close()
