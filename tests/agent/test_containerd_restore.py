"""The containerd driver's pure parts (finding a pod's containers, the restore spec) and its
root filesystem diff, which must never write outside the root it is applied to."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kocoon.agent.drivers import podspec, rootfsdiff

UID = "85038d72-ade1-4d37-91b0-9dd8bd7263c3"


def listed(cid: str, kind: str, *, status: str = "running", **notes: str) -> podspec.Listed:
    annotations = {podspec.CRI_CONTAINER_TYPE: kind, podspec.CRI_SANDBOX_UID: UID, **notes}
    return podspec.Listed.from_runc(
        {
            "id": cid,
            "pid": 4242,
            "status": status,
            "bundle": f"/b/{cid}",
            "rootfs": f"/b/{cid}/rootfs",
            "annotations": annotations,
        }
    )


def bind(destination: str, source: str) -> dict[str, Any]:
    return {"destination": destination, "source": source, "type": "bind", "options": ["rbind"]}


CHECKPOINTED: dict[str, Any] = {
    "root": {"path": "rootfs"},
    "process": {"args": ["/usr/local/bin/kocoon-counter"]},
    "mounts": [
        {"destination": "/proc", "source": "proc", "type": "proc"},
        bind("/etc/hosts", "/old/pods/uid-1/etc-hosts"),
        bind("/workspace", "/old/pods/uid-1/volumes/workspace"),
    ],
    "linux": {
        "namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/proc/111/ns/net"},
            {"type": "ipc", "path": "/proc/111/ns/ipc"},
            {"type": "mount"},
        ],
        "cgroupsPath": "/kubepods/pod-uid-1/old",
    },
    "annotations": {podspec.CRI_SANDBOX_UID: "uid-1"},
}
HELD: dict[str, Any] = {
    "mounts": [
        bind("/etc/hosts", "/new/pods/uid-2/etc-hosts"),
        bind("/workspace", "/new/pods/uid-2/volumes/workspace"),
    ],
    "linux": {"cgroupsPath": "/kubepods/besteffort/poduid-2/held"},
    "annotations": {podspec.CRI_SANDBOX_UID: "uid-2", podspec.CRI_SANDBOX_ID: "sb-2"},
}


@pytest.mark.unit
def test_a_pods_sandbox_and_container_are_found_by_uid_and_name() -> None:
    entries = [
        listed("pause", podspec.CRI_TYPE_SANDBOX),
        listed(
            "old",
            podspec.CRI_TYPE_CONTAINER,
            status="stopped",
            **{podspec.CRI_CONTAINER_NAME: "app"},
        ),
        listed("app", podspec.CRI_TYPE_CONTAINER, **{podspec.CRI_CONTAINER_NAME: "app"}),
    ]
    assert podspec.pod_sandbox(entries, UID) == entries[0]
    assert podspec.pod_container(entries, UID, "app") == entries[2]
    assert podspec.pod_container(entries, UID, "other") is None
    assert podspec.pod_sandbox(entries, "another-uid") is None


@pytest.mark.unit
def test_the_restore_spec_moves_the_container_into_the_wake_pod() -> None:
    spec = podspec.restore_spec(
        CHECKPOINTED,
        HELD,
        sandbox_pid=999,
        rootfs=Path("/held/rootfs"),
        cgroups_path=podspec.sibling_cgroup(HELD, "kocoon-x"),
        annotations={podspec.RESTORED_POD_UID: "uid-2"},
    )
    namespaces = {ns["type"]: ns.get("path") for ns in spec["linux"]["namespaces"]}
    assert namespaces == {
        "pid": None,
        "network": "/proc/999/ns/net",
        "ipc": "/proc/999/ns/ipc",
        "mount": None,
    }
    sources = {m["destination"]: m["source"] for m in spec["mounts"]}
    assert sources == {
        "/proc": "proc",
        "/etc/hosts": "/new/pods/uid-2/etc-hosts",
        "/workspace": "/new/pods/uid-2/volumes/workspace",
    }
    assert spec["root"]["path"] == "/held/rootfs"
    assert spec["linux"]["cgroupsPath"] == "/kubepods/besteffort/poduid-2/kocoon-x"
    assert spec["annotations"][podspec.CRI_SANDBOX_ID] == "sb-2"
    assert spec["annotations"][podspec.RESTORED_POD_UID] == "uid-2"
    assert spec["process"] == CHECKPOINTED["process"]
    assert CHECKPOINTED["mounts"][1]["source"] == "/old/pods/uid-1/etc-hosts"  # not modified


@pytest.mark.unit
def test_a_wake_pod_without_a_mount_the_checkpoint_needs_is_refused_by_name() -> None:
    held = {**HELD, "mounts": HELD["mounts"][:1]}
    with pytest.raises(podspec.SpecMismatch, match="mount /workspace"):
        podspec.restore_spec(
            CHECKPOINTED, held, sandbox_pid=1, rootfs=Path("/r"), cgroups_path="/c", annotations={}
        )


@pytest.mark.unit
def test_systemd_cgroup_paths_keep_their_slice() -> None:
    held = {"linux": {"cgroupsPath": "kubepods-pod1.slice:cri-containerd:abc"}}
    assert podspec.sibling_cgroup(held, "kocoon-x") == "kubepods-pod1.slice:cri-containerd:kocoon-x"


@pytest.mark.unit
def test_the_upper_directory_is_read_from_the_containers_root_mount() -> None:
    mountinfo = (
        "98 63 0:49 / / rw,relatime - overlay overlay rw,lowerdir=/s/4/fs:/s/3/fs,"
        "upperdir=/s/6/fs,workdir=/s/6/work,uuid=on\n"
        "99 98 0:50 / /proc rw,nosuid - proc proc rw\n"
    )
    assert podspec.overlay_upperdir(mountinfo) == Path("/s/6/fs")
    assert podspec.overlay_upperdir("99 98 0:50 / /proc rw - proc proc rw\n") is None


@pytest.mark.unit
def test_restored_containers_go_with_their_wake_pod_but_not_while_busy() -> None:
    alive = listed("a", podspec.CRI_TYPE_CONTAINER, **{podspec.HELD_PROCESS: "10:555"})
    orphaned = listed("b", podspec.CRI_TYPE_CONTAINER, **{podspec.HELD_PROCESS: "11:555"})
    exited = listed(
        "c", podspec.CRI_TYPE_CONTAINER, status="stopped", **{podspec.HELD_PROCESS: "10:555"}
    )
    paused = listed(
        "d", podspec.CRI_TYPE_CONTAINER, status="paused", **{podspec.HELD_PROCESS: "12:555"}
    )
    lives = {"10:555"}.__contains__
    found = podspec.orphans([alive, orphaned, exited, paused], lives, busy={"d"})
    assert [entry.id for entry in found] == ["b", "c"]


@pytest.mark.unit
def test_a_process_is_named_by_pid_and_start_time() -> None:
    stat = "4242 (python3 (x)) S 1 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 98765 0"
    assert podspec.process_identity(4242, stat) == "4242:98765"


def _tree(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[relative] = "-> " + os.readlink(path)
        elif path.is_file():
            found[relative] = path.read_text()
        else:
            found[relative] = "/"
    return found


@pytest.mark.criu  # whiteouts are character devices: making them needs root
def test_root_filesystem_changes_are_carried_to_another_root(tmp_path: Path) -> None:
    upper, target, diff = tmp_path / "upper", tmp_path / "target", tmp_path / "diff"
    for directory in (upper / "tmp", upper / "etc", target / "etc", target / "tmp", diff):
        directory.mkdir(parents=True)
    (upper / "tmp" / "state.json").write_text('{"n": 7}')
    (upper / "etc" / "motd").write_text("changed")
    (upper / "link").symlink_to("/tmp/state.json")
    os.mknod(upper / "etc" / "gone", 0o600 | 0o020000, os.makedev(0, 0))  # whiteout
    (target / "etc" / "gone").write_text("image file")
    (target / "etc" / "motd").write_text("image motd")
    (target / "etc" / "kept").write_text("kept")

    summary = rootfsdiff.capture(upper, diff)
    assert summary.deleted == ["etc/gone"]
    rootfsdiff.apply(target, diff)
    assert _tree(target) == {
        "etc": "/",
        "etc/kept": "kept",
        "etc/motd": "changed",
        "link": "-> /tmp/state.json",
        "tmp": "/",
        "tmp/state.json": '{"n": 7}',
    }


@pytest.mark.unit
def test_applying_never_writes_through_a_link_in_the_destination(tmp_path: Path) -> None:
    outside, target, diff = tmp_path / "outside", tmp_path / "target", tmp_path / "diff"
    for directory in (outside, target, diff):
        directory.mkdir()
    (target / "etc").symlink_to(outside)  # e.g. an absolute link in the image
    (target / "motd").symlink_to(outside / "motd")
    _write_diff(diff, [("etc", None), ("etc/passwd", b"evil"), ("motd", b"hello")])
    rootfsdiff.apply(target, diff)
    assert list(outside.iterdir()) == []
    assert (target / "etc").is_dir()
    assert not (target / "etc").is_symlink()
    assert (target / "etc" / "passwd").read_bytes() == b"evil"
    assert not (target / "motd").is_symlink()


@pytest.mark.unit
@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../escape"])
def test_entries_leaving_the_root_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "target").mkdir()
    (tmp_path / "diff").mkdir()
    _write_diff(tmp_path / "diff", [(name, b"x")])
    with pytest.raises(rootfsdiff.UnsafeEntry, match="leaves the root"):
        rootfsdiff.apply(tmp_path / "target", tmp_path / "diff")
    assert not (tmp_path / "escape").exists()


def _write_diff(diff: Path, entries: list[tuple[str, bytes | None]]) -> None:
    with tarfile.open(diff / rootfsdiff.DIFF_TAR, "w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.uid, info.gid = os.getuid(), os.getgid()
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    (diff / rootfsdiff.DIFF_META).write_text(json.dumps({"deleted": [], "opaque": []}))
