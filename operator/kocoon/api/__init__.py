"""The Kocoon API, `kocoon.io/v1alpha1`: typed models that are the single source of truth.

CRDs (`kocoon crds`), the API reference and the examples' validation are generated from these
models; controllers parse objects into them before doing anything else.
"""

from __future__ import annotations

GROUP = "kocoon.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "kocoon"
