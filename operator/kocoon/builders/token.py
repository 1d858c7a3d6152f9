"""The bearer token a target is reached with through the router: a Secret per owner.

The router watches only Secrets with the token label and keeps their SHA-256 digests
(docs/router.md). `previousToken` keeps the old token valid during a rotation.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from kocoon.builders import names
from kocoon.builders.context import Identity

TOKEN_LABEL = "kocoon.io/router-token"
TOKEN_KEY = "token"
PREVIOUS_TOKEN_KEY = "previousToken"
TOKEN_BYTES = 32


def token_secret_name(owner: str) -> str:
    return f"{owner}-token"


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_secret(owner: Identity, token: str, previous: str | None = None) -> dict[str, Any]:
    data = {TOKEN_KEY: base64.b64encode(token.encode()).decode()}
    if previous:
        data[PREVIOUS_TOKEN_KEY] = base64.b64encode(previous.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": token_secret_name(owner.name),
            "namespace": owner.namespace,
            "labels": {**names.labels(owner.name, "token"), TOKEN_LABEL: "true"},
            "ownerReferences": [
                names.owner_reference(owner.kind, owner.name, owner.uid, owner.api_version)
            ],
        },
        "data": data,
    }
