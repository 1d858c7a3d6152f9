"""Bearer-token check for a target.

Only SHA-256 digests of tokens are kept in memory; the presented token is hashed and compared
with every accepted digest (current and, during rotation, previous) in constant time, so
neither timing nor early exit tells a caller how close a guess was. A target with no token
configured is closed: there is nothing a caller could present.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable

AUTHORIZATION_HEADER = "Authorization"
BEARER_SCHEME = "bearer"


class AuthFailure(enum.StrEnum):
    """Why a request was refused; also the `reason` label of the metric."""

    MISSING = "missing"
    MALFORMED = "malformed"
    WRONG = "wrong"
    NO_TOKEN_CONFIGURED = "no-token-configured"


def hash_token(token: str | bytes) -> bytes:
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER_SCHEME or not token:
        return None
    return token


def check_bearer(authorization: str | None, accepted: Iterable[bytes]) -> AuthFailure | None:
    """None when the header carries one of the accepted tokens, else why not."""
    digests = tuple(accepted)
    if authorization is None or not authorization.strip():
        return AuthFailure.MISSING
    token = bearer_token(authorization)
    if token is None:
        return AuthFailure.MALFORMED
    if not digests:
        return AuthFailure.NO_TOKEN_CONFIGURED
    presented = hash_token(token)
    matched = False
    for digest in digests:  # no early exit: every digest is compared
        matched |= hmac.compare_digest(presented, digest)
    return None if matched else AuthFailure.WRONG
