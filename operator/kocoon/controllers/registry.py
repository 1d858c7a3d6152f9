"""Importing this module registers every controller's handlers with kopf."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from kubernetes_asyncio.client import ApiClient

from kocoon.builders import names, token
from kocoon.controllers import context, model, sandbox, session  # noqa: F401  (registers handlers)
from kocoon.controllers.checkpoints import AGENT_SELECTOR, AgentCheckpointer, agent_pod_url
from kocoon.kube.client import list_objects, new_api_client
from kocoon.kube.resources import (
    GROUP,
    LEASE,
    NETWORK_POLICY,
    POD,
    PVC,
    SECRET,
    SERVICE,
    VERSION,
)
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
    # Only token Secrets are watched (into the Secret store), selected by the API server.
    settings.watching.label_selectors["v1", "secrets"] = token.TOKEN_LABEL
    if os.environ.get(WEBHOOKS_ENV) == "1":
        configure_webhooks(settings, WebhookServing.from_env())
    config = context.load()
    api = await new_api_client()
    ctx = context.OperatorContext(
        api=api,
        config=config,
        build=context.build_settings(config),
        checkpointer=AgentCheckpointer.from_environment(discover=_agent_discovery(api)),
    )
    ctx.reconcilers[sandbox.KIND] = sandbox.make_reconciler(ctx)
    context.install(ctx)


# --- Sandbox watches: each feeds a store and wakes the Sandbox's worker -------------------


@kopf.on.event(GROUP, VERSION, "sandboxes")
async def sandbox_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    sandbox.on_sandbox_event(context.current(), type or "", dict(body))


@kopf.on.event("v1", "pods", labels={names.SANDBOX_LABEL: kopf.PRESENT})
async def sandbox_pod_event(
    type: str | None, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> None:
    sandbox.on_child_event(
        context.current(), POD.kind, type or "", dict(body), labels.get(names.SANDBOX_LABEL)
    )


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={names.TARGET_KIND_LABEL: "sandbox"})
async def sandbox_lease_event(
    type: str | None, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> None:
    sandbox.on_child_event(
        context.current(), LEASE.kind, type or "", dict(body), labels.get(names.TARGET_NAME_LABEL)
    )


async def _child_event(kind: str, type: str | None, body: kopf.Body, labels: kopf.Labels) -> None:
    # Only a deletion wakes the Sandbox: the other changes are its own applies.
    owner = labels.get(names.SANDBOX_LABEL) if type == "DELETED" else None
    sandbox.on_child_event(context.current(), kind, type or "", dict(body), owner)


@kopf.on.event("v1", "services", labels={names.SANDBOX_LABEL: kopf.PRESENT})
async def sandbox_service_event(
    type: str | None, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> None:
    await _child_event(SERVICE.kind, type, body, labels)


@kopf.on.event(
    "networking.k8s.io", "v1", "networkpolicies", labels={names.SANDBOX_LABEL: kopf.PRESENT}
)
async def sandbox_network_policy_event(
    type: str | None, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> None:
    await _child_event(NETWORK_POLICY.kind, type, body, labels)


@kopf.on.event("v1", "persistentvolumeclaims", labels={names.SANDBOX_LABEL: kopf.PRESENT})
async def sandbox_claim_event(
    type: str | None, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> None:
    await _child_event(PVC.kind, type, body, labels)


@kopf.on.event("v1", "secrets", labels={token.TOKEN_LABEL: "true"})
async def token_secret_event(
    type: str | None, body: kopf.Body, labels: kopf.Labels, **_: Any
) -> None:
    await _child_event(SECRET.kind, type, body, labels)


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
        ctx = context.current()
    except RuntimeError:
        return
    await ctx.close()
    context.install(None)
    await ctx.api.close()
