"""Who may call the agent: the operator, proven by a bearer token, and with mTLS also by its
client certificate.

`Authenticator`s are tried in order; the first that returns a principal wins. With mTLS the
TLS handshake already refuses callers without a certificate from the client CA (see
`tls.server_context`); the bearer token is still required on every request, and with allowed
common names (`--client-cn`) the certificate's name must be one of them too (`AllOf`).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Protocol

from aiohttp import web

BEARER_PREFIX = "Bearer "


class Authenticator(Protocol):
    @property
    def requirement(self) -> str:
        """What a caller must present, for the refusal's message."""
        ...

    def authenticate(self, request: web.Request) -> str | None:
        """The caller's identity, or None when this method does not vouch for it."""
        ...


class BearerTokenAuthenticator:
    """Compares the request's bearer token to a token file in constant time.

    The file is re-read when it changes, so a rotated Kubernetes Secret takes effect without
    a restart.
    """

    def __init__(self, token_file: Path, principal: str = "operator") -> None:
        self._file = token_file
        self._principal = principal
        self._mtime = -1.0
        self._token = b""
        self._reload()
        if not self._token:
            raise ValueError(f"token file {token_file} is empty: put the operator's token in it")

    @property
    def requirement(self) -> str:
        return "Authorization: send `Bearer <operator token>`"

    def _reload(self) -> None:
        mtime = os.stat(self._file).st_mtime
        if mtime != self._mtime:
            self._token = self._file.read_bytes().strip()
            self._mtime = mtime

    def authenticate(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith(BEARER_PREFIX):
            return None
        self._reload()
        presented = header[len(BEARER_PREFIX) :].strip().encode()
        if self._token and hmac.compare_digest(presented, self._token):
            return self._principal
        return None


class ClientCertificateAuthenticator:
    """Accepts TLS client certificates whose subject common name is in `allowed`.

    The TLS layer has already verified the chain against the configured client CA.
    """

    def __init__(self, allowed: set[str]) -> None:
        if not allowed:
            raise ValueError("--client-cn: at least one common name is needed")
        self._allowed = allowed

    @property
    def requirement(self) -> str:
        names = ", ".join(sorted(self._allowed))
        return f"client certificate: its common name must be one of {names}"

    def authenticate(self, request: web.Request) -> str | None:
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport else None
        if not peercert:
            return None
        for rdn in peercert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName" and value in self._allowed:
                    return f"cn:{value}"
        return None


class AllOf:
    """Vouches only when every authenticator does; the caller is the first one's principal."""

    def __init__(self, authenticators: list[Authenticator]) -> None:
        if not authenticators:
            raise ValueError("AllOf needs at least one authenticator")
        self._authenticators = authenticators

    @property
    def requirement(self) -> str:
        return "; and ".join(a.requirement for a in self._authenticators)

    def authenticate(self, request: web.Request) -> str | None:
        principals = [a.authenticate(request) for a in self._authenticators]
        if any(p is None for p in principals):
            return None
        return principals[0]
