"""What the admission handlers decide around the rules: an UPDATE is judged only on what it
changes, and a refusal answers with the rules' own messages, however logging is set up."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest

from kocoon.api.sandbox import SandboxSpec
from kocoon.config import NamespaceLimits, OperatorConfig
from kocoon.webhooks import admission, handlers
from kocoon.webhooks.admission import ClusterFacts

pytestmark = pytest.mark.unit

BEFORE = OperatorConfig()  # runc offered
# The configuration after a change: runc no longer offered, workspaces limited to 1Gi.
AFTER = OperatorConfig(
    runtime_classes=["kata", "kata-qemu-nvidia-gpu"],
    namespace_limits={"team-a": NamespaceLimits(max_workspace_size="1Gi")},
)
UPDATE = ClusterFacts(namespace="team-a", creating=False)
CREATE = ClusterFacts(namespace="team-a", creating=True)
SPEC: dict[str, Any] = {
    "template": {"image": "busybox"},
    "runtimeClassName": "runc",
    "workspace": {"size": "2Gi"},
    "hibernation": "memory",
}


def judge(
    spec: dict[str, Any],
    old_spec: dict[str, Any] | None,
    config: OperatorConfig = AFTER,
    facts: ClusterFacts = UPDATE,
    deleting: bool = False,
) -> list[str]:
    old = {"spec": old_spec} if old_spec is not None else None
    metadata = {"deletionTimestamp": "2026-12-04T07:00:00Z"} if deleting else {}
    body = {"metadata": metadata, "spec": spec}
    return handlers._problems(
        SandboxSpec, admission.validate_sandbox, "Sandbox", spec, old, body, config, facts
    )


def test_the_object_was_fine_when_it_was_admitted() -> None:
    assert judge(SPEC, None, BEFORE, CREATE) == []
    fields = sorted(problem.split(":")[0] for problem in judge(SPEC, None, AFTER, CREATE))
    assert fields == ["spec.runtimeClassName", "spec.workspace.size"]


def test_an_update_that_leaves_the_spec_alone_is_never_refused() -> None:
    # finalizer removal, labels, annotations, an unchanged apply: the spec is as it was
    assert judge(SPEC, SPEC) == []


def test_an_update_during_deletion_is_never_refused() -> None:
    changed = {**SPEC, "template": {"image": "other"}}
    assert judge(changed, SPEC, deleting=True) == []


def test_an_update_is_judged_on_what_it_changes() -> None:
    image = {**SPEC, "template": {"image": "busybox:2"}}
    assert judge(image, SPEC) == []
    grown = {**SPEC, "workspace": {"size": "3Gi"}}
    assert [p.split(":")[0] for p in judge(grown, SPEC)] == ["spec.workspace.size"]
    root = {**SPEC, "template": {"image": "busybox", "securityContext": {"runAsUser": 0}}}
    assert [p.split(":")[0] for p in judge(root, SPEC)] == [
        "spec.template.securityContext.runAsUser"
    ]


def test_an_update_of_an_old_object_that_no_longer_parses_is_judged_whole() -> None:
    old = {**SPEC, "retired": True}
    assert len(judge({**SPEC, "template": {"image": "b"}}, old)) == 2


def test_a_refusal_answers_with_the_rules_messages_with_logging_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kocoon.webhooks")
    problems = ["spec.runtimeClassName: not offered", "spec.gpu.mode: not offered"]
    with pytest.raises(kopf.AdmissionError) as raised:
        handlers._reject(problems, "Sandbox", "team-a", "s1")
    assert str(raised.value) == "; ".join(problems)
    assert raised.value.code == 422
    record = next(r for r in caplog.records if r.getMessage() == "admission denied")
    assert record.__dict__["object"] == "s1"
    assert record.__dict__["problems"] == problems


def test_defaults_on_update_keep_what_was_decided_at_create() -> None:
    created = {"template": {"image": "x"}, "runtimeClassName": "runc", "hibernation": "memory"}
    replaced = {"template": {"image": "y"}}
    patch = admission.sandbox_spec_defaults(replaced, created, AFTER)
    assert (patch["runtimeClassName"], patch["hibernation"]) == ("runc", "memory")
    assert handlers._leave_alone(created, created, {"metadata": {}})
    assert handlers._leave_alone(replaced, created, {"metadata": {"deletionTimestamp": "t"}})
    assert not handlers._leave_alone(replaced, created, {"metadata": {}})
    assert not handlers._leave_alone(created, None, {"metadata": {}})
