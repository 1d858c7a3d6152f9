"""Chaos on the real node: three AgentSessions hibernate with their memory and wake, cycle after
cycle, while the operator, the node agent and the router are killed with SIGKILL at random
moments (a seeded RNG; the seed is printed) and started again.

Afterwards nothing is lost or left over:
- every session answers through the router, with its memory (the counter continues with the
  same start-up token) or, where a kill took the memory, cold and with its Sandbox's status
  saying why (`CheckpointFailed` at hibernation, or `WokeCold` at the wake); memory is never
  stale (a count that goes back would mean an old checkpoint was restored);
- never two pods for one Sandbox at once (a watch on the pods for the whole run);
- no archive in the agent's store beyond the checkpoints the Sandboxes' status records, and no
  restored container of a pod that is gone;
- after the sessions are deleted: no key (Secret or key file), no archive, no restored container.

KOCOON_CHAOS_CYCLES (default 20, about 3 minutes on a 2-core machine with the cluster's
start) sets the hibernate/wake cycles of each session, KOCOON_CHAOS_SEED the seed.
"""

from __future__ import annotations

import base64
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from sandboxkit import (
    IDLE_TIMEOUT_SECONDS,
    ROOT_IS_ENOUGH,
    Stack,
    kill_component,
    restart_agent,
    restart_router,
    restored_containers,
    stored_checkpoints,
    wait_for,
)
from tests.conftest import start_operator

from kocoon import contract
from kocoon.agent.keys import COMPONENT_CHECKPOINT_KEY, LABEL_COMPONENT
from kocoon.agent.store import PARTIAL_PREFIX
from kocoon.builders.names import SANDBOX_LABEL
from kocoon.devcluster import processes, realnode

pytestmark = pytest.mark.node

SESSIONS = ("chaos-a", "chaos-b", "chaos-c")
CYCLES = int(os.environ.get("KOCOON_CHAOS_CYCLES", "20"))
SEED = int(os.environ.get("KOCOON_CHAOS_SEED", str(time.time_ns() % 10**6)))
COMPONENTS = ("operator", "agent", "router")
# Seconds between kills, and how long a killed process stays down before it is started again.
KILL_EVERY = (3.0, 9.0)
DOWN_FOR = (0.0, 2.0)
# What a Sandbox's CheckpointAvailable condition says when its memory could not be kept.
COLD_REASONS = {"CheckpointFailed", "WokeCold", "HibernatedStateReleased"}
ANSWER_WITHIN = 180.0


def session_manifest(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION,
        "kind": "AgentSession",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "owner": {"user": "chaos@example.com"},
            "sandboxTemplate": {
                "template": realnode.counter_sandbox_template(as_root=not ROOT_IS_ENOUGH),
                "runtimeClassName": "runc",
                "workspace": {"size": "64Mi", "mountPath": "/workspace"},
            },
            "idleTimeout": f"{IDLE_TIMEOUT_SECONDS}s",
            "hibernation": "memory",
        },
    }


@dataclass
class Snapshot:
    """Sessions and Sandboxes of the namespace as one list call each returned them."""

    taken: float  # monotonic time the calls began
    sessions: dict[str, dict[str, Any]]
    sandboxes: dict[str, dict[str, Any]]

    def phase(self, name: str) -> str | None:
        phase: str | None = self.sessions.get(name, {}).get("status", {}).get("phase")
        return phase

    def sandbox_status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.sandboxes.get(name, {}).get("status", {})
        return status


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next((c for c in status.get("conditions", []) if c["type"] == kind), {})
    return found


@dataclass
class Tally:
    cycles: int = 0
    kept: int = 0
    cold: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    last: dict[str, Any] | None = None


class Chaos:
    """The run's shared state: a poller of sessions and Sandboxes, a watch on the pods, the
    killer, and one driver per session."""

    def __init__(self, running: Stack, tmp_path: Path) -> None:
        self.running = running
        self.tmp_path = tmp_path
        self.namespace = running.namespace
        api = kubernetes.config.new_client_from_config(config_file=str(running.cluster.kubeconfig))
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.stop = threading.Event()  # the poller and the pod watch
        self.calm = threading.Event()  # no more kills
        self.rng = random.Random(SEED)
        self.kills: Counter[str] = Counter()
        self.kill_log: list[str] = []
        self.kill_errors: list[str] = []
        self.duplicates: list[str] = []
        self.pod_events = 0
        self.lock = threading.Lock()
        self.snapshot = Snapshot(0.0, {}, {})
        self.tallies = {name: Tally() for name in SESSIONS}
        self.tokens: dict[str, str] = {}
        self.operators_killed: list[str] = []

    # --- watching --------------------------------------------------------------------------

    def _list(self, plural: str) -> dict[str, dict[str, Any]]:
        found = self.custom.list_namespaced_custom_object(
            contract.GROUP, contract.VERSION, self.namespace, plural, _request_timeout=10
        )
        return {item["metadata"]["name"]: item for item in found["items"]}

    def poll(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                snapshot = Snapshot(began, self._list("agentsessions"), self._list("sandboxes"))
            except Exception:  # the API server is busy: the next poll will do
                time.sleep(0.5)
                continue
            with self.lock:
                self.snapshot = snapshot
            time.sleep(0.4)

    def fresh(self, after: float, timeout: float = 30) -> Snapshot:
        """A snapshot whose calls began after `after` (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                snapshot = self.snapshot
            if snapshot.taken > after:
                return snapshot
            time.sleep(0.1)
        raise AssertionError("the poller stopped")

    def watch_pods(self) -> None:
        """Every pod of every Sandbox, by UID, from ADDED to DELETED: two at once for one
        Sandbox is a duplicate."""
        while not self.stop.is_set():
            listed = self.core.list_namespaced_pod(self.namespace, label_selector=SANDBOX_LABEL)
            live = {
                pod.metadata.uid: (pod.metadata.labels[SANDBOX_LABEL], pod.metadata.name)
                for pod in listed.items
            }
            self._check_duplicates(live)
            watch = kubernetes.watch.Watch()
            try:
                for event in watch.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=SANDBOX_LABEL,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=5,
                ):
                    pod = event["object"]
                    self.pod_events += 1
                    if event["type"] == "DELETED":
                        live.pop(pod.metadata.uid, None)
                    else:
                        live[pod.metadata.uid] = (
                            pod.metadata.labels[SANDBOX_LABEL],
                            pod.metadata.name,
                        )
                    self._check_duplicates(live)
                    if self.stop.is_set():
                        break
            except Exception:  # an expired resourceVersion or a dropped stream: list again
                time.sleep(0.2)
            finally:
                watch.stop()

    def _check_duplicates(self, live: dict[str, tuple[str, str]]) -> None:
        by_sandbox: dict[str, list[str]] = {}
        for uid, (sandbox, name) in live.items():
            by_sandbox.setdefault(sandbox, []).append(f"{name}/{uid}")
        for sandbox, pods in by_sandbox.items():
            if len(pods) > 1:
                self.duplicates.append(f"{sandbox}: {sorted(pods)}")

    # --- killing ---------------------------------------------------------------------------

    def phases(self) -> str:
        with self.lock:
            snapshot = self.snapshot
        return " ".join(f"{name}={snapshot.phase(name)}" for name in SESSIONS)

    def kill(self, component: str) -> None:
        cluster = self.running.cluster
        if component == "operator":
            self.running.operator.process.kill()
            self.running.operator.process.wait()
            self.operators_killed.append(self.running.operator.output())
        else:
            kill_component(cluster, f"kocoon-{component}")
        self.kills[component] += 1
        self.kill_log.append(f"{time.strftime('%H:%M:%S')} kill -9 {component}: {self.phases()}")
        print(self.kill_log[-1], flush=True)
        time.sleep(self.rng.uniform(*DOWN_FOR))
        if component == "operator":
            self.running.operator = start_operator(
                cluster, self.tmp_path, env=self.running.operator_env
            )
        elif component == "agent":
            restart_agent(cluster, self.running.operator_env)
        else:
            restart_router(cluster)

    def killer(self) -> None:
        order: list[str] = []
        while not self.calm.wait(self.rng.uniform(*KILL_EVERY)):
            if not order:
                order = list(COMPONENTS)
                self.rng.shuffle(order)
            component = order.pop()
            # Half the kills wait for a session to be mid-checkpoint or mid-restore.
            if self.rng.random() < 0.5:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not self.calm.is_set():
                    if any(
                        self.snapshot.phase(name) in ("Hibernating", "Waking") for name in SESSIONS
                    ):
                        break
                    time.sleep(0.1)
                time.sleep(self.rng.uniform(0, 0.5))
            if self.calm.is_set():
                return
            try:
                self.kill(component)
            except Exception as error:
                self.kill_errors.append(f"{component}: {type(error).__name__}: {error}")
                return

    # --- one session -----------------------------------------------------------------------

    def url(self, name: str) -> str:
        return f"{self.running.router}/sessions/{self.namespace}/{name}/"

    def ask(self, name: str) -> dict[str, Any] | None:
        """An answer through the router, asking again while a killed process is down."""
        deadline = time.monotonic() + ANSWER_WITHIN
        call = urllib.request.Request(
            self.url(name), headers={"Authorization": f"Bearer {self.tokens[name]}"}
        )
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(call, timeout=60) as response:
                    body: dict[str, Any] = json.loads(response.read())
                    return body
            except urllib.error.HTTPError as error:
                if error.code < 500:
                    raise
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        return None

    def judge(self, name: str, answer: dict[str, Any], hibernated: dict[str, Any]) -> None:
        """Memory kept, or cold with a reason in the Sandbox's status; never stale."""
        tally = self.tallies[name]
        before = tally.last
        assert before is not None
        tally.last = answer
        if answer["token"] == before["token"]:
            if answer["count"] > before["count"]:
                tally.kept += 1
            else:
                tally.problems.append(f"stale memory: {before} then {answer}")
            return
        # Cold: either no checkpoint was taken (the status said why at hibernation), or the
        # restore failed (the status says WokeCold once the wake is recorded).
        said = condition(hibernated, "CheckpointAvailable")
        if "checkpoint" not in hibernated and said.get("reason") in COLD_REASONS:
            tally.cold.append(f"{said['reason']}: {said.get('message', '')[:160]}")
            return
        answered = time.monotonic()
        deadline = answered + 20
        while time.monotonic() < deadline:
            now = condition(self.fresh(answered).sandbox_status(name), "CheckpointAvailable")
            if now.get("reason") in COLD_REASONS:
                tally.cold.append(f"{now['reason']}: {now.get('message', '')[:160]}")
                return
            time.sleep(0.3)
        tally.problems.append(
            f"woke cold without a reason: hibernated with {json.dumps(hibernated)[:600]}, "
            f"now {json.dumps(self.snapshot.sandbox_status(name))[:600]}"
        )

    def drive(self, name: str, cycles: int) -> None:
        tally = self.tallies[name]
        try:
            for _ in range(cycles):
                since = time.monotonic()
                hibernated = self.wait_hibernated(name, since)
                if hibernated is None:
                    tally.problems.append(f"not Hibernated within 120 s: {self.phases()}")
                    return
                answer = self.ask(name)
                if answer is None:
                    tally.problems.append(f"no answer within {ANSWER_WITHIN:.0f} s")
                    return
                answered = time.monotonic()
                self.judge(name, answer, hibernated)
                tally.cycles += 1
                # The session's status catches up with the wake before the next cycle waits
                # for it to hibernate again (a restarted operator may lag behind the answer).
                if not self.wait_phase(name, answered, lambda phase: phase != "Hibernated"):
                    tally.problems.append(f"answered but still Hibernated: {self.phases()}")
                    return
                print(
                    f"{time.strftime('%H:%M:%S')} {name} cycle {tally.cycles}: count "
                    f"{answer['count']}, kept {tally.kept}, cold {len(tally.cold)}",
                    flush=True,
                )
        except Exception as error:  # recorded, so the other sessions' results still count
            tally.problems.append(f"{type(error).__name__}: {error}")

    def wait_phase(
        self, name: str, since: float, wanted: Callable[[str | None], bool], timeout: float = 120
    ) -> dict[str, Any] | None:
        """The Sandbox's status from the first snapshot, begun after `since`, whose session
        phase is `wanted`."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            snapshot = self.fresh(since)
            if wanted(snapshot.phase(name)):
                return snapshot.sandbox_status(name) or {"phase": snapshot.phase(name)}
            since = snapshot.taken
        return None

    def wait_hibernated(self, name: str, since: float) -> dict[str, Any] | None:
        return self.wait_phase(name, since, lambda phase: phase == "Hibernated")


def key_secrets(chaos: Chaos) -> list[str]:
    found = chaos.core.list_namespaced_secret(
        chaos.namespace, label_selector=f"{LABEL_COMPONENT}={COMPONENT_CHECKPOINT_KEY}"
    )
    return [secret.metadata.name for secret in found.items]


def key_files(running: Stack) -> list[str]:
    keys = running.agent_state / "keys"
    return sorted(p.name for p in keys.glob(f"{running.namespace}_*")) if keys.is_dir() else []


def partials(running: Stack) -> list[str]:
    root = running.agent_state / "checkpoints"
    return sorted(p.name for p in root.glob(f"{PARTIAL_PREFIX}*")) if root.is_dir() else []


def test_sessions_survive_kills_of_operator_agent_and_router(
    running_stack: Stack, tmp_path: Path
) -> None:
    running = running_stack
    print(f"\nchaos: seed {SEED} (KOCOON_CHAOS_SEED), {CYCLES} cycles per session")
    began = time.monotonic()
    chaos = Chaos(running, tmp_path)
    running.cluster.apply(*(session_manifest(running.namespace, name) for name in SESSIONS))
    watchers = [
        threading.Thread(target=chaos.poll, daemon=True),
        threading.Thread(target=chaos.watch_pods, daemon=True),
    ]
    for thread in watchers:
        thread.start()
    for name in SESSIONS:
        wait_for(f"{name} Running", lambda n=name: chaos.snapshot.phase(n) == "Running")
        secret = running.kubectl("get", "secret", f"{name}-token", "-o", "json")
        chaos.tokens[name] = base64.b64decode(json.loads(secret)["data"]["token"]).decode()
        first = chaos.ask(name)
        assert first is not None, f"{name} never answered"
        chaos.tallies[name].last = first

    drivers = [threading.Thread(target=chaos.drive, args=(name, CYCLES)) for name in SESSIONS]
    killer = threading.Thread(target=chaos.killer, daemon=True)
    for thread in [*drivers, killer]:
        thread.start()
    for thread in drivers:
        thread.join(timeout=CYCLES * 90)
    chaos.calm.set()
    killer.join(timeout=120)
    assert not killer.is_alive(), "a restart hung"
    assert not chaos.kill_errors, chaos.kill_errors
    assert running.operator.process.poll() is None, running.operator.output()[-3000:]
    for component in ("kocoon-agent", "kocoon-router"):
        assert processes.alive(running.cluster.state.pids[component]), component
    chaos_seconds = time.monotonic() - began

    # Quiet: every session hibernates once more; the store holds exactly the recorded
    # checkpoints, and no restored container outlives its pod.
    quiet = time.monotonic()
    for name in SESSIONS:
        assert chaos.wait_hibernated(name, quiet) is not None, f"{name}: {chaos.phases()}"
    wait_for(
        "no pods",
        lambda: (
            not chaos.core.list_namespaced_pod(
                running.namespace, label_selector=SANDBOX_LABEL
            ).items
        ),
        timeout=60,
    )
    snapshot = chaos.fresh(time.monotonic())
    recorded = sorted(
        snapshot.sandbox_status(name)["checkpoint"]["id"]
        for name in SESSIONS
        if "checkpoint" in snapshot.sandbox_status(name)
    )
    stored = stored_checkpoints(running.agent_state)
    leaked = sorted(set(stored) - set(recorded)) + partials(running)
    missing = sorted(set(recorded) - set(stored))
    try:
        wait_for(
            "restored containers of gone pods to be removed",
            lambda: not restored_containers(running.restored_root) or None,
            timeout=30,
        )
        stray: list[str] = []
    except AssertionError:
        stray = restored_containers(running.restored_root)

    # Not one session lost: each answers through the router, the last checkpoint's memory or
    # cold with a reason, like every wake before.
    for name in SESSIONS:
        hibernated = chaos.fresh(time.monotonic()).sandbox_status(name)
        answer = chaos.ask(name)
        if answer is None:
            chaos.tallies[name].problems.append("lost: no answer after the chaos")
        else:
            chaos.judge(name, answer, hibernated)
            chaos.tallies[name].cycles += 1

    # Deleting the sessions leaves no key and no archive.
    running.kubectl("delete", "agentsession", *SESSIONS, "--timeout=120s")
    wait_for(
        "the Sandboxes to go",
        lambda: not chaos._list("sandboxes") or None,
        timeout=90,
    )
    chaos.stop.set()
    wait_for(
        "restored containers to be removed",
        lambda: not restored_containers(running.restored_root) or None,
        timeout=30,
    )
    after_delete = {
        "key Secrets": key_secrets(chaos),
        "key files": key_files(running),
        "archives": stored_checkpoints(running.agent_state) + partials(running),
        "restored containers": restored_containers(running.restored_root),
    }

    cycles = sum(t.cycles for t in chaos.tallies.values())
    kept = sum(t.kept for t in chaos.tallies.values())
    cold = [reason for t in chaos.tallies.values() for reason in t.cold]
    problems = {name: t.problems for name, t in chaos.tallies.items() if t.problems}
    operator_errors = [
        line
        for log in [*chaos.operators_killed, running.operator.output()]
        for line in log.splitlines()
        if '"level": "error"' in line
    ]
    print("\n".join(chaos.kill_log))
    print(
        f"chaos: seed {SEED}, {chaos_seconds:.0f} s of chaos, {time.monotonic() - began:.0f} s "
        f"in all\n"
        f"  wakes judged {cycles} ({CYCLES} cycles x {len(SESSIONS)} sessions + a last one each)"
        f": memory kept {kept}, cold {len(cold)}\n"
        f"  kills: " + ", ".join(f"{c} {chaos.kills[c]}" for c in COMPONENTS) + "\n"
        f"  duplicate pods {len(chaos.duplicates)} (pod events watched {chaos.pod_events}); "
        f"leaked archives {len(leaked)}, recorded but missing {len(missing)}, stray restored "
        f"containers {len(stray)}\n"
        "  after deleting the sessions: "
        + ", ".join(f"{k} {len(v)}" for k, v in after_delete.items())
        + f"\n  operator error lines {len(operator_errors)}"
    )
    # A cold wake because the agent was down (not reached at all) rather than killed mid-way:
    # memory a retry would have kept.
    not_reached = sum("Cannot connect" in reason for reason in cold)
    print(f"  cold wakes whose agent call found the agent down: {not_reached} of {len(cold)}")
    for reason in cold:
        print(f"  cold: {reason}")
    for line in operator_errors[:10]:
        print(f"  operator error: {line[:400]}")

    assert not problems, json.dumps(problems, indent=1)
    assert not chaos.duplicates, chaos.duplicates[:10]
    assert not leaked, f"archives no status records: {leaked} (recorded {recorded})"
    assert not missing, f"recorded checkpoints not in the store: {missing}"
    assert not stray, f"restored containers without a pod: {stray}"
    assert not any(after_delete.values()), after_delete
    assert cycles == len(SESSIONS) * (CYCLES + 1)
    assert all(chaos.kills[c] > 0 for c in COMPONENTS), chaos.kills
