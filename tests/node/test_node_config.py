"""The real node's configuration and the local images' OCI documents, tested as data."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest

from kocoon.devcluster import images, realnode

pytestmark = pytest.mark.unit

NODE = realnode.NodeLayout("dev", Path("/tmp/kocoon-dev-x/node"), 42)


def test_containerd_config_keeps_everything_under_the_node_directory() -> None:
    text = realnode.containerd_config(NODE, "kocoon.local/pause:local", restrict_oom=True)
    config = tomllib.loads(text)
    assert config["version"] == 3
    for key in ("root", "state"):
        assert config[key].startswith(str(NODE.directory))
    assert config["grpc"]["address"] == str(NODE.socket)
    runtime = config["plugins"]["io.containerd.cri.v1.runtime"]
    runc = runtime["containerd"]["runtimes"]["runc"]
    assert runc["options"]["Root"] == str(NODE.runc_root)
    assert runc["options"]["SystemdCgroup"] is False
    assert runtime["netns_mounts_under_state_dir"] is True
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["cni"]["conf_dir"].startswith(str(NODE.directory))
    images_plugin = config["plugins"]["io.containerd.cri.v1.images"]
    assert images_plugin["pinned_images"]["sandbox"] == "kocoon.local/pause:local"


def test_oom_score_is_clamped_only_without_cap_sys_resource() -> None:
    text = realnode.containerd_config(NODE, "p", restrict_oom=False)
    runtime = tomllib.loads(text)["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is False


def test_capability_is_read_from_the_effective_set(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t000001fffeffffff\n")
    assert not realnode.has_capability(realnode.CAP_SYS_RESOURCE, status)
    assert realnode.has_capability(21, status)  # CAP_SYS_ADMIN
    status.write_text("CapEff:\t000001ffffffffff\n")
    assert realnode.has_capability(realnode.CAP_SYS_RESOURCE, status)


def test_pod_network_avoids_kwok_loopback_and_service_ranges() -> None:
    subnet = ipaddress.ip_network(NODE.pod_subnet)
    assert not subnet.overlaps(ipaddress.ip_network("127.0.0.0/8"))
    assert not subnet.overlaps(ipaddress.ip_network("10.96.0.0/16"))
    assert ipaddress.ip_address(NODE.node_ip) in subnet
    assert len(NODE.bridge) <= 15  # the kernel's interface name limit


def test_cni_config_is_a_bridge_without_masquerade() -> None:
    config = realnode.cni_config(NODE)
    (bridge,) = config["plugins"]
    assert bridge["type"] == "bridge"
    assert bridge["bridge"] == NODE.bridge
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": NODE.pod_subnet, "gateway": NODE.node_ip}]]
    assert bridge["ipam"]["dataDir"].startswith(str(NODE.directory))


def test_kubelet_config_for_a_cgroup_v1_host() -> None:
    config = realnode.kubelet_config(NODE, 12345, 12346)
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["cgroupRoot"] == "/kocoon-dev"
    assert config["containerRuntimeEndpoint"] == f"unix://{NODE.socket}"
    assert config["port"] == 12345
    assert config["healthzBindAddress"] == "127.0.0.1"
    assert config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["registerWithTaints"] == [realnode.REAL_NODE_TAINT]
    assert config["featureGates"]["ContainerCheckpoint"] is True
    assert config["podLogsDir"].startswith(str(NODE.directory))


def test_pod_manifest_targets_the_real_node_and_never_pulls() -> None:
    pod = realnode.pod_manifest("p", images.reference(images.PYTHON), port=8080)
    spec = pod["spec"]
    assert spec["nodeSelector"] == {realnode.REAL_NODE_LABEL: "true"}
    (toleration,) = spec["tolerations"]
    assert toleration["key"] == realnode.REAL_NODE_TAINT["key"]
    assert toleration["effect"] == "NoSchedule"
    assert spec["runtimeClassName"] == "runc"
    (container,) = spec["containers"]
    assert container["imagePullPolicy"] == "Never"
    assert container["image"] == "kocoon.local/python:local"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}


def test_oci_documents_chain_by_digest() -> None:
    layer = images.Blob(digest="sha256:" + "a" * 64, size=10, diff_id="sha256:" + "b" * 64)
    config = images.config_document(images.ImageConfig(cmd=("/x",), exposed_ports=(80,)), [layer])
    assert config["rootfs"]["diff_ids"] == [layer.diff_id]
    assert config["config"]["Cmd"] == ["/x"]
    assert config["config"]["ExposedPorts"] == {"80/tcp": {}}
    config_bytes = json.dumps(config).encode()
    manifest = images.manifest_document(images.digest_of(config_bytes), len(config_bytes), [layer])
    assert manifest["config"]["digest"] == images.digest_of(config_bytes)
    assert manifest["layers"][0]["digest"] == layer.digest
    index = images.index_document("kocoon.local/x:local", "sha256:" + "c" * 64, 5)
    annotations = index["manifests"][0]["annotations"]
    assert annotations[images.ANNOTATION_CONTAINERD_NAME] == "kocoon.local/x:local"
    assert annotations[images.ANNOTATION_REF_NAME] == "local"


def test_content_key_changes_with_any_input() -> None:
    assert images.content_key("a", b"b") == images.content_key("a", b"b")
    assert images.content_key("a", b"b") != images.content_key("a", b"c")
    assert images.content_key("ab") != images.content_key("a", "b")


def test_debian_mirror_comes_from_the_machines_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: x\n"
    )
    assert images.debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_debian_mirror_from_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    )
    assert images.debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_missing_mirror_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(images.ImageBuildError, match="add one"):
        images.debian_mirror(tmp_path)
