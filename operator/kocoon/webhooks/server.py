"""How the operator serves its admission webhooks over TLS.

Two certificate setups:

- self-signed (default): a certificate is generated at start-up (`certs.py`) and kopf, in
  managed mode, writes it as the CA bundle into the webhook configurations named below — the
  same objects `webhooks/self-signed/` creates.
- cert-manager: the certificate is mounted from the Secret of `webhooks/cert-manager/`, kopf
  re-reads it on rotation, and cert-manager's CA injector fills the configurations.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import kopf

from kocoon.webhooks.certs import write_self_signed

CONFIGURATION_NAME = "kocoon.io"
NAMESPACE = "kocoon-system"
SERVICE_NAME = "kocoon-operator-webhook"
PORT = 9443
CERT_SECRET = "kocoon-webhook-tls"


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
    settings.admission.server = kopf.WebhookServer(
        addr=serving.addr,
        port=serving.port,
        host=serving.host,
        certfile=str(certfile),
        pkeyfile=str(pkeyfile),
    )
    # With a self-signed certificate only the operator knows the CA, so it must write the
    # configurations itself; with cert-manager the CA injector does, and kopf must not fight it.
    settings.admission.managed = configuration_name if serving.self_signed else None
