"""The AgentSession controller on the local cluster, with the operator as a real process."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kocoon.devcluster import Cluster
from tests.conftest import OperatorProcess, start_operator
from tests.controllers.helpers import get, new_namespace, wait_for

pytestmark = pytest.mark.integration

TEMPLATE: dict[str, Any] = {
    "template": {"image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]},
    "runtimeClassName": "runc",
    "network": {"exposedPorts": ["http"]},
    "workspace": {"size": "1Gi"},
}
# A ModelDeployment as admission accepts it; only its existence matters here.
MODEL_SPEC: dict[str, Any] = {"model": {"uri": "hf://org/model"}, "engine": {"type": "vllm"}}


def create(cluster: Cluster, namespace: str, name: str, **spec: Any) -> None:
    manifest = {
        "apiVersion": "kocoon.io/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "owner": {"user": "alice@example.com"},
            "sandboxTemplate": TEMPLATE,
            "hibernation": "filesystem",
            **spec,
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def session(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found = get(cluster, "agentsession", namespace, name)
    assert found is not None, f"session {namespace}/{name} is gone"
    return found


def wait_session(
    cluster: Cluster, namespace: str, name: str, phase: str, timeout: float = 40
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = get(cluster, "agentsession", namespace, name)
        if found and found.get("status", {}).get("phase") == phase:
            return found
        return None

    result: dict[str, Any] = wait_for(f"session {name} to be {phase}", probe, timeout)
    return result


def sandbox_phase(cluster: Cluster, namespace: str, name: str) -> str | None:
    found = get(cluster, "sandbox", namespace, name)
    return None if found is None else found.get("status", {}).get("phase")


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"].get("conditions", [])}


def annotations_of(obj: dict[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def gone(cluster: Cluster, kind: str, namespace: str, name: str) -> Callable[[], bool]:
    return lambda: get(cluster, kind, namespace, name) is None


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def annotate(cluster: Cluster, kind: str, namespace: str, name: str, value: str) -> None:
    cluster.kubectl("annotate", kind, name, "-n", namespace, value, "--overwrite")


def secret_value(secret: dict[str, Any], key: str) -> str | None:
    encoded = secret.get("data", {}).get(key)
    return base64.b64decode(encoded).decode() if encoded else None


def events_of(cluster: Cluster, namespace: str, name: str) -> list[str]:
    selector = f"involvedObject.name={name},involvedObject.kind=AgentSession"
    out = cluster.kubectl(
        "get", "events", "-n", namespace, "-o", "json", f"--field-selector={selector}"
    ).stdout
    return [event["reason"] for event in json.loads(out)["items"]]


def expire_in(
    cluster: Cluster, namespace: str, running: dict[str, Any], seconds: int
) -> tuple[int, float]:
    """Give a Running session a maxLifetime ending `seconds` (to `seconds` + 1) from now;
    (the lifetime, when it is due). Set once Running: a session that never ran counts its
    lifetime from creation, and starting may take longer than that on a busy machine."""
    start = datetime.fromisoformat(running["status"]["startTime"].replace("Z", "+00:00"))
    lifetime = int(time.time() - start.timestamp()) + seconds + 1
    name = running["metadata"]["name"]
    patch = json.dumps({"spec": {"maxLifetime": f"{lifetime}s"}})
    cluster.kubectl("patch", "agentsession", name, "-n", namespace, "--type=merge", "-p", patch)
    return lifetime, start.timestamp() + lifetime


def test_a_session_creates_its_sandbox_token_and_route(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "sess")
    create(cluster, namespace, "s")
    running = wait_session(cluster, namespace, "s", "Running")
    status = running["status"]
    assert status["endpoint"] == f"/sessions/{namespace}/s/"
    assert status["sandboxRef"] == {"name": "s"}
    assert status["tokenSecretRef"] == {"name": "s-token", "key": "token"}
    assert status["startTime"]
    ready = conditions(running)["Ready"]
    assert ready["status"] == "True"
    assert f"/sessions/{namespace}/s/" in ready["message"]

    sandbox = get(cluster, "sandbox", namespace, "s")
    assert sandbox is not None
    [owner] = sandbox["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "AgentSession",
        running["metadata"]["uid"],
        True,
    )
    assert sandbox["spec"]["hibernation"] == "filesystem"  # the session's policy
    assert sandbox["status"]["tokenSecretRef"]["name"] == "s-token"  # one token for both
    pod = get(cluster, "pod", namespace, "s")
    assert pod is not None
    assert pod["spec"]["nodeName"].startswith("kwok-")

    secret = get(cluster, "secret", namespace, "s-token")
    assert secret is not None
    assert secret["metadata"]["labels"]["kocoon.io/router-token"] == "true"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "AgentSession"
    token = secret_value(secret, "token")
    assert token is not None
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    lease = get(cluster, "lease", namespace, "kocoon-activity-agentsession-s")
    assert lease is not None
    assert lease["metadata"]["ownerReferences"][0]["uid"] == running["metadata"]["uid"]

    # A template change reaches the Sandbox; the token is not rewritten.
    cluster.kubectl(
        "patch",
        "agentsession",
        "s",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"sandboxTemplate": {"template": {"args": ["sleep", "1d"]}}}}),
    )
    wait_for(
        "the template change on the Sandbox",
        lambda: (
            (get(cluster, "sandbox", namespace, "s") or {})
            .get("spec", {})
            .get("template", {})
            .get("args")
            == ["sleep", "1d"]
        ),
    )
    again = get(cluster, "secret", namespace, "s-token")
    assert again is not None
    assert secret_value(again, "token") == token


def test_an_idle_session_hibernates_and_a_wake_for_the_session_wakes_it(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "sidle")
    create(cluster, namespace, "s", idleTimeout="3s")
    wait_session(cluster, namespace, "s", "Running")
    hibernated = wait_session(cluster, namespace, "s", "Hibernated", timeout=40)
    assert sandbox_phase(cluster, namespace, "s") == "Hibernated"
    assert conditions(hibernated)["Hibernated"]["reason"] == "IdleTimeout"
    assert hibernated["status"]["sandboxRef"] == {"name": "s"}  # the route stays
    assert get(cluster, "pod", namespace, "s") is None
    assert get(cluster, "pvc", namespace, "s-workspace") is not None

    # What the router does for a request to the session: a wake on the session's Lease.
    annotate(
        cluster,
        "lease",
        namespace,
        "kocoon-activity-agentsession-s",
        f"kocoon.io/wake-requested-at={stamp()}",
    )
    woke = wait_session(cluster, namespace, "s", "Running")
    assert woke["status"]["usage"]["wakeCount"] == 1
    wait_for(
        "the session's wake request to be cleared",
        lambda: (
            "kocoon.io/wake-requested-at"
            not in annotations_of(
                get(cluster, "lease", namespace, "kocoon-activity-agentsession-s")
            )
        ),
    )
    assert "SandboxWaking" in events_of(cluster, namespace, "s")

    # Activity on the session's Lease reaches the Sandbox's Lease (its idle clock).
    last = stamp()
    annotate(
        cluster,
        "lease",
        namespace,
        "kocoon-activity-agentsession-s",
        f"kocoon.io/last-request-at={last}",
    )
    wait_for(
        "the session's activity on the Sandbox's Lease",
        lambda: (
            annotations_of(get(cluster, "lease", namespace, "kocoon-activity-sandbox-s")).get(
                "kocoon.io/last-request-at"
            )
            == last
        ),
    )


def test_token_rotation_keeps_the_old_token_as_previous(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "srot")
    create(cluster, namespace, "s")
    wait_session(cluster, namespace, "s", "Running")
    before = get(cluster, "secret", namespace, "s-token")
    assert before is not None
    old = secret_value(before, "token")

    annotate(cluster, "agentsession", namespace, "s", "kocoon.io/rotate-token=first")

    def rotated() -> dict[str, Any] | None:
        secret = get(cluster, "secret", namespace, "s-token")
        return secret if secret and secret_value(secret, "previousToken") == old else None

    secret = wait_for("the token to rotate", rotated)
    new = secret_value(secret, "token")
    assert new is not None
    assert new != old
    found = wait_for(
        "the rotation in status",
        lambda: conditions(session(cluster, namespace, "s")).get("PreviousTokenAccepted"),
    )
    assert found["status"] == "True"
    assert found["reason"] == "TokenRotated"
    assert "TokenRotated" in events_of(cluster, namespace, "s")
    # The same request is carried out once.
    time.sleep(3)  # a few reconciles (one a second in tests)
    after = get(cluster, "secret", namespace, "s-token")
    assert after is not None
    assert secret_value(after, "token") == new


def test_max_lifetime_expires_the_session_and_usage_survives_its_sandbox(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "sexp")
    create(cluster, namespace, "s")
    expire_in(cluster, namespace, wait_session(cluster, namespace, "s", "Running", 60), 6)
    expired = wait_session(cluster, namespace, "s", "Expired", timeout=40)
    assert conditions(expired)["Expired"]["reason"] == "MaxLifetimeReached"
    wait_for("the Sandbox to go", lambda: get(cluster, "sandbox", namespace, "s") is None)
    gone = wait_for(
        "the sandboxRef to be cleared",
        lambda: (s := session(cluster, namespace, "s")) and "sandboxRef" not in s["status"] and s,
    )
    usage = gone["status"]["usage"]
    assert usage.get("activeSeconds", 0) + usage.get("idleSeconds", 0) >= 3
    assert get(cluster, "secret", namespace, "s-token") is not None  # the route's token stays
    assert "MaxLifetimeReached" in events_of(cluster, namespace, "s")


def test_an_expired_session_keeps_its_state_for_retention(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "sret")
    create(cluster, namespace, "s", retention="8s")
    expire_in(cluster, namespace, wait_session(cluster, namespace, "s", "Running", 60), 4)
    wait_session(cluster, namespace, "s", "Expired", timeout=40)
    wait_for(
        "the Sandbox to hibernate", lambda: sandbox_phase(cluster, namespace, "s") == "Hibernated"
    )
    sandbox = get(cluster, "sandbox", namespace, "s")
    assert sandbox is not None
    assert sandbox["spec"]["operatingMode"] == "Hibernated"
    assert get(cluster, "pvc", namespace, "s-workspace") is not None
    wait_for(
        "the Sandbox to go after retention",
        lambda: get(cluster, "sandbox", namespace, "s") is None,
        timeout=30,
    )


def test_deleting_the_session_releases_everything(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "sdel")
    create(cluster, namespace, "s")
    wait_session(cluster, namespace, "s", "Running")
    cluster.kubectl("delete", "agentsession", "s", "-n", namespace, "--wait=true")
    for kind, name in [
        ("sandbox", "s"),
        ("secret", "s-token"),
        ("lease", "kocoon-activity-agentsession-s"),
        ("pod", "s"),
    ]:
        wait_for(f"{kind} {name} to go", gone(cluster, kind, namespace, name))


def test_retention_releases_the_checkpoint_of_a_long_hibernated_session(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "sckp")
    create(cluster, namespace, "s", operatingMode="Hibernated", retention="3s")
    wait_session(cluster, namespace, "s", "Hibernated")
    # No node agent serves kwok nodes, so no real checkpoint exists: record one as the agent
    # would have, and let retention release it (releasing on a node without an agent is a
    # no-op by design, nothing there can leak).
    checkpoint = {"id": "s-0123456789ab", "node": "kwok-cpu-0", "driver": "criu-runc"}
    cluster.kubectl(
        "patch",
        "sandbox",
        "s",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"checkpoint": checkpoint}}),
    )

    # The session asks, with an annotation on the Sandbox it applies; the Sandbox controller
    # (the only writer of the Sandbox's status) releases it.
    def released() -> dict[str, Any] | None:
        sandbox = get(cluster, "sandbox", namespace, "s")
        if sandbox is None or sandbox["status"].get("checkpoint"):
            return None
        return conditions(sandbox).get("CheckpointAvailable")

    condition = wait_for("the checkpoint to be released", released, timeout=20)
    assert condition["status"] == "False"
    assert sandbox_phase(cluster, namespace, "s") == "Hibernated"
    assert "HibernatedStateReleased" in events_of(cluster, namespace, "s")
    # Done: the session withdraws its request.
    wait_for(
        "the release request to be withdrawn",
        lambda: (
            "kocoon.io/release-checkpoint"
            not in annotations_of(get(cluster, "sandbox", namespace, "s"))
        ),
        timeout=10,
    )


def test_a_hand_edit_of_the_sandbox_is_reverted_and_a_deleted_child_recreated(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "sconv")
    create(cluster, namespace, "s", idleTimeout="10m")
    wait_session(cluster, namespace, "s", "Running")
    cluster.kubectl(
        "patch",
        "sandbox",
        "s",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(
            {
                "spec": {
                    "idleTimeout": "5s",
                    "operatingMode": "Hibernated",
                    "shutdownTime": "2030-01-01T00:00:00Z",  # the session owns expiry
                }
            }
        ),
    )

    def reverted() -> bool:
        spec = (get(cluster, "sandbox", namespace, "s") or {}).get("spec", {})
        return (
            spec.get("idleTimeout") == "10m0s"
            and spec.get("operatingMode") == "Auto"
            and "shutdownTime" not in spec
        )

    wait_for("the session to revert the edit of its Sandbox", reverted, timeout=10)

    secret = get(cluster, "secret", namespace, "s-token")
    assert secret is not None
    old = secret_value(secret, "token")
    cluster.kubectl("delete", "secret", "s-token", "-n", namespace)

    # Recreated, and the session's (its Sandbox may have recreated it first: then the session
    # claims it, keeping that token).
    def recreated() -> dict[str, Any] | None:
        found = get(cluster, "secret", namespace, "s-token")
        if found is None or found["metadata"]["uid"] == secret["metadata"]["uid"]:
            return None
        owners = [ref["kind"] for ref in found["metadata"].get("ownerReferences") or []]
        return found if owners == ["AgentSession"] else None

    again = wait_for("the token Secret to be recreated", recreated, timeout=10)
    assert secret_value(again, "token") != old
    assert again["metadata"]["labels"]["kocoon.io/session"] == "s"

    cluster.kubectl("delete", "lease", "kocoon-activity-agentsession-s", "-n", namespace)
    wait_for(
        "the session's Lease to be recreated",
        lambda: get(cluster, "lease", namespace, "kocoon-activity-agentsession-s"),
        timeout=10,
    )


def test_max_lifetime_expires_within_a_second_of_being_due(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "sdue")
    create(cluster, namespace, "s")
    running = wait_session(cluster, namespace, "s", "Running", timeout=60)
    lifetime, due = expire_in(cluster, namespace, running, 3)
    # Watched as closely as kubectl allows: it expired before the look that first saw it
    # returned, and within the second its Expired condition's transition time names.
    deadline = time.time() + 20
    while True:
        found = session(cluster, namespace, "s")
        seen = time.time()
        if found["status"].get("phase") == "Expired":
            break
        assert seen < deadline, "the session did not expire"
        time.sleep(0.05)
    at = conditions(found)["Expired"]["lastTransitionTime"]
    stamp = datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
    assert stamp + 1 > due  # not before it was due
    latest = min(seen, stamp + 1)
    print(f"maxLifetime {lifetime} s: expired at most {latest - due:.2f} s after it was due")
    assert latest - due <= 1.0, f"expired up to {latest - due:.2f} s after it was due"


def test_a_model_the_session_names_must_exist(cluster: Cluster, operator: OperatorProcess) -> None:
    namespace = new_namespace(cluster, "smod")
    create(cluster, namespace, "s", models=[{"name": "chat-model"}])

    def condition() -> dict[str, Any] | None:
        found = get(cluster, "agentsession", namespace, "s")
        return conditions(found).get("ModelsAvailable") if found and "status" in found else None

    missing = wait_for("the ModelsAvailable condition", condition, timeout=20)
    assert (missing["status"], missing["reason"]) == ("False", "ModelNotFound")
    assert "spec.models[0]" in missing["message"]
    assert "chat-model" in missing["message"]

    model = {
        "apiVersion": "kocoon.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chat-model", "namespace": namespace},
        "spec": MODEL_SPEC,
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(model))
    found = wait_for(
        "the model to be found",
        lambda: (c := condition()) and c["status"] == "True" and c,
        timeout=20,
    )
    assert found["reason"] == "ModelsFound"


def test_a_sandbox_the_quota_refuses_is_a_condition_and_is_retried(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    namespace = new_namespace(cluster, "squota")
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-sandboxes", "namespace": namespace},
        "spec": {"hard": {"count/sandboxes.kocoon.io": "0"}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(quota))
    wait_for(
        "the quota to be counted",
        lambda: (
            (get(cluster, "resourcequota", namespace, "no-sandboxes") or {})
            .get("status", {})
            .get("hard")
        ),
    )
    create(cluster, namespace, "s")

    def refused() -> dict[str, Any] | None:
        found = get(cluster, "agentsession", namespace, "s")
        if not found or "status" not in found:
            return None
        children = conditions(found).get("ChildrenReady")
        return found if children and children["status"] == "False" else None

    found = wait_for("the refusal in the session's status", refused, timeout=20)
    message = conditions(found)["ChildrenReady"]["message"]
    assert "Sandbox s" in message
    assert "quota" in message
    assert found["status"]["tokenSecretRef"] == {"name": "s-token", "key": "token"}
    assert "ChildApplyFailed" in events_of(cluster, namespace, "s")

    cluster.kubectl("delete", "resourcequota", "no-sandboxes", "-n", namespace)
    running = wait_session(cluster, namespace, "s", "Running", timeout=40)
    assert conditions(running)["ChildrenReady"]["status"] == "True"


def test_an_operator_killed_and_restarted_changes_nothing(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    """The new operator's first reconciles may run before its watches listed every child:
    the session must not flap to Pending, recreate its token or touch its Sandbox."""
    namespace = new_namespace(cluster, "srst")
    create(cluster, namespace, "s", models=[{"name": "absent"}])
    wait_session(cluster, namespace, "s", "Running")
    secret = get(cluster, "secret", namespace, "s-token")
    assert secret is not None
    sandbox = get(cluster, "sandbox", namespace, "s")
    assert sandbox is not None

    operator.process.kill()
    operator.process.wait()
    fresh = start_operator(cluster, tmp_path)
    operator.process, operator.log = fresh.process, fresh.log  # the fixture stops this one
    time.sleep(8)  # started, listed, reconciled
    annotate(cluster, "agentsession", namespace, "s", "kocoon.io/rotate-token=after-restart")
    wait_for(
        "the restarted operator to rotate the token",
        lambda: (
            (found := get(cluster, "secret", namespace, "s-token"))
            and secret_value(found, "previousToken") == secret_value(secret, "token")
        ),
        timeout=20,
    )
    after = session(cluster, namespace, "s")
    assert after["status"]["phase"] == "Running"
    reasons = events_of(cluster, namespace, "s")
    assert "SandboxCreating" not in reasons
    assert "SandboxReplacing" not in reasons
    again = get(cluster, "secret", namespace, "s-token")
    assert again is not None
    assert again["metadata"]["uid"] == secret["metadata"]["uid"]
    box = get(cluster, "sandbox", namespace, "s")
    assert box is not None
    assert box["metadata"]["uid"] == sandbox["metadata"]["uid"]
    assert box["metadata"]["generation"] == sandbox["metadata"]["generation"]
    models = conditions(after)["ModelsAvailable"]
    assert models["reason"] == "ModelNotFound"
