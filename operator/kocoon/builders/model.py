"""ModelDeployment → its replica pods, Service, model cache claim, NetworkPolicy and GPU claim.

Pure: the deployment's identity, spec and the settings in, manifests out. The engine's own
container comes from `builders.engines`; this module puts it in a hardened pod (the same
security context and runtime-class default as a Sandbox's pod), mounts the weights read-only
at `MODEL_PATH` and adds what the source needs:

- `pvc://claim/path`: the claim, read-only, `path` as the mount's subPath;
- `oci://image`: an image volume (Kubernetes ≥ 1.33) with the settings' pull policy;
- `s3://bucket/key`: an init container running the AWS CLI's own image (`aws s3 cp`, or
  `aws s3 sync` for `s3://bucket/prefix/`) against `model.s3.endpoint`, path-style, into the
  cache volume (or a scratch volume without `cache`); a file already there is kept;
- `hf://org/name`: an init container calling huggingface_hub's `snapshot_download` into the
  cache volume (or a scratch volume), in the engine's image or `hf_download_image`.
"""

from __future__ import annotations

import ipaddress
import posixpath
from typing import Any
from urllib.parse import urlsplit

from kocoon import contract
from kocoon.api.model import (
    S3_ACCESS_KEY_ID_KEY,
    S3_SECRET_ACCESS_KEY_KEY,
    ModelDeploymentSpec,
    ModelSource,
)
from kocoon.builders import engines, gpu, names, pod
from kocoon.builders.context import BuildSettings, Identity
from kocoon.builders.network import DNS_PORTS
from kocoon.defaults import runtime_class_for

KIND = "ModelDeployment"
NAME_PREFIX = "kocoon-model-"
COMPONENT = "model"
# Where the engine finds the weights (read-only), and where an init container downloads them.
MODEL_PATH = "/models/source"
DOWNLOAD_PATH = "/models/download"
MODEL_VOLUME = "model"
SCRATCH_VOLUME = "scratch"
SHM_VOLUME = "shm"
S3_INIT_CONTAINER = "download-s3"
HF_INIT_CONTAINER = "download-hf"
HF_PORT = 443


class ModelSourceError(ValueError):
    """The source cannot be read with these settings; the message names the field."""


# --- names ----------------------------------------------------------------------------------


def replica_pod_name(deployment: str, index: int) -> str:
    """`kocoon-model-<name>-<i>`: one fixed name per replica slot, so a second create is a 409."""
    return f"{NAME_PREFIX}{deployment}-{index}"


def service_name(deployment: str) -> str:
    return f"{NAME_PREFIX}{deployment}"


def cache_claim_name(deployment: str) -> str:
    return f"{NAME_PREFIX}{deployment}-cache"


def network_policy_name(deployment: str) -> str:
    return f"{NAME_PREFIX}{deployment}"


def gpu_claim_template_name(deployment: str) -> str:
    return f"{NAME_PREFIX}{deployment}-gpu"


def labels(deployment: str, component: str = COMPONENT) -> dict[str, str]:
    return {
        contract.MODEL_LABEL: deployment,
        names.COMPONENT_LABEL: component,
        names.MANAGED_BY_LABEL: names.MANAGED_BY,
    }


def selector(deployment: str) -> str:
    """The replicas' label selector as a string: `status.selector` for the scale subresource."""
    return f"{contract.MODEL_LABEL}={deployment}"


def served_model_name(owner: Identity, spec: ModelDeploymentSpec) -> str:
    """What clients send in `model`: `route.servedModelName`, else the deployment's name."""
    return spec.route.served_model_name or owner.name


def _metadata(owner: Identity, name: str, component: str = COMPONENT) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner.name, component),
        "ownerReferences": [
            names.owner_reference(owner.kind, owner.name, owner.uid, owner.api_version)
        ],
    }


# --- the model source -----------------------------------------------------------------------


def _split(source: ModelSource) -> tuple[str, str]:
    """(first segment, rest) of the location: (claim, path), (bucket, key), (org, name)."""
    head, _, rest = source.location.partition("/")
    return head, rest


def is_directory(source: ModelSource) -> bool:
    """Whether an `s3://` source is a prefix (ends in `/`, or the whole bucket)."""
    _, key = _split(source)
    return key == "" or key.endswith("/")


def download_dir(source: ModelSource) -> str | None:
    """The directory, relative to the download volume, a downloaded source lands in; None for
    sources that are mounted, not downloaded."""
    if source.scheme == "s3":
        bucket, key = _split(source)
        stem = key.rstrip("/")
        if not is_directory(source):
            stem = posixpath.dirname(stem)
        return posixpath.join("s3", bucket, stem) if stem else posixpath.join("s3", bucket)
    if source.scheme == "hf":
        return posixpath.join("hf", source.location, source.revision or "main")
    return None


def model_path(spec: ModelDeploymentSpec) -> str:
    """What the engine is given as its model: `MODEL_PATH`, the file of an `s3://` object,
    and `model.path` inside either."""
    source = spec.model
    base = MODEL_PATH
    if source.scheme == "s3" and not is_directory(source):
        base = posixpath.join(MODEL_PATH, posixpath.basename(_split(source)[1]))
    return posixpath.join(base, source.path) if source.path else base


def _source_volume(
    owner: Identity, spec: ModelDeploymentSpec, settings: BuildSettings
) -> dict[str, Any]:
    source = spec.model
    if source.scheme == "pvc":
        claim, _ = _split(source)
        return {
            "name": MODEL_VOLUME,
            "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
        }
    if source.scheme == "oci":
        return {
            "name": MODEL_VOLUME,
            "image": {"reference": source.location, "pullPolicy": settings.model_image_pull_policy},
        }
    if spec.cache is not None:
        return {
            "name": MODEL_VOLUME,
            "persistentVolumeClaim": {"claimName": cache_claim_name(owner.name)},
        }
    return {"name": MODEL_VOLUME, "emptyDir": {}}


def _source_mount(spec: ModelDeploymentSpec) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": MODEL_VOLUME, "mountPath": MODEL_PATH, "readOnly": True}
    source = spec.model
    if source.scheme == "pvc":
        _, path = _split(source)
        if path.strip("/"):
            mount["subPath"] = path.strip("/")
    sub = download_dir(source)
    if sub is not None:
        mount["subPath"] = sub
    return mount


S3_SCRIPT = """set -eu
printf '[default]\\ns3 =\\n    addressing_style = path\\n' > "$AWS_CONFIG_FILE"
dest="$DOWNLOAD_DIR/$TARGET"
mkdir -p "$dest"
s3() { aws s3 "$@" --no-progress --only-show-errors --endpoint-url "$S3_ENDPOINT"; }
case "$SOURCE" in
  */) s3 sync "$SOURCE" "$dest" ;;
  *) file="$dest/$(basename "$SOURCE")"
     if [ ! -s "$file" ]; then
       s3 cp "$SOURCE" "$file.part"
       mv "$file.part" "$file"
     fi ;;
esac
"""

HF_SCRIPT = (
    "import os\n"
    "from huggingface_hub import snapshot_download\n"
    "snapshot_download(repo_id=os.environ['HF_REPO'],"
    " revision=os.environ.get('HF_REVISION') or None,"
    " local_dir=os.path.join(os.environ['DOWNLOAD_DIR'], os.environ['TARGET']))\n"
)


def _download_mounts() -> list[dict[str, Any]]:
    return [
        {"name": MODEL_VOLUME, "mountPath": DOWNLOAD_PATH},
        {"name": SCRATCH_VOLUME, "mountPath": engines.SCRATCH_PATH},
    ]


def _s3_init(spec: ModelDeploymentSpec, settings: BuildSettings) -> dict[str, Any]:
    source, s3 = spec.model, spec.model.s3
    if s3 is None:  # the API requires it; a spec built around the API still gets a clear error
        raise ModelSourceError("model.s3: endpoint and credentialsSecretRef are required for s3://")
    bucket, key = _split(source)
    uri = f"s3://{bucket}/{key}" if key else f"s3://{bucket}/"
    secret = s3.credentials_secret_ref.name
    env: list[dict[str, Any]] = [
        {"name": "SOURCE", "value": uri},
        {"name": "S3_ENDPOINT", "value": s3.endpoint.rstrip("/")},
        {"name": "AWS_DEFAULT_REGION", "value": s3.region},
        {"name": "AWS_CONFIG_FILE", "value": f"{engines.SCRATCH_PATH}/aws-config"},
        {"name": "HOME", "value": engines.SCRATCH_PATH},
        {"name": "DOWNLOAD_DIR", "value": DOWNLOAD_PATH},
        {"name": "TARGET", "value": download_dir(source) or ""},
    ]
    for key_name in (S3_ACCESS_KEY_ID_KEY, S3_SECRET_ACCESS_KEY_KEY):
        env.append(
            {"name": key_name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key_name}}}
        )
    return {
        "name": S3_INIT_CONTAINER,
        "image": settings.s3_download_image,
        "command": ["/bin/sh", "-c", S3_SCRIPT],
        "env": env,
        "volumeMounts": _download_mounts(),
        "securityContext": container_security(settings),
    }


def _hf_init(spec: ModelDeploymentSpec, settings: BuildSettings) -> dict[str, Any]:
    source = spec.model
    image = settings.hf_download_image
    if image is None:
        if not engines.has_python(spec.engine.type) and spec.engine.image is None:
            raise ModelSourceError(
                f"model.uri: hf:// sources need huggingface_hub, which the {spec.engine.type}"
                " image does not have: set hfDownloadImage in the operator configuration, or"
                " use a pvc://, s3:// or oci:// source"
            )
        image = spec.engine.image or engines.default_image(spec.engine.type, settings)
    env: list[dict[str, Any]] = [
        {"name": "HF_REPO", "value": source.location},
        {"name": "HF_HOME", "value": f"{engines.SCRATCH_PATH}/hf"},
        {"name": "HOME", "value": engines.SCRATCH_PATH},
        {"name": "DOWNLOAD_DIR", "value": DOWNLOAD_PATH},
        {"name": "TARGET", "value": download_dir(source) or ""},
    ]
    if source.revision:
        env.append({"name": "HF_REVISION", "value": source.revision})
    if source.hf is not None and source.hf.token_secret_ref is not None:
        ref = source.hf.token_secret_ref
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    return {
        "name": HF_INIT_CONTAINER,
        "image": image,
        "command": ["python3", "-c", HF_SCRIPT],
        "env": env,
        "volumeMounts": _download_mounts(),
        "securityContext": container_security(settings),
    }


def init_containers(spec: ModelDeploymentSpec, settings: BuildSettings) -> list[dict[str, Any]]:
    """The download step of `s3://` and `hf://` sources; none for mounted sources."""
    if spec.model.scheme == "s3":
        return [_s3_init(spec, settings)]
    if spec.model.scheme == "hf":
        return [_hf_init(spec, settings)]
    return []


# --- the pod --------------------------------------------------------------------------------


def runtime_class(spec: ModelDeploymentSpec, settings: BuildSettings) -> str:
    """As for a Sandbox: the spec's, else the configured default (the GPU one with a GPU)."""
    return runtime_class_for(spec.runtime_class_name, spec.gpu is not None, settings)


def container_security(settings: BuildSettings) -> dict[str, Any]:
    """No privilege, no escalation, no capability, seccomp RuntimeDefault; non-root under pod
    hardening. The engine is trusted less than the operator, like a Sandbox's workload."""
    security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if settings.pod_hardening:
        security["runAsNonRoot"] = True
    return security


def engine_container(
    owner: Identity, spec: ModelDeploymentSpec, settings: BuildSettings
) -> engines.EngineContainer:
    """The engine's container as its builder makes it (before the pod adds mounts and limits)."""
    return engines.build(
        engines.EngineInputs(
            spec=spec,
            model_path=model_path(spec),
            served_model_name=served_model_name(owner, spec),
            settings=settings,
        )
    )


def _resources(spec: ModelDeploymentSpec, settings: BuildSettings) -> dict[str, Any]:
    resources: dict[str, Any] = spec.resources.to_wire() if spec.resources else {}
    limits = gpu.extended_resources(spec.gpu, settings)
    if limits:
        resources["limits"] = {**resources.get("limits", {}), **limits}
    if spec.gpu is not None and spec.gpu.mode == "dra":
        resources["claims"] = [{"name": gpu.DRA_CLAIM_NAME}]
    return resources


def replica_pod(
    owner: Identity,
    spec: ModelDeploymentSpec,
    settings: BuildSettings,
    index: int,
    *,
    restore_from: str | None = None,
    node_name: str | None = None,
    hold_for_restore: bool = False,
) -> dict[str, Any]:
    """Replica `index`'s pod. `restore_from` names a checkpoint to restore (wakeStrategy
    checkpoint), `node_name` prefers the node holding it, and `hold_for_restore` runs the hold
    command in place of the engine until the node agent restores the engine beside it (the
    same protocol as a Sandbox's pod)."""
    engine = engine_container(owner, spec, settings)
    container = dict(engine.container)
    container["securityContext"] = container_security(settings)
    resources = _resources(spec, settings)
    if resources:
        container["resources"] = resources
    mounts = [
        _source_mount(spec),
        {"name": SCRATCH_VOLUME, "mountPath": engines.SCRATCH_PATH},
    ]
    volumes: list[dict[str, Any]] = [
        _source_volume(owner, spec, settings),
        {"name": SCRATCH_VOLUME, "emptyDir": {}},
    ]
    if engine.needs_shm:
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
        volumes.append(
            {
                "name": SHM_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": settings.engine_shm_size},
            }
        )
    container["volumeMounts"] = mounts
    hold = hold_for_restore and bool(restore_from)
    if hold:
        container["command"] = list(settings.restore_hold_command)
        container.pop("args", None)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            container.pop(probe, None)
    pod_spec: dict[str, Any] = {
        "runtimeClassName": runtime_class(spec, settings),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": engine.termination_grace_period_seconds,
        # The pod-level rule of a Sandbox's pod, one definition for both.
        "securityContext": pod._pod_security(settings),
        "containers": [container],
        "volumes": volumes,
    }
    inits = [] if hold else init_containers(spec, settings)
    if inits:
        pod_spec["initContainers"] = inits
    if spec.gpu is not None and spec.gpu.mode == "dra":
        pod_spec["resourceClaims"] = [
            {
                "name": gpu.DRA_CLAIM_NAME,
                "resourceClaimTemplateName": gpu_claim_template_name(owner.name),
            }
        ]
    if node_name:
        pod_spec["affinity"] = pod.prefer_node(node_name)
    metadata = _metadata(owner, replica_pod_name(owner.name, index))
    metadata["labels"][contract.REPLICA_LABEL] = str(index)
    annotations = dict(engine.annotations)
    if restore_from:
        annotations[names.RESTORE_FROM_ANNOTATION] = restore_from
        if hold:
            annotations[names.HOLD_FOR_RESTORE_ANNOTATION] = "true"
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


# --- the objects around the pods ------------------------------------------------------------


def service(owner: Identity) -> dict[str, Any]:
    """A ClusterIP Service over the ready replicas, for in-cluster clients that skip the router."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, service_name(owner.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": {contract.MODEL_LABEL: owner.name},
            "ports": [
                {
                    "name": engines.PORT_NAME,
                    "port": contract.ENGINE_PORT,
                    "targetPort": engines.PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def cache_claim(owner: Identity, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """The model cache (`spec.cache`): downloads land here once and every start reuses them.
    ReadWriteOnce: replicas on other nodes need a storage class that can attach it there."""
    if spec.cache is None:
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(spec.cache.size)}},
    }
    if spec.cache.storage_class_name:
        claim_spec["storageClassName"] = spec.cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(owner, cache_claim_name(owner.name), "model-cache"),
        "spec": claim_spec,
    }


def gpu_claim_template(owner: Identity, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    """The ResourceClaimTemplate of a DRA slice (`builders.gpu`), named for the deployment."""
    template = gpu.claim_template(owner, spec.gpu)
    if template is None:
        return None
    template["metadata"] = _metadata(owner, gpu_claim_template_name(owner.name), "gpu")
    return template


def _source_egress(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """What the download step must reach. A NetworkPolicy cannot name hosts, so a named
    endpoint is allowed by port alone; an IP endpoint by address and port."""
    source = spec.model
    if source.scheme == "s3" and source.s3 is not None:
        url = urlsplit(source.s3.endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": port}]}
        host = url.hostname or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return [rule]
        prefix = 32 if address.version == 4 else 128
        rule["to"] = [{"ipBlock": {"cidr": f"{address}/{prefix}"}}]
        return [rule]
    if source.scheme == "hf":
        return [{"ports": [{"protocol": "TCP", "port": HF_PORT}]}]
    return []


def network_policy(
    owner: Identity, spec: ModelDeploymentSpec, settings: BuildSettings
) -> dict[str, Any]:
    """Ingress to the engine's port only from the router (requests) and the operator (sleep and
    wake); egress only to DNS and to the model source's download endpoint."""
    peers = [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": settings.router_namespace}
            },
            "podSelector": {"matchLabels": dict(pod_labels)},
        }
        for pod_labels in (settings.router_pod_labels, settings.operator_pod_labels)
    ]
    egress: list[dict[str, Any]] = [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": settings.dns_namespace}
                    },
                    "podSelector": {"matchLabels": dict(settings.dns_pod_labels)},
                }
            ],
            "ports": DNS_PORTS,
        },
        *_source_egress(spec),
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(owner, network_policy_name(owner.name)),
        "spec": {
            "podSelector": {"matchLabels": {contract.MODEL_LABEL: owner.name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": peers,
                    "ports": [{"protocol": "TCP", "port": contract.ENGINE_PORT}],
                }
            ],
            "egress": egress,
        },
    }


def activity_lease(owner: Identity) -> dict[str, Any]:
    """The Lease the router writes the deployment's demand to; the operator applies only its
    identity (labels, owner), the router owns `spec` and the activity annotations."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": contract.activity_lease_name(contract.TARGET_KIND_MODEL, owner.name),
            "namespace": owner.namespace,
            "labels": {
                **labels(owner.name, "activity"),
                contract.TARGET_KIND_LABEL: contract.TARGET_KIND_MODEL,
                contract.TARGET_NAME_LABEL: owner.name,
            },
            "ownerReferences": [
                names.owner_reference(owner.kind, owner.name, owner.uid, owner.api_version)
            ],
        },
    }


def children(
    owner: Identity, spec: ModelDeploymentSpec, settings: BuildSettings
) -> list[dict[str, Any]]:
    """Everything a deployment owns besides its replica pods and its Lease: the Service, the
    NetworkPolicy, and the cache claim and GPU claim template when the spec has them."""
    objects = [service(owner), network_policy(owner, spec, settings)]
    for optional in (cache_claim(owner, spec), gpu_claim_template(owner, spec)):
        if optional is not None:
            objects.append(optional)
    return objects


def identity(name: str, namespace: str, uid: str) -> Identity:
    """The owner of a deployment's objects."""
    return Identity(name=name, namespace=namespace, uid=uid, kind=KIND)
