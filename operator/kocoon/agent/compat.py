"""Pure: may an archive recorded on one node be restored on this one? Each rule names why not."""

from __future__ import annotations

import re

from kocoon.agent.models import Compatibility


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _kernel_series(release: str) -> tuple[int, ...]:
    return _version_tuple(release)[:2]


def incompatibilities(archived: Compatibility, here: Compatibility) -> list[str]:
    """Reasons the archive cannot be restored here; empty when it can.

    `here` describes this node and, where the caller knows it, the container to restore into
    (runtime, image digest). Rules, and why:
    - architecture must match: memory images hold machine code and register state;
    - kernel series (major.minor) must match: CRIU restores kernel objects whose formats and
      features change between series; patch releases are safe;
    - CRIU here must be at least as new: CRIU reads older images, not newer ones;
    - the same runtime: a runc image is not a gVisor image;
    - the same container image digest when both are known: memory refers to files in it;
    - the same GPU model and driver when the checkpoint held GPU state.
    """
    problems: list[str] = []
    if archived.architecture != here.architecture:
        problems.append(
            f"architecture: archive is {archived.architecture}, this node is {here.architecture}"
        )
    if _kernel_series(archived.kernel_release) != _kernel_series(here.kernel_release):
        problems.append(
            f"kernelRelease: archive was taken on {archived.kernel_release}, this node runs "
            f"{here.kernel_release} (major.minor must match)"
        )
    if archived.criu_version:
        if not here.criu_version:
            problems.append(f"criuVersion: archive needs CRIU {archived.criu_version}, none here")
        elif _version_tuple(here.criu_version) < _version_tuple(archived.criu_version):
            problems.append(
                f"criuVersion: archive was written by CRIU {archived.criu_version}, this node "
                f"has older {here.criu_version}"
            )
    if archived.runtime and here.runtime and archived.runtime != here.runtime:
        problems.append(f"runtime: archive is from {archived.runtime}, restore uses {here.runtime}")
    if archived.image_digest and here.image_digest and archived.image_digest != here.image_digest:
        problems.append(
            f"imageDigest: archive was taken from {archived.image_digest}, "
            f"the container runs {here.image_digest}"
        )
    if archived.gpu_model and archived.gpu_model != here.gpu_model:
        problems.append(
            f"gpuModel: archive holds state of a {archived.gpu_model}, here {here.gpu_model}"
        )
    if archived.gpu_driver and archived.gpu_driver != here.gpu_driver:
        problems.append(
            f"gpuDriver: archive needs driver {archived.gpu_driver}, here {here.gpu_driver}"
        )
    return problems
