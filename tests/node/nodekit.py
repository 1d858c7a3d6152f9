"""Helpers of the node tests: run pods on the real node, read JSON, restore a checkpoint."""

from __future__ import annotations

import json
import subprocess
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from kocoon.devcluster import Cluster, binaries, images, realnode


def run_pod(cluster: Cluster, manifest: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Create a pod and wait until it is Ready; returns the pod as the API server has it."""
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    cluster.kubectl("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait")
    cluster.apply(manifest)
    waited = cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        f"pod/{name}",
        "-n",
        namespace,
        f"--timeout={int(timeout)}s",
        check=False,
        timeout=timeout + 10,
    )
    if waited.returncode != 0:
        described = cluster.kubectl("describe", "pod", name, "-n", namespace, check=False)
        pytest.fail(f"pod {name} not Ready: {waited.stderr}\n{described.stdout[-2500:]}")
    got = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json")
    pod: dict[str, Any] = json.loads(got.stdout)
    return pod


def get_json(url: str, timeout: float = 5) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


@dataclass(frozen=True)
class Sandbox:
    """A pod's sandbox as containerd runs it: its id and the pause process holding its
    namespaces."""

    id: str
    pid: int


def _ctr(node: realnode.NodeLayout, *args: str) -> str:
    argv = [str(binaries.find("ctr")), "--address", str(node.socket), "-n", "k8s.io", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def pod_sandbox(node: realnode.NodeLayout, pod: str) -> Sandbox:
    for cid in _ctr(node, "containers", "list", "--quiet").split():
        labels = json.loads(_ctr(node, "containers", "info", cid)).get("Labels", {})
        if labels.get("io.kubernetes.pod.name") == pod and labels.get(SANDBOX_KIND) == "sandbox":
            for line in _ctr(node, "tasks", "list").splitlines():
                fields = line.split()
                if fields and fields[0] == cid:
                    return Sandbox(cid, int(fields[1]))
    raise AssertionError(f"no running sandbox for pod {pod}")


SANDBOX_KIND = "io.cri-containerd.kind"


def unpack_image(name: str, rootfs: Path) -> None:
    """The image's layers, in order, as one directory (what containerd's snapshot holds)."""
    archive = images.archive(images.RECIPES[name]())
    with tarfile.open(archive) as tar:
        index = json.load(_member(tar, "index.json"))
        digest = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.load(_member(tar, f"blobs/sha256/{digest}"))
    for layer in manifest["layers"]:
        blob = images.cache_root() / "blobs" / layer["digest"].replace(":", "/")
        subprocess.run(["tar", "-C", str(rootfs), "-xzf", str(blob)], check=True)


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    member = tar.extractfile(name)
    assert member is not None, name
    return member


def restore_bundle(
    node: realnode.NodeLayout,
    checkpoint: Path,
    image: str,
    into: Sandbox,
    pod_uid: str,
    bundle: Path,
    rootfs: Path | None = None,
) -> Path:
    """An OCI bundle that restores a kubelet checkpoint into another pod's sandbox.

    The root filesystem is the image (unpacked, or `rootfs`: a running container's root of the
    same image) plus the checkpoint's `rootfs-diff.tar`; the spec is the
    checkpointed container's (`spec.dump`) with the shared namespaces, the bind mounts the
    runtime made and the cgroup pointed at the new sandbox. CRIU needs the same mount points;
    their sources may differ.
    """
    if rootfs is None:
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True)
        unpack_image(image, rootfs)
    else:
        bundle.mkdir(parents=True)
    subprocess.run(
        ["tar", "-C", str(rootfs), "-xf", str(checkpoint / "rootfs-diff.tar")], check=True
    )
    spec: dict[str, Any] = json.loads((checkpoint / "spec.dump").read_text())
    spec["root"] = {"path": str(rootfs)}
    for namespace in spec["linux"]["namespaces"]:
        if "path" in namespace:
            kind = "net" if namespace["type"] == "network" else namespace["type"]
            namespace["path"] = f"/proc/{into.pid}/ns/{kind}"
    cri = "io.containerd.grpc.v1.cri/sandboxes"
    termination_log = bundle / "termination-log"
    termination_log.write_text("")
    sources = {
        "/etc/hosts": node.kubelet_root / "pods" / pod_uid / "etc-hosts",
        "/dev/termination-log": termination_log,
        "/etc/hostname": node.directory / "containerd" / "root" / cri / into.id / "hostname",
        "/etc/resolv.conf": node.directory / "containerd" / "root" / cri / into.id / "resolv.conf",
        "/dev/shm": node.containerd_state / cri / into.id / "shm",
    }
    for mount in spec["mounts"]:
        if mount["destination"] in sources:
            mount["source"] = str(sources[mount["destination"]])
    spec["linux"]["cgroupsPath"] = f"{node.cgroup_root}/kocoon-restored/{bundle.name}"
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def container_rootfs(node: realnode.NodeLayout, pod: str, container: str) -> Path:
    """The mounted root filesystem of a running container, as containerd's snapshot gives it."""
    for cid in _ctr(node, "containers", "list", "--quiet").split():
        labels = json.loads(_ctr(node, "containers", "info", cid)).get("Labels", {})
        if (
            labels.get("io.kubernetes.pod.name") == pod
            and labels.get("io.kubernetes.container.name") == container
        ):
            return (
                node.containerd_state / "io.containerd.runtime.v2.task" / "k8s.io" / cid / "rootfs"
            )
    raise AssertionError(f"no container {container} in pod {pod}")
