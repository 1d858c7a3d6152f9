"""The routing table: what the router knows about every target, fed by watch events.

Pure and synchronous. The watchers in `kube.py` (or a static file, or a test) call the
`upsert_*`/`delete_*` methods; the data path calls `resolve()` on every request, which is a
few dict look-ups and never touches the API server.

An AgentSession has no backend of its own: it points at the Sandbox it currently owns
(`sandbox_ref`), so a session's route is composed from two records at `resolve()` time. That
way a Sandbox becoming Ready releases the requests held for its session with no extra event.

A ModelDeployment has one backend per replica (`ModelView.backends`); its route carries the
ready, awake ones. Who may call a model is not a token of the model's own but the caller's
credentials (`callers.py`): a session's token with the session's `spec.models`, or an API key.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from kocoon import contract
from kocoon.router.callers import CallerIndex


class TargetKind(enum.StrEnum):
    """The kinds the router forwards to; the value is the lowercase kind name."""

    SANDBOX = contract.TARGET_KIND_SANDBOX
    SESSION = contract.TARGET_KIND_SESSION
    MODEL = contract.TARGET_KIND_MODEL


class TargetKey(NamedTuple):
    kind: TargetKind
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


# Phases with a meaning for the data path. Anything else (Pending, Starting, Waking, ...) is
# "not ready yet": requests are held and a wake is requested, which is harmless when the
# operator is already bringing the target up because wake requests are level-based.
PHASE_FAILED = contract.PHASE_FAILED
# Set by the router itself for objects with a deletionTimestamp (kube.py): the operator never
# writes it, and a target being deleted must not be held or woken.
PHASE_TERMINATING = contract.PHASE_TERMINATING
# An expired session or sandbox will not come back: answer at once instead of holding.
PHASE_EXPIRED = contract.PHASE_EXPIRED
UNROUTABLE_PHASES = frozenset({PHASE_FAILED, PHASE_TERMINATING, PHASE_EXPIRED})


@dataclass(frozen=True)
class BackendView:
    """What the router needs from a Sandbox or ModelDeployment's status."""

    phase: str = ""
    ready: bool = False
    endpoints: tuple[str, ...] = ()  # "host:port"
    token_secret: str | None = None


@dataclass(frozen=True)
class SessionView:
    """What the router needs from an AgentSession: its status, and `spec.models`."""

    phase: str = ""
    sandbox_ref: str | None = None
    token_secret: str | None = None
    models: frozenset[str] = frozenset()  # ModelDeployment names the session's token may call


@dataclass(frozen=True)
class ModelBackend:
    """One replica of a ModelDeployment, from `status.backends[]`."""

    address: str  # "host:port" of the engine
    ready: bool = False
    sleeping: bool = False  # an engineSleep replica that is asleep: never sent requests
    pod: str = ""

    @property
    def serving(self) -> bool:
        return self.ready and not self.sleeping and bool(self.address)


@dataclass(frozen=True)
class ModelView:
    """What the router needs from a ModelDeployment's status."""

    phase: str = ""
    served_name: str = ""  # what clients send in `model`
    backends: tuple[ModelBackend, ...] = ()

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(b.address for b in self.backends if b.serving)


@dataclass(frozen=True)
class ApiKeyView:
    """An API-key Secret: the key's digest and the served model names it may call."""

    digests: frozenset[bytes]
    models: frozenset[str] | None = None  # None: every model of the Secret's namespace


@dataclass(frozen=True)
class Route:
    """A resolved target: where to send a request and who may send it."""

    key: TargetKey
    phase: str
    ready: bool
    endpoints: tuple[str, ...]
    token_hashes: frozenset[bytes]

    @property
    def forwardable(self) -> bool:
        return self.ready and bool(self.endpoints)

    @property
    def unroutable(self) -> bool:
        return self.phase in UNROUTABLE_PHASES


Listener = Callable[[], None]


@dataclass
class RoutingTable:
    """Targets by key, plus the token hashes of the Secrets they reference."""

    backends: dict[TargetKey, BackendView] = field(default_factory=dict)
    sessions: dict[tuple[str, str], SessionView] = field(default_factory=dict)
    # (namespace, secret name) -> SHA-256 digests of the accepted tokens (current, previous)
    secrets: dict[tuple[str, str], frozenset[bytes]] = field(default_factory=dict)
    models: dict[tuple[str, str], ModelView] = field(default_factory=dict)
    # (namespace, secret name) -> an API key
    api_keys: dict[tuple[str, str], ApiKeyView] = field(default_factory=dict)
    # (namespace, served model name) -> ModelDeployment names serving it
    served: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # Bearer digest -> who calls the OpenAI-compatible endpoint, kept in step with the above.
    callers: CallerIndex = field(default_factory=CallerIndex)
    listeners: list[Listener] = field(default_factory=list)
    _round_robin: itertools.count[int] = field(default_factory=itertools.count)

    # --- updates (from watch events) ---------------------------------------------------

    def upsert_backend(self, key: TargetKey, view: BackendView) -> None:
        if key.kind is TargetKind.SESSION:
            raise ValueError(f"{key}: sessions are stored with upsert_session")
        if key.kind is TargetKind.MODEL:
            raise ValueError(f"{key}: models are stored with upsert_model")
        self.backends[key] = view
        self._changed()

    def delete_backend(self, key: TargetKey) -> None:
        if self.backends.pop(key, None) is not None:
            self._changed()

    def upsert_session(self, namespace: str, name: str, view: SessionView) -> None:
        self.sessions[namespace, name] = view
        # A session that has ended (Expired, Failed, being deleted) calls no model any more.
        secret = None if view.phase in UNROUTABLE_PHASES else view.token_secret
        digests = self.secrets.get((namespace, secret), frozenset()) if secret else frozenset()
        self.callers.set_session(namespace, name, secret, view.models, digests)
        self._changed()

    def delete_session(self, namespace: str, name: str) -> None:
        if self.sessions.pop((namespace, name), None) is not None:
            self.callers.remove_session(namespace, name)
            self._changed()

    def upsert_secret(self, namespace: str, name: str, token_hashes: Iterable[bytes]) -> None:
        self.secrets[namespace, name] = frozenset(token_hashes)
        self.callers.secret_changed(namespace, name, self.secrets[namespace, name])
        self._changed()

    def delete_secret(self, namespace: str, name: str) -> None:
        if self.secrets.pop((namespace, name), None) is not None:
            self.callers.secret_changed(namespace, name, ())
            self._changed()

    def upsert_model(self, namespace: str, name: str, view: ModelView) -> None:
        old = self.models.get((namespace, name))
        if old is not None:
            self._unindex_model(namespace, name, old)
        self.models[namespace, name] = view
        self.served.setdefault((namespace, view.served_name), set()).add(name)
        self._changed()

    def delete_model(self, namespace: str, name: str) -> None:
        old = self.models.pop((namespace, name), None)
        if old is not None:
            self._unindex_model(namespace, name, old)
            self._changed()

    def _unindex_model(self, namespace: str, name: str, view: ModelView) -> None:
        names = self.served.get((namespace, view.served_name))
        if names is not None:
            names.discard(name)
            if not names:
                del self.served[namespace, view.served_name]

    def upsert_api_key(self, namespace: str, name: str, view: ApiKeyView) -> None:
        self.api_keys[namespace, name] = view
        self.callers.set_api_key(namespace, name, view.digests, view.models)
        self._changed()

    def delete_api_key(self, namespace: str, name: str) -> None:
        if self.api_keys.pop((namespace, name), None) is not None:
            self.callers.remove_api_key(namespace, name)
            self._changed()

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()

    # --- reads (per request) ------------------------------------------------------------

    def resolve(self, key: TargetKey) -> Route | None:
        """The current route for `key`, or None when the router knows no such target."""
        if key.kind is TargetKind.SESSION:
            return self._resolve_session(key)
        if key.kind is TargetKind.MODEL:
            return self._resolve_model(key)
        view = self.backends.get(key)
        if view is None:
            return None
        return Route(
            key=key,
            phase=view.phase,
            ready=view.ready,
            endpoints=view.endpoints,
            token_hashes=self._tokens(key.namespace, view.token_secret),
        )

    def _resolve_session(self, key: TargetKey) -> Route | None:
        session = self.sessions.get((key.namespace, key.name))
        if session is None:
            return None
        sandbox = None
        if session.sandbox_ref:
            sandbox_key = TargetKey(TargetKind.SANDBOX, key.namespace, session.sandbox_ref)
            sandbox = self.backends.get(sandbox_key)
        # A session is only as ready as the Sandbox it owns right now; a hibernated session
        # may own none at all.
        ready = sandbox is not None and sandbox.ready and session.phase not in UNROUTABLE_PHASES
        return Route(
            key=key,
            phase=session.phase,
            ready=ready,
            endpoints=sandbox.endpoints if sandbox is not None else (),
            token_hashes=self._tokens(key.namespace, session.token_secret),
        )

    def _resolve_model(self, key: TargetKey) -> Route | None:
        model = self.models.get((key.namespace, key.name))
        if model is None:
            return None
        endpoints = model.endpoints
        # Ready means "a replica can take a request now", whatever the phase says: a model
        # scaling up from one replica is Loading and still serves on the first.
        return Route(
            key=key,
            phase=model.phase,
            ready=bool(endpoints),
            endpoints=endpoints,
            token_hashes=frozenset(),  # callers are authorized by credential, not per model
        )

    def model_by_served_name(self, namespace: str, served_name: str) -> str | None:
        """The ModelDeployment in `namespace` serving `served_name` (first by name if several)."""
        names = self.served.get((namespace, served_name))
        return min(names) if names else None

    def _tokens(self, namespace: str, secret: str | None) -> frozenset[bytes]:
        if not secret:
            return frozenset()
        return self.secrets.get((namespace, secret), frozenset())

    def pick_endpoint(self, route: Route) -> str:
        """One of the route's endpoints, in turn; the route must be forwardable."""
        if not route.endpoints:
            raise LookupError(f"{route.key} has no endpoints")
        return route.endpoints[next(self._round_robin) % len(route.endpoints)]
