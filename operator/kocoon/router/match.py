"""Request → target: the two addressing forms the router accepts.

- Path form: `/sessions/{namespace}/{name}/rest`, `/sandboxes/...`, `/models/...`; the first
  three segments are stripped, the backend sees `/rest`.
- Host form: `{name}.{namespace}.{domain}` addresses an AgentSession; the path is forwarded
  unchanged. It wins over the path form when the host is under the configured domain, so a
  session's own paths may look like anything, `/sessions/...` included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kocoon.router.table import TargetKey, TargetKind

PATH_PREFIXES: dict[str, TargetKind] = {
    "sessions": TargetKind.SESSION,
    "sandboxes": TargetKind.SANDBOX,
    "models": TargetKind.MODEL,
}
HOST_FORM_KIND = TargetKind.SESSION

# RFC 1123 label: what Kubernetes allows for namespaces and for these objects' names.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Match:
    key: TargetKey
    forward_path: str  # path the backend sees, always starting with "/"
    prefix: str  # what was stripped, for X-Forwarded-Prefix ("" for the host form)


def match_request(path: str, host: str | None, domain: str | None) -> Match | None:
    """The target a request addresses, or None when it addresses none."""
    if domain and host:
        by_host = match_host(path, host, domain)
        if by_host is not None:
            return by_host
    return match_path(path)


def match_path(path: str) -> Match | None:
    parts = path.split("/", 4)  # "", kind, namespace, name, rest
    if len(parts) < 4 or parts[0] != "":
        return None
    kind = PATH_PREFIXES.get(parts[1])
    namespace, name = parts[2], parts[3]
    if kind is None or not _is_label(namespace) or not _is_label(name):
        return None
    rest = "/" + parts[4] if len(parts) == 5 else "/"
    prefix = f"/{parts[1]}/{namespace}/{name}"
    return Match(TargetKey(kind, namespace, name), rest, prefix)


def match_host(path: str, host: str, domain: str) -> Match | None:
    hostname = _strip_port(host).lower().rstrip(".")
    suffix = "." + domain.lower().strip(".")
    if not hostname.endswith(suffix):
        return None
    labels = hostname[: -len(suffix)].split(".")
    if len(labels) != 2 or not all(_is_label(label) for label in labels):
        return None
    name, namespace = labels
    return Match(TargetKey(HOST_FORM_KIND, namespace, name), path or "/", "")


def _strip_port(host: str) -> str:
    if host.startswith("["):  # IPv6 literal never matches a domain, keep it whole
        return host
    return host.rsplit(":", 1)[0] if ":" in host else host


def _is_label(value: str) -> bool:
    return bool(_DNS_LABEL.match(value))
