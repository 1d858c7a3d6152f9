"""A self-signed serving certificate for the webhook server, made with `cryptography`.

kopf can make one too, but only with `certbuilder`/`oscrypto`, which are not among our
dependencies; `cryptography` already is. The certificate is its own CA: the API server gets it
as the webhook configurations' `caBundle`.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = timedelta(days=365)


def _san(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def build_self_signed(hostnames: list[str], now: datetime | None = None) -> tuple[bytes, bytes]:
    """A (certificate, private key) pair in PEM for `hostnames` (DNS names or IP addresses)."""
    if not hostnames:
        raise ValueError("a webhook certificate needs at least one host name or IP address")
    start = (now or datetime.now(UTC)) - timedelta(minutes=5)  # tolerate clock skew
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hostnames]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def write_self_signed(hostnames: list[str], directory: Path) -> tuple[Path, Path]:
    """Write a fresh pair into `directory`; the key file is readable by its owner only."""
    certificate, key = build_self_signed(hostnames)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    certfile.write_bytes(certificate)
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(key)
    return certfile, keyfile
