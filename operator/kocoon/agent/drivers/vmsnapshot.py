"""Kata Containers with Cloud Hypervisor: whole-VM snapshots. Detected, not driven."""

from __future__ import annotations

from pathlib import Path

from kocoon.agent.drivers.base import DRIVER_VMSNAPSHOT, Availability, Unsupported
from kocoon.agent.drivers.refusing import Refusing, detect

KATA_BINARIES = ("containerd-shim-kata-v2", "kata-runtime")
CLOUD_HYPERVISOR_BINARIES = ("cloud-hypervisor", "ch-remote")
KVM_DEVICE = Path("/dev/kvm")


class VmSnapshotDriver(Refusing):
    """Kata Containers with Cloud Hypervisor: whole-VM snapshot (`vm.snapshot`/`vm.restore`)."""

    @property
    def name(self) -> str:
        return DRIVER_VMSNAPSHOT

    async def probe(self) -> Availability:
        detected = detect(KATA_BINARIES + CLOUD_HYPERVISOR_BINARIES, (KVM_DEVICE,))
        if detected.missing:
            return Unsupported(f"missing {', '.join(detected.missing)}")
        return Unsupported(
            f"found {', '.join(detected.found)}, but upstream Kata exposes no VM snapshot of a "
            "running sandbox and this agent does not drive Cloud Hypervisor directly yet"
        )
