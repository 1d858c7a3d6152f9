"""Pure pieces of the containerd driver: a pod's containers in a `runc list`, and the OCI spec
that restores a checkpointed container into another pod's sandbox.

containerd's CRI plugin labels every runc container with the pod it belongs to
(`io.kubernetes.cri.*` annotations), so runc's own listing is enough to find the pause
container that holds a pod's namespaces and the container a restore goes beside.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CRI_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
CRI_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
CRI_CONTAINER_NAME = "io.kubernetes.cri.container-name"
CRI_TYPE_SANDBOX = "sandbox"
CRI_TYPE_CONTAINER = "container"
# On containers the agent restored: which pod and container they serve.
RESTORED_POD_UID = "kocoon.io/pod-uid"
RESTORED_CONTAINER = "kocoon.io/container"
# The wake pod's own container process (pid and start time): the restored container shares
# its log pipes, so it must go as soon as that process does, or the pod cannot stop.
HELD_PROCESS = "kocoon.io/held-process"
# runc reads CRIU options from the file this annotation names.
CRIU_CONFIG = "org.criu.config"

# OCI namespace type → the file under /proc/<pid>/ns/.
_NAMESPACE_FILES = {
    "network": "net",
    "ipc": "ipc",
    "uts": "uts",
    "pid": "pid",
    "mount": "mnt",
    "cgroup": "cgroup",
    "user": "user",
    "time": "time",
}


class SpecMismatch(Exception):
    """The wake pod cannot host the checkpointed container; the message says why."""


@dataclass(frozen=True)
class Listed:
    """One container of `runc list --format json`."""

    id: str
    pid: int
    status: str
    bundle: Path
    rootfs: Path
    annotations: Mapping[str, str]

    @classmethod
    def from_runc(cls, entry: Mapping[str, Any]) -> Listed:
        return cls(
            id=str(entry.get("id", "")),
            pid=int(entry.get("pid") or 0),
            status=str(entry.get("status", "")),
            bundle=Path(str(entry.get("bundle", ""))),
            rootfs=Path(str(entry.get("rootfs", ""))),
            annotations=dict(entry.get("annotations") or {}),
        )

    @property
    def running(self) -> bool:
        return self.status == "running"


def parse_listing(entries: Iterable[Mapping[str, Any]]) -> list[Listed]:
    return [Listed.from_runc(entry) for entry in entries]


def pod_sandbox(listing: Iterable[Listed], pod_uid: str) -> Listed | None:
    """The running pause container holding the pod's namespaces."""
    for entry in listing:
        notes = entry.annotations
        if (
            entry.running
            and notes.get(CRI_CONTAINER_TYPE) == CRI_TYPE_SANDBOX
            and notes.get(CRI_SANDBOX_UID) == pod_uid
        ):
            return entry
    return None


def pod_container(listing: Iterable[Listed], pod_uid: str, container: str) -> Listed | None:
    """The pod's running container of that name, as the CRI started it."""
    for entry in listing:
        notes = entry.annotations
        if (
            entry.running
            and notes.get(CRI_CONTAINER_TYPE) == CRI_TYPE_CONTAINER
            and notes.get(CRI_SANDBOX_UID) == pod_uid
            and notes.get(CRI_CONTAINER_NAME) == container
        ):
            return entry
    return None


def restored_container(listing: Iterable[Listed], pod_uid: str, container: str) -> Listed | None:
    """The container the agent restored into that pod, if any (running or not)."""
    for entry in listing:
        notes = entry.annotations
        if notes.get(RESTORED_POD_UID) == pod_uid and notes.get(RESTORED_CONTAINER) == container:
            return entry
    return None


def process_identity(pid: int, stat: str) -> str:
    """`<pid>:<start time>` from /proc/<pid>/stat: names a process even after pids wrap."""
    fields = stat.rsplit(")", 1)[-1].split()
    return f"{pid}:{fields[19]}"


def orphans(
    restored: Iterable[Listed], live: Callable[[str], bool], busy: Container[str] = ()
) -> list[Listed]:
    """Restored containers to remove: exited, or the wake pod's container process is gone
    (`live` answers for a `process_identity`). Containers in `busy` (being checkpointed or
    restored right now: paused, or not started yet) are left alone."""
    return [
        entry
        for entry in restored
        if entry.id not in busy
        and (entry.status == "stopped" or not live(entry.annotations.get(HELD_PROCESS, "")))
    ]


def restored_id(pod_uid: str, container: str) -> str:
    return f"kocoon-{pod_uid.replace('-', '')[:16]}-{container}"


def restore_spec(
    checkpointed: Mapping[str, Any],
    held: Mapping[str, Any],
    *,
    sandbox_pid: int,
    rootfs: Path,
    cgroups_path: str,
    annotations: Mapping[str, str],
) -> dict[str, Any]:
    """The checkpointed container's spec, moved into the wake pod.

    Namespaces the old container shared with its pod's pause process (network, IPC, UTS) now
    name the new pause process; bind mounts take their sources from the wake pod's own
    container (`held`), matched by destination: same pod template, new paths. CRIU needs every
    mount point again, so one the wake pod lacks is refused here, by name.
    """
    spec: dict[str, Any] = copy.deepcopy(dict(checkpointed))
    linux = spec.setdefault("linux", {})
    for namespace in linux.get("namespaces") or []:
        if "path" in namespace:
            kind = _NAMESPACE_FILES.get(namespace["type"])
            if kind is None:
                raise SpecMismatch(f"namespace {namespace['type']!r} is not known")
            namespace["path"] = f"/proc/{sandbox_pid}/ns/{kind}"
    sources = {mount["destination"]: mount for mount in held.get("mounts") or []}
    for mount in spec.get("mounts") or []:
        if mount.get("type") != "bind" and "bind" not in (mount.get("options") or []):
            continue  # proc, tmpfs, sysfs...: made anew
        destination = mount["destination"]
        if destination not in sources:
            raise SpecMismatch(
                f"mount {destination}: the checkpointed container had it, the wake pod's "
                "container has not (was the pod template changed?)"
            )
        mount["source"] = sources[destination]["source"]
    spec["root"] = {"path": str(rootfs), "readonly": bool(spec.get("root", {}).get("readonly"))}
    linux["cgroupsPath"] = cgroups_path
    spec["annotations"] = {**dict(held.get("annotations") or {}), **dict(annotations)}
    return spec


def sibling_cgroup(held: Mapping[str, Any], name: str) -> str:
    """A cgroup beside the held container's, inside the pod's cgroup: the pod's limits and the
    kubelet's accounting cover the restored processes too."""
    path = str(held.get("linux", {}).get("cgroupsPath") or "")
    if not path:
        raise SpecMismatch("the wake pod's container has no cgroupsPath")
    if ":" in path:  # systemd driver: slice:prefix:name
        slice_, prefix, _ = path.split(":", 2)
        return f"{slice_}:{prefix}:{name}"
    return f"{path.rsplit('/', 1)[0]}/{name}"


def overlay_upperdir(mountinfo: str) -> Path | None:
    """The upper directory of the overlay mounted at `/` (in a container's mountinfo)."""
    found: Path | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 10 or fields[4] != "/" or "-" not in fields:
            continue
        separator = fields.index("-")
        if fields[separator + 1] != "overlay":
            continue
        for option in fields[separator + 3].split(","):
            if option.startswith("upperdir="):
                found = Path(option.removeprefix("upperdir=").replace("\\040", " "))
    return found
