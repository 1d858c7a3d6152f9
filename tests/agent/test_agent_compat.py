from __future__ import annotations

import pytest

from kocoon.agent.compat import incompatibilities
from kocoon.agent.models import Compatibility

pytestmark = pytest.mark.unit

BASE = Compatibility(
    architecture="x86_64",
    kernel_release="6.18.44-fc",
    criu_version="4.1.1",
    runtime="runc",
    runtime_version="1.1.5",
    image_digest="sha256:aaa",
)


def test_same_node_is_compatible() -> None:
    assert incompatibilities(BASE, BASE) == []


def test_patch_release_and_newer_criu_are_compatible() -> None:
    here = BASE.model_copy(update={"kernel_release": "6.18.50-other", "criu_version": "4.2"})
    assert incompatibilities(BASE, here) == []


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"architecture": "aarch64"}, "architecture"),
        ({"kernel_release": "6.1.0-13-amd64"}, "kernelRelease"),
        ({"criu_version": "3.17.1"}, "criuVersion"),
        ({"criu_version": None}, "criuVersion"),
        ({"runtime": "crun"}, "runtime"),
        ({"image_digest": "sha256:bbb"}, "imageDigest"),
    ],
)
def test_each_mismatch_is_named(update: dict[str, object], field: str) -> None:
    problems = incompatibilities(BASE, BASE.model_copy(update=update))
    assert len(problems) == 1
    assert problems[0].startswith(f"{field}:")


def test_gpu_state_needs_the_same_gpu() -> None:
    archived = BASE.model_copy(update={"gpu_model": "NVIDIA L4", "gpu_driver": "580.1"})
    problems = incompatibilities(archived, BASE)
    assert [p.split(":")[0] for p in problems] == ["gpuModel", "gpuDriver"]


def test_unknown_image_digest_on_either_side_is_not_a_mismatch() -> None:
    assert incompatibilities(BASE, BASE.model_copy(update={"image_digest": None})) == []
