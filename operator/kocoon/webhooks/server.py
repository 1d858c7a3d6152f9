"""How the operator serves its admission webhooks over TLS.

Two certificate setups:

- self-signed (default): kopf generates a CA and a serving certificate at start-up and, in
  managed mode, writes the CA bundle into the webhook configurations named below — the same
  objects `webhooks/self-signed/` creates.
- cert-manager: the certificate is mounted from the Secret of `webhooks/cert-manager/`, kopf
  re-reads it on rotation, and cert-manager's CA injector fills the configurations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import kopf

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


def configure(settings: kopf.OperatorSettings, serving: WebhookServing) -> None:
    """Point kopf's admission settings at our server; manage the CA bundle when self-signed."""
    settings.admission.server = kopf.WebhookServer(
        addr=serving.addr,
        port=serving.port,
        host=serving.host,
        certfile=str(serving.certfile) if serving.certfile else None,
        pkeyfile=str(serving.pkeyfile) if serving.pkeyfile else None,
    )
    # With a self-signed certificate only the operator knows the CA, so it must write the
    # configurations itself; with cert-manager the CA injector does, and kopf must not fight it.
    settings.admission.managed = CONFIGURATION_NAME if serving.self_signed else None
