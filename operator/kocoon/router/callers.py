"""Who is calling the OpenAI-compatible endpoint, and which models they may call.

Two kinds of credentials open models, both presented as `Authorization: Bearer <token>`:

- an AgentSession's token (its token Secret): the models named in the session's
  `spec.models` (ModelDeployment names), in the session's namespace;
- an API key (a Secret labelled `kocoon.io/api-key: "true"`, the key under `key`): the served
  model names in its `kocoon.io/models` annotation, or every model of the Secret's namespace
  when the annotation is absent.

The caller's namespace is the credential's namespace: a model of the same served name in
another namespace is invisible to it.

Only SHA-256 digests are kept. A presented token is found by the digest of what was
presented, so a lookup's timing can depend only on that digest, never on a stored token; the
match is then confirmed with `hmac.compare_digest`. The index is updated incrementally on
every watch event, so a request never rebuilds it.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

from kocoon.router.auth import AuthFailure, bearer_token, hash_token


class CallerKind(enum.StrEnum):
    SESSION = "agentsession"
    API_KEY = "api-key"


@dataclass(frozen=True)
class Caller:
    kind: CallerKind
    namespace: str
    name: str  # the session's or the API-key Secret's name
    model_names: frozenset[str] | None = None  # ModelDeployment names; None: no limit
    served_names: frozenset[str] | None = None  # served model names; None: no limit

    def may_call(self, namespace: str, model_name: str, served_name: str) -> bool:
        if namespace != self.namespace:
            return False
        if self.model_names is not None and model_name not in self.model_names:
            return False
        return self.served_names is None or served_name in self.served_names


Key = tuple[str, str]  # (namespace, name)


@dataclass
class CallerIndex:
    """digest → caller, kept in step with session, token-Secret and API-key events."""

    by_digest: dict[bytes, Caller] = field(default_factory=dict)
    _indexed: dict[tuple[CallerKind, str, str], frozenset[bytes]] = field(default_factory=dict)
    _callers: dict[tuple[CallerKind, str, str], Caller] = field(default_factory=dict)
    _sessions: dict[Key, tuple[str | None, frozenset[str]]] = field(default_factory=dict)
    _sessions_by_secret: dict[Key, set[str]] = field(default_factory=dict)

    # --- updates ------------------------------------------------------------------------

    def set_session(
        self,
        namespace: str,
        name: str,
        token_secret: str | None,
        models: frozenset[str],
        secret_digests: Iterable[bytes],
    ) -> None:
        self.remove_session(namespace, name)
        self._sessions[namespace, name] = (token_secret, models)
        if token_secret:
            self._sessions_by_secret.setdefault((namespace, token_secret), set()).add(name)
        caller = Caller(CallerKind.SESSION, namespace, name, model_names=models)
        self._put(caller, frozenset(secret_digests) if token_secret else frozenset())

    def remove_session(self, namespace: str, name: str) -> None:
        old = self._sessions.pop((namespace, name), None)
        if old is None:
            return
        secret = old[0]
        if secret:
            names = self._sessions_by_secret.get((namespace, secret))
            if names is not None:
                names.discard(name)
                if not names:
                    del self._sessions_by_secret[namespace, secret]
        self._drop(CallerKind.SESSION, namespace, name)

    def secret_changed(self, namespace: str, secret: str, digests: Iterable[bytes]) -> None:
        """A token Secret's digests changed: re-index the sessions that name it."""
        fresh = frozenset(digests)
        for name in sorted(self._sessions_by_secret.get((namespace, secret), ())):
            _, models = self._sessions[namespace, name]
            self._drop(CallerKind.SESSION, namespace, name)
            self._put(Caller(CallerKind.SESSION, namespace, name, model_names=models), fresh)

    def set_api_key(
        self, namespace: str, name: str, digests: Iterable[bytes], models: frozenset[str] | None
    ) -> None:
        self._drop(CallerKind.API_KEY, namespace, name)
        caller = Caller(CallerKind.API_KEY, namespace, name, served_names=models)
        self._put(caller, frozenset(digests))

    def remove_api_key(self, namespace: str, name: str) -> None:
        self._drop(CallerKind.API_KEY, namespace, name)

    def _put(self, caller: Caller, digests: frozenset[bytes]) -> None:
        self._indexed[caller.kind, caller.namespace, caller.name] = digests
        self._callers[caller.kind, caller.namespace, caller.name] = caller
        for digest in digests:
            # The same token in two Secrets: the first indexed keeps it until it goes (a
            # collision of SHA-256 digests of different tokens is not a case to handle).
            self.by_digest.setdefault(digest, caller)

    def _drop(self, kind: CallerKind, namespace: str, name: str) -> None:
        ident = (kind, namespace, name)
        self._callers.pop(ident, None)
        for digest in self._indexed.pop(ident, frozenset()):
            caller = self.by_digest.get(digest)
            if caller is None or (caller.kind, caller.namespace, caller.name) != ident:
                continue
            del self.by_digest[digest]
            # Another Secret with the same token takes over (rare: a scan is fine).
            heirs = sorted(other for other, held in self._indexed.items() if digest in held)
            if heirs:
                self.by_digest[digest] = self._callers[heirs[0]]

    # --- reads (per request) ------------------------------------------------------------

    def identify(self, authorization: str | None) -> Caller | AuthFailure:
        """The caller an `Authorization` header value names, or why there is none."""
        if authorization is None or not authorization.strip():
            return AuthFailure.MISSING
        token = bearer_token(authorization)
        if token is None:
            return AuthFailure.MALFORMED
        presented = hash_token(token)
        caller = self.by_digest.get(presented)
        if caller is None:
            return AuthFailure.WRONG
        stored = next(
            (
                d
                for d in self._indexed.get((caller.kind, caller.namespace, caller.name), ())
                if hmac.compare_digest(d, presented)
            ),
            None,
        )
        return caller if stored is not None else AuthFailure.WRONG
