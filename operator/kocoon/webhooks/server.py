"""How the operator serves its admission webhooks over TLS.

Two certificate setups:

- self-signed (default): a certificate is generated at start-up (`certs.py`) and kopf, in
  managed mode, writes it as the CA bundle into the webhook configurations named below — the
  same objects `webhooks/self-signed/` creates.
- cert-manager: the certificate is mounted from the Secret of `webhooks/cert-manager/`, kopf
  re-reads it on rotation, and cert-manager's CA injector fills the configurations.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import kopf

from kocoon.webhooks.certs import write_self_signed

CONFIGURATION_NAME = "kocoon.io"
NAMESPACE = "kocoon-system"
SERVICE_NAME = "kocoon-operator-webhook"
PORT = 9443
CERT_SECRET = "kocoon-webhook-tls"
# An AdmissionReview carries the object and, on update, the old one. The API server takes
# request bodies up to 3 MiB, so a review can be twice that plus JSON escaping; aiohttp's
# default of 1 MiB would fail the call and the user would see an internal error instead of
# the schema's message naming the oversized field.
MAX_REVIEW_BYTES = 16 * 1024 * 1024


class _WebhookServer(kopf.WebhookServer):
    """kopf's server, reading admission reviews up to MAX_REVIEW_BYTES."""

    @staticmethod
    async def _serve(fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        larger = request.clone(client_max_size=MAX_REVIEW_BYTES)
        response: aiohttp.web.Response = await kopf.WebhookServer._serve(fn, larger)
        return response


@dataclass(frozen=True)
class WebhookServing:
    """Where and how the webhook server listens."""

    addr: str = "0.0.0.0"
    port: int = PORT
    host: str = f"{SERVICE_NAME}.{NAMESPACE}.svc"
    certfile: Path | None = None
    pkeyfile: Path | None = None

    @property
    def self_signed(self) -> bool:
        return self.certfile is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookServing:
        """Serving options from `KOCOON_WEBHOOK_{ADDR,PORT,HOST,CERTFILE,KEYFILE}`.

        Set CERTFILE and KEYFILE to the mounted cert-manager Secret to use cert-manager.
        """
        env = os.environ if environ is None else environ
        certfile, keyfile = env.get("KOCOON_WEBHOOK_CERTFILE"), env.get("KOCOON_WEBHOOK_KEYFILE")
        if bool(certfile) != bool(keyfile):
            raise ValueError(
                "set both KOCOON_WEBHOOK_CERTFILE and KOCOON_WEBHOOK_KEYFILE, or neither"
                " (then a self-signed certificate is generated)"
            )
        return cls(
            addr=env.get("KOCOON_WEBHOOK_ADDR", cls.addr),
            port=int(env.get("KOCOON_WEBHOOK_PORT", cls.port)),
            host=env.get("KOCOON_WEBHOOK_HOST", cls.host),
            certfile=Path(certfile) if certfile else None,
            pkeyfile=Path(keyfile) if keyfile else None,
        )


def configure(
    settings: kopf.OperatorSettings,
    serving: WebhookServing,
    configuration_name: str = CONFIGURATION_NAME,
) -> None:
    """Point kopf's admission settings at our server; manage the CA bundle when self-signed."""
    certfile, pkeyfile = serving.certfile, serving.pkeyfile
    if certfile is None or pkeyfile is None:
        directory = Path(tempfile.mkdtemp(prefix="kocoon-webhook-"))
        certfile, pkeyfile = write_self_signed([serving.host], directory)
    settings.admission.server = _WebhookServer(
        addr=serving.addr,
        port=serving.port,
        host=serving.host,
        certfile=str(certfile),
        pkeyfile=str(pkeyfile),
    )
    # With a self-signed certificate only the operator knows the CA, so it must write the
    # configurations itself; with cert-manager the CA injector does, and kopf must not fight it.
    settings.admission.managed = configuration_name if serving.self_signed else None
