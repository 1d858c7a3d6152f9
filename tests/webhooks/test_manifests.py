"""Webhook manifests follow the registered handlers; certificates are usable for TLS."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from kocoon.webhooks import handlers, manifests
from kocoon.webhooks.certs import build_self_signed, write_self_signed
from kocoon.webhooks.server import WebhookServing

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_every_handler_has_a_webhook_and_every_webhook_a_handler() -> None:
    registry = manifests.registered()
    ids = {handler.id for handler in registry._webhooks.get_all_handlers()}
    assert ids == {
        handlers.VALIDATE_SANDBOX,
        handlers.VALIDATE_SESSION,
        handlers.VALIDATE_MODEL,
        handlers.DEFAULT_SANDBOX,
        handlers.DEFAULT_SESSION,
        handlers.DEFAULT_MODEL,
    }
    text = (ROOT / "webhooks" / "self-signed" / "webhooks.yaml").read_text()
    validating, mutating = list(yaml.safe_load_all(text))
    paths = {
        entry["clientConfig"]["service"]["path"].lstrip("/"): document["kind"]
        for document in (validating, mutating)
        for entry in document["webhooks"]
    }
    assert set(paths) == ids
    assert paths[handlers.VALIDATE_SANDBOX] == "ValidatingWebhookConfiguration"
    assert paths[handlers.DEFAULT_MODEL] == "MutatingWebhookConfiguration"


def test_webhooks_fail_closed_and_have_no_side_effects() -> None:
    registry = manifests.registered()
    for kind in ("validating", "mutating"):
        for entry in manifests.webhook_entries(kind, registry):
            assert entry["failurePolicy"] == "Fail"
            assert entry["sideEffects"] == "None"
            assert entry["rules"][0]["operations"] == ["CREATE", "UPDATE"]
            assert len(entry["rules"]) == 1


def test_cert_manager_variant_asks_for_ca_injection() -> None:
    documents = list(
        yaml.safe_load_all((ROOT / "webhooks" / "cert-manager" / "webhooks.yaml").read_text())
    )
    kinds = [document["kind"] for document in documents]
    assert kinds == [
        "Issuer",
        "Certificate",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ]
    certificate = documents[1]
    for configuration in documents[2:]:
        annotation = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        assert annotation.endswith("/" + certificate["metadata"]["name"])


def test_self_signed_certificate_serves_tls(tmp_path: Path) -> None:
    certfile, keyfile = write_self_signed(["127.0.0.1", "kocoon.example"], tmp_path)
    assert keyfile.stat().st_mode & 0o077 == 0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)  # raises if the pair does not match
    certificate = x509.load_pem_x509_certificate(certfile.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["kocoon.example"]


def test_certificate_needs_a_name() -> None:
    with pytest.raises(ValueError, match="host name"):
        build_self_signed([])


def test_serving_from_environment() -> None:
    default = WebhookServing.from_env({})
    assert default.self_signed
    assert default.port == 9443
    mounted = WebhookServing.from_env(
        {"KOCOON_WEBHOOK_CERTFILE": "/tls/tls.crt", "KOCOON_WEBHOOK_KEYFILE": "/tls/tls.key"}
    )
    assert not mounted.self_signed
    with pytest.raises(ValueError, match="KEYFILE"):
        WebhookServing.from_env({"KOCOON_WEBHOOK_CERTFILE": "/tls/tls.crt"})
