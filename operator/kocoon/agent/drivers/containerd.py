"""CRIU through runc for pods run by containerd: hibernate a pod's container, wake it into a new
pod on the same node.

Checkpoint: the pod's container is found in containerd's runc state by the pod's UID and the
container's name, dumped with `runc checkpoint` (TCP connections included), and stored with
its OCI spec and its root filesystem changes.

Restore: containerd cannot restore a container from a checkpoint, so the operator creates the
wake pod with a placeholder process in the container (the image's root filesystem unpacked,
the pod's network and IP in place), and this driver restores the checkpoint beside it: same
pause process namespaces, same root filesystem, same volumes, inside the pod's cgroup. The
restored container lives under the agent's own runc root; when its pod goes, the agent removes
it (`reap`). A pod hibernated again after a wake checkpoints the restored container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kocoon.agent import proc
from kocoon.agent.drivers import podspec, rootfsdiff
from kocoon.agent.drivers.base import (
    DRIVER_CONTAINERD,
    Availability,
    Available,
    CheckpointTarget,
    Dumped,
    Restored,
    RestoreTarget,
    Unsupported,
)
from kocoon.agent.drivers.criutool import CriuTool
from kocoon.agent.drivers.runctool import DUMP_LOG, RESTORE_LOG, RUNC_LOG, RuncMissing, RuncTool
from kocoon.agent.errors import (
    CheckpointFailed,
    InvalidRequest,
    RestoreFailed,
    TargetNotFound,
)

log = logging.getLogger(__name__)

DEFAULT_CRI_RUNC_ROOT = Path("/run/containerd/runc/k8s.io")
RUNTIME_NAME = "runc"
IMAGES = "criu"
SPEC = "spec.json"
TARGET_POD_UID = "podUid"
TARGET_CONTAINER = "container"
# Restored sockets were connected to peers of the old pod; the new pod has another address,
# so established connections come back closed (their peers see a reset) instead of failing
# the restore. Listening sockets are restored as they were.
CRIU_RESTORE_OPTIONS = "tcp-close\n"


class ContainerdDriver:
    def __init__(
        self,
        criu: CriuTool,
        *,
        cri_root: Path = DEFAULT_CRI_RUNC_ROOT,
        restored_root: Path,
        bundles: Path,
        runc: str = "runc",
    ) -> None:
        self._criu = criu
        self._cri = RuncTool(criu, runc=runc, root=cri_root)
        self._restored = RuncTool(criu, runc=runc, root=restored_root)
        self._bundles = bundles
        # Restored containers being checkpointed or restored: `reap` must not take them for
        # dead while runc has them paused or half made.
        self._busy: set[str] = set()

    @property
    def name(self) -> str:
        return DRIVER_CONTAINERD

    async def probe(self) -> Availability:
        if self._cri.binary() is None:
            return Unsupported(f"no {self._cri.runc} binary on PATH")
        if not self._cri.root.is_dir():
            return Unsupported(
                f"no containerd runc state at {self._cri.root}: this node's pods are not run "
                "by containerd with runc (or the directory is not mounted into the agent)"
            )
        criu = await self._criu.availability()
        if isinstance(criu, Unsupported):
            return criu
        return Available(f"containerd runc {await self._cri.version()}, {criu.detail}")

    async def runtime_identity(self) -> tuple[str | None, str | None]:
        return RUNTIME_NAME, await self._cri.version()

    async def _listing(self, tool: RuncTool) -> list[podspec.Listed]:
        try:
            return podspec.parse_listing(await tool.list())
        except RuncMissing as error:
            raise CheckpointFailed(str(error)) from error

    async def reap(self) -> list[str]:
        """Remove restored containers whose wake pod container has stopped (or which have
        exited). Cheap when there are none: no runc process is started."""
        root = self._restored.root
        if not root.is_dir() or not any(child.is_dir() for child in root.iterdir()):
            return []
        removed = []
        listing = await self._listing(self._restored)
        for entry in podspec.orphans(listing, _process_lives, self._busy):
            await self._restored.remove(entry.id)
            self._forget_bundle(entry.id)
            removed.append(entry.id)
        if removed:
            log.info("removed restored containers of gone pods", extra={"containers": removed})
        return removed

    @contextlib.contextmanager
    def _working_on(self, container_id: str) -> Iterator[None]:
        self._busy.add(container_id)
        try:
            yield
        finally:
            self._busy.discard(container_id)

    def _forget_bundle(self, container_id: str) -> None:
        bundle = self._bundles / container_id
        for name in ("config.json", "criu.conf"):
            (bundle / name).unlink(missing_ok=True)
        if bundle.is_dir():
            bundle.rmdir()

    @staticmethod
    def _pod(uid: str | None, container: str | None) -> tuple[str, str]:
        if not uid or not container:
            raise InvalidRequest(
                "podUid, container: the containerd driver needs the pod's UID and the "
                "container's name"
            )
        return uid, container

    async def checkpoint(self, target: CheckpointTarget, image_dir: Path, work_dir: Path) -> Dumped:
        uid, name = self._pod(target.pod_uid, target.container)
        await self.reap()
        restored = podspec.restored_container(await self._listing(self._restored), uid, name)
        if restored is not None and restored.running:
            tool, entry = self._restored, restored
        else:
            found = podspec.pod_container(await self._listing(self._cri), uid, name)
            if found is None:
                raise TargetNotFound(
                    f"podUid, container: no running container {name!r} of pod {uid} under "
                    f"containerd's runc root {self._cri.root}"
                )
            tool, entry = self._cri, found
        spec = json.loads((entry.bundle / "config.json").read_text())
        upperdir = podspec.overlay_upperdir(_read(Path(f"/proc/{entry.pid}/mountinfo")))
        images = image_dir / IMAGES
        images.mkdir()
        with self._working_on(entry.id):
            result = await tool.checkpoint(entry.id, images, work_dir, ["--tcp-established"])
        if not result.ok:
            raise CheckpointFailed(
                f"runc checkpoint of {entry.id} (pod {uid}, container {name}) failed "
                f"(rc={result.returncode}): {result.tail(5)}\n{proc.log_tail(work_dir / DUMP_LOG)}"
            )
        (image_dir / SPEC).write_text(json.dumps(spec))
        if upperdir is None:
            raise CheckpointFailed(
                f"the root filesystem of {entry.id} is not an overlay; its changes cannot be kept"
            )
        # A tar of the container's changes, possibly large: off the event loop.
        diff = await asyncio.to_thread(rootfsdiff.capture, upperdir, image_dir)
        if tool is self._restored:
            await tool.remove(entry.id)
            self._forget_bundle(entry.id)
        log.info(
            "checkpointed pod container",
            extra={"pod": uid, "container": name, "rootfsEntries": diff.entries},
        )
        return Dumped(
            runtime=RUNTIME_NAME,
            runtime_version=await self._cri.version(),
            criu_version=await self._criu.version(),
            target={TARGET_POD_UID: uid, TARGET_CONTAINER: name},
        )

    async def restore(self, target: RestoreTarget, image_dir: Path, work_dir: Path) -> Restored:
        uid, name = self._pod(
            _text(target.target.get(TARGET_POD_UID)), _text(target.target.get(TARGET_CONTAINER))
        )
        await self.reap()
        cri = await self._listing(self._cri)
        sandbox = podspec.pod_sandbox(cri, uid)
        held = podspec.pod_container(cri, uid, name)
        if sandbox is None or held is None:
            raise TargetNotFound(
                f"podUid: pod {uid} has no running sandbox and container {name!r} on this node "
                "to restore into"
            )
        container_id = podspec.restored_id(uid, name)
        if podspec.restored_container(await self._listing(self._restored), uid, name):
            raise RestoreFailed(f"pod {uid} already has a restored container {container_id}")
        held_spec: dict[str, Any] = json.loads((held.bundle / "config.json").read_text())
        await asyncio.to_thread(rootfsdiff.apply, held.rootfs, image_dir)
        bundle = self._bundles / container_id
        bundle.mkdir(parents=True, exist_ok=True)
        criu_options = bundle / "criu.conf"
        criu_options.write_text(CRIU_RESTORE_OPTIONS)
        try:
            spec = podspec.restore_spec(
                json.loads((image_dir / SPEC).read_text()),
                held_spec,
                sandbox_pid=sandbox.pid,
                rootfs=held.rootfs,
                cgroups_path=podspec.sibling_cgroup(held_spec, container_id),
                annotations={
                    podspec.HELD_PROCESS: _process_identity(held.pid),
                    podspec.RESTORED_POD_UID: uid,
                    podspec.RESTORED_CONTAINER: name,
                    podspec.CRIU_CONFIG: str(criu_options),
                },
            )
        except podspec.SpecMismatch as error:
            raise RestoreFailed(f"pod {uid}: {error}") from error
        (bundle / "config.json").write_text(json.dumps(spec))
        # The restored process writes where the wake pod's container does: the pipes that
        # containerd drains into the pod's log, so `kubectl logs` shows it and it never blocks.
        output = _output_of(held.pid)
        try:
            with self._working_on(container_id):
                result = await self._restored.restore(
                    container_id, bundle, image_dir / IMAGES, work_dir, output=output
                )
        finally:
            for descriptor in output:
                os.close(descriptor)
        if not result.ok:
            await self._restored.remove(container_id)
            self._forget_bundle(container_id)
            raise RestoreFailed(
                f"runc restore into pod {uid} failed (rc={result.returncode}): "
                f"{proc.log_tail(work_dir / RUNC_LOG, 5)}\n{proc.log_tail(work_dir / RESTORE_LOG)}"
            )
        state = await self._restored.state(container_id)
        pid = state.get("pid") if state else None
        return Restored(
            pid=pid if isinstance(pid, int) else None,
            container_id=container_id,
            message=f"restored into pod {uid} beside container {name}",
        )


def _process_identity(pid: int) -> str:
    return podspec.process_identity(pid, _read(Path(f"/proc/{pid}/stat")))


def _process_lives(identity: str) -> bool:
    pid, _, _ = identity.partition(":")
    if not pid.isdigit():
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return podspec.process_identity(int(pid), stat) == identity


def _output_of(pid: int) -> tuple[int, int]:
    """New descriptors for a process's stdout and stderr (pipes: opened through /proc)."""
    stdout = os.open(f"/proc/{pid}/fd/1", os.O_WRONLY | os.O_CLOEXEC)
    try:
        return stdout, os.open(f"/proc/{pid}/fd/2", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        os.close(stdout)
        raise


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as error:
        raise CheckpointFailed(f"cannot read {path}: {error}") from error


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
