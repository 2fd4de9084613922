"""The Kubernetes side of a model's deployment: namespace, PVC, service account, images, credentials,
resources, scheduling (node selectors, tolerations, GPU product) and the pods' security context.

Defaults suit a real cluster: non-root user 1000, modest sync resources, a GPU build pod that asks for
its GPUs, shared memory and scratch space explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from triton_rollout.config.validators import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    IAM_ROLE,
    IMAGE,
    QUANTITY,
    RESOURCE_NAME,
    check_keys,
    fail,
    field_names,
    integer,
    labels,
    mapping,
    string,
    url,
)

TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
GPU_RESOURCE = "nvidia.com/gpu"
# The label NVIDIA's GPU feature discovery puts on nodes (e.g. NVIDIA-H100-80GB-HBM3).
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
_AWS_REGION = re.compile(r"^[a-z0-9-]+$")


@dataclass(frozen=True)
class ResourceSpec:
    """requests / limits, each a mapping of resource name to quantity (cpu, memory, ephemeral-storage)."""

    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)
    _path: str = field(default="resources", repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind in ("requests", "limits"):
            checked: dict[str, str] = {}
            for name, qty in mapping(getattr(self, kind), f"{self._path}.{kind}").items():
                where = f"{self._path}.{kind}.{name}"
                if not isinstance(name, str) or not RESOURCE_NAME.match(name):
                    raise fail(where, "is not a valid resource name")
                if isinstance(qty, int | float) and not isinstance(qty, bool):
                    qty = str(qty)  # YAML turns `cpu: 2` into an int
                checked[name] = string(qty, where, QUANTITY, "Kubernetes quantity (e.g. 500m, 2, 4Gi)")
            object.__setattr__(self, kind, checked)

    @classmethod
    def from_dict(cls, data: object, path: str = "resources") -> ResourceSpec:
        data = mapping(data, path)
        check_keys(data, {"requests", "limits"}, path)
        return cls(data.get("requests", {}), data.get("limits", {}), path)


@dataclass(frozen=True)
class Toleration:
    """One pod toleration of a node taint (GPU nodes are usually tainted)."""

    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None
    _path: str = field(default="toleration", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        if self.operator not in TOLERATION_OPERATORS:
            raise fail(f"{p}.operator", f"must be one of {TOLERATION_OPERATORS}, got {self.operator!r}")
        if self.effect is not None and self.effect not in TAINT_EFFECTS:
            raise fail(f"{p}.effect", f"must be one of {TAINT_EFFECTS} or absent, got {self.effect!r}")
        if self.operator == "Exists" and self.value:
            raise fail(f"{p}.value", "must be empty when operator is Exists")
        if self.operator == "Equal" and not self.key:
            raise fail(f"{p}.key", "is required when operator is Equal")
        if self.key is not None:
            string(self.key, f"{p}.key")

    @classmethod
    def from_dict(cls, data: object, path: str) -> Toleration:
        data = mapping(data, path)
        check_keys(data, {"key", "operator", "value", "effect"}, path)
        return cls(data.get("key"), data.get("operator", "Equal"), data.get("value"), data.get("effect"), path)


@dataclass(frozen=True)
class AwsCredentials:
    """Where pods get S3 credentials: a Secret (key names configurable) or IRSA, never literal values.

    ``secret_name`` set -> AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY come from secretKeyRef.
    ``irsa_role_arn`` set -> the service account is annotated with the role and no keys are passed.
    ``endpoint_url`` and ``region`` are not secret and travel as plain env (S3-compatible stores).
    """

    secret_name: str | None = None
    irsa_role_arn: str | None = None
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"
    region: str | None = None
    endpoint_url: str | None = None
    _path: str = field(default="aws", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        if (self.secret_name is None) == (self.irsa_role_arn is None):
            raise fail(p, "set exactly one of secret_name (a Secret with the keys) or irsa_role_arn (IRSA)")
        if self.secret_name is not None:
            string(self.secret_name, f"{p}.secret_name", DNS_SUBDOMAIN, "Secret name")
        if self.irsa_role_arn is not None:
            string(self.irsa_role_arn, f"{p}.irsa_role_arn", IAM_ROLE, "IAM role ARN")
        string(self.access_key_id_key, f"{p}.access_key_id_key")
        string(self.secret_access_key_key, f"{p}.secret_access_key_key")
        if self.region is not None:
            string(self.region, f"{p}.region", _AWS_REGION, "AWS region")
        if self.endpoint_url is not None:
            url(self.endpoint_url, f"{p}.endpoint_url")

    @classmethod
    def from_dict(cls, data: object, path: str = "aws") -> AwsCredentials:
        data = mapping(data, path)
        keys = {"secret_name", "irsa_role_arn", "access_key_id_key", "secret_access_key_key", "region",
                "endpoint_url"}
        check_keys(data, keys, path)
        return cls(**{k: data[k] for k in keys if k in data}, _path=path)


@dataclass(frozen=True)
class Images:
    """The container images of the sync / promote pods, the build pod and Triton."""

    sync: str = "ghcr.io/example/triton-rollout-sync:0.1.0"
    build: str = "ghcr.io/example/triton-rollout-build:0.1.0"
    # The same NGC release as docker/Dockerfile.build: an engine only loads under the runtime it was built by.
    triton: str = "nvcr.io/nvidia/tritonserver:25.01-trtllm-python-py3"
    _path: str = field(default="images", repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("sync", "build", "triton"):
            string(getattr(self, name), f"{self._path}.{name}", IMAGE, "image reference (lowercase, no spaces)")

    @classmethod
    def from_dict(cls, data: object, path: str = "images") -> Images:
        data = mapping(data, path)
        check_keys(data, {"sync", "build", "triton"}, path)
        return cls(**dict(data), _path=path)


def _default_sync_resources() -> ResourceSpec:
    return ResourceSpec(
        requests={"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "1Gi"},
        limits={"cpu": "2", "memory": "2Gi", "ephemeral-storage": "2Gi"},
    )


def _default_triton_resources() -> ResourceSpec:
    return ResourceSpec(requests={"cpu": "4", "memory": "32Gi"}, limits={"cpu": "8", "memory": "64Gi"})


def _default_build_resources() -> ResourceSpec:
    # trtllm-build is memory hungry (weights are loaded on the host first) and writes large scratch files.
    return ResourceSpec(
        requests={"cpu": "8", "memory": "64Gi", "ephemeral-storage": "200Gi"},
        limits={"cpu": "16", "memory": "128Gi", "ephemeral-storage": "400Gi"},
    )


@dataclass(frozen=True)
class KubernetesConfig:
    """Where and how a model's pods run; every name is validated as Kubernetes would."""

    namespace: str = "triton"
    pvc_claim: str = "triton-model-repository"
    service_account: str = "triton-rollout"
    aws: AwsCredentials = field(default_factory=lambda: AwsCredentials(secret_name="triton-rollout-s3"))
    images: Images = field(default_factory=Images)
    sync_resources: ResourceSpec = field(default_factory=_default_sync_resources)
    build_resources: ResourceSpec = field(default_factory=_default_build_resources)
    triton_resources: ResourceSpec = field(default_factory=_default_triton_resources)
    node_selector: Mapping[str, str] = field(default_factory=dict)  # sync/promote pods
    build_node_selector: Mapping[str, str] = field(default_factory=dict)  # GPU pods (build, Triton) + product
    tolerations: tuple[Toleration, ...] = (
        Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule"),
    )
    gpu_product: str | None = None
    shm_size: str = "16Gi"
    pvc_mount_path: str = "/pvc"  # the whole PVC, in sync / promote pods
    triton_repository_path: str = "/models"  # where Triton mounts the PVC's repository/ (subPath)
    run_as_user: int = 1000
    run_as_group: int = 1000
    fs_group: int = 1000
    # Failed step pods stay for `kubectl logs` / `describe`; the next step task of the model deletes
    # those that failed longer ago than this (0: at once).
    failed_pod_retention_s: int = 86400
    _path: str = field(default="kubernetes", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        string(self.namespace, f"{p}.namespace", DNS_LABEL, "namespace name (RFC 1123 label)")
        string(self.pvc_claim, f"{p}.pvc_claim", DNS_SUBDOMAIN, "PVC claim name")
        string(self.service_account, f"{p}.service_account", DNS_SUBDOMAIN, "service account name")
        object.__setattr__(self, "node_selector", labels(self.node_selector, f"{p}.node_selector"))
        object.__setattr__(self, "build_node_selector", labels(self.build_node_selector, f"{p}.build_node_selector"))
        object.__setattr__(self, "tolerations", tuple(self.tolerations))
        if self.gpu_product is not None:
            labels({GPU_PRODUCT_LABEL: self.gpu_product}, f"{p}.gpu_product")
        string(self.shm_size, f"{p}.shm_size", QUANTITY, "Kubernetes quantity")
        for name in ("pvc_mount_path", "triton_repository_path"):
            mount = string(getattr(self, name), f"{p}.{name}")
            if not mount.startswith("/") or mount.rstrip("/") in ("", "/tmp", "/dev/shm") or ".." in mount.split("/"):
                raise fail(f"{p}.{name}", f"must be an absolute path other than /, /tmp, /dev/shm, got {mount!r}")
        for name in ("run_as_user", "run_as_group", "fs_group"):
            # 0 would be root: the pods must not run as root.
            integer(getattr(self, name), f"{p}.{name}", 1, 2**31 - 1)
        integer(self.failed_pod_retention_s, f"{p}.failed_pod_retention_s", 0)

    @classmethod
    def from_dict(cls, data: object, path: str = "kubernetes") -> KubernetesConfig:
        data = mapping(data, path)
        check_keys(data, field_names(cls), path)
        kwargs: dict[str, Any] = dict(data)
        if "aws" in data:
            kwargs["aws"] = AwsCredentials.from_dict(data["aws"], f"{path}.aws")
        if "images" in data:
            kwargs["images"] = Images.from_dict(data["images"], f"{path}.images")
        for res in ("sync_resources", "build_resources", "triton_resources"):
            if res in data:
                kwargs[res] = ResourceSpec.from_dict(data[res], f"{path}.{res}")
        if "tolerations" in data:
            if not isinstance(data["tolerations"], list):
                raise fail(f"{path}.tolerations", "must be a list")
            kwargs["tolerations"] = tuple(
                Toleration.from_dict(t, f"{path}.tolerations[{i}]") for i, t in enumerate(data["tolerations"])
            )
        return cls(**kwargs, _path=path)
