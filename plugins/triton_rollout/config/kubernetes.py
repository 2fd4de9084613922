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

from triton_rollout.config.storage import StorageConfig
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
    load_section,
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
# The registry of the default sync / build images: a placeholder, refused where pods really run.
PLACEHOLDER_REGISTRY = "ghcr.io/example/"


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
                if not isinstance(name, str) or not RESOURCE_NAME.fullmatch(name):
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
    """The container images of the sync / promote pods, the build pod and Triton.

    sync and build default to placeholders (PLACEHOLDER_REGISTRY) that no cluster can pull: the DAGs refuse
    them at parse (:meth:`require_published`); name the images built from docker/ and pushed instead."""

    sync: str = PLACEHOLDER_REGISTRY + "triton-rollout-sync:0.1.0"
    build: str = PLACEHOLDER_REGISTRY + "triton-rollout-build:0.1.0"
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

    def require_published(self, path: str) -> None:
        """Refuse a placeholder default (``path``: where these images are configured, which a default does
        not know): where pods really run, a placeholder would only be an ErrImagePull after the start-up wait."""
        for name in ("sync", "build", "triton"):
            image = getattr(self, name)
            if image.startswith(PLACEHOLDER_REGISTRY):
                raise fail(f"{path}.{name}", f"is the placeholder {image!r}; build docker/Dockerfile.{name}, "
                                             "push it to a registry the cluster can pull from and name it here")


@dataclass(frozen=True)
class KubernetesApi:
    """How Airflow (its workers, and its triggerer for deferred pods) reaches the Kubernetes API: one way.

    ``in_cluster`` (what is used when nothing is set): the pod's service account, as Airflow on the
    cluster runs. ``config_file``: a kubeconfig (``context``: one of its contexts; the local stack's
    dags/models.yaml passes $KUBECONFIG here). ``conn_id``: an Airflow Kubernetes connection
    (``context`` overrides its cluster_context). Made explicit because the triggerer's async hook,
    unlike the worker's, does not fall back to in-cluster config when none is named (apache/airflow#44325;
    cncf-kubernetes 10.25 hooks/kubernetes.py AsyncKubernetesHook._load_config).
    """

    in_cluster: bool | None = None
    config_file: str | None = None
    context: str | None = None
    conn_id: str | None = None
    _path: str = field(default="api", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        if self.in_cluster is not None and not isinstance(self.in_cluster, bool):
            raise fail(f"{p}.in_cluster", f"must be true or false, got {self.in_cluster!r}")
        chosen = [name for name in ("in_cluster", "config_file", "conn_id") if getattr(self, name)]
        if len(chosen) > 1:
            raise fail(p, f"set exactly one of in_cluster, config_file or conn_id, got {chosen}")
        if not chosen and self.in_cluster is False:
            raise fail(f"{p}.in_cluster", "is false, so name a kubeconfig (config_file) or a connection (conn_id)")
        object.__setattr__(self, "in_cluster", not chosen or chosen == ["in_cluster"])  # resolved: a plain bool
        if self.config_file is not None:
            path = string(self.config_file, f"{p}.config_file")
            if not path.startswith("/") or ":" in path:
                raise fail(f"{p}.config_file", f"must be one absolute kubeconfig path (KubernetesPodOperator reads "
                                               f"one file, not a KUBECONFIG list), got {path!r}")
        if self.conn_id is not None:
            string(self.conn_id, f"{p}.conn_id")
        if self.context is not None:
            string(self.context, f"{p}.context")
            if self.in_cluster:
                raise fail(f"{p}.context", "has no meaning in-cluster; set it with config_file or conn_id")


@dataclass(frozen=True)
class PodStartTimeouts:
    """How long a step pod may take to start, in two waits (cncf-kubernetes 10.25 KubernetesPodOperator
    ``schedule_timeout_seconds`` / ``startup_timeout_seconds``, the same in its deferrable trigger).

    ``schedule_s``: Pending without a node, which covers a node scale-up (cluster autoscaler or Karpenter
    adding a GPU node, its driver and device plugin). ``startup_s``: from scheduled to running, which
    covers the image pull (the build image is ~30 GB) and the volume attach."""

    schedule_s: int = 600
    startup_s: int = 600
    _path: str = field(default="start_timeouts", repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("schedule_s", "startup_s"):
            integer(getattr(self, name), f"{self._path}.{name}", 1, 86400)


def _default_build_start_timeouts() -> PodStartTimeouts:
    # A GPU node from zero takes minutes; pulling ~30 GB takes 10-30 min at registry speeds of 20-50 MB/s.
    return PodStartTimeouts(schedule_s=1800, startup_s=3600)


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
    image_pull_secrets: tuple[str, ...] = ()  # Secret names (docker-registry) every pod pulls its image with
    api: KubernetesApi = field(default_factory=KubernetesApi)
    sync_start_timeouts: PodStartTimeouts = field(default_factory=PodStartTimeouts)  # sync/load/smoke/promote pods
    build_start_timeouts: PodStartTimeouts = field(default_factory=_default_build_start_timeouts)
    storage: StorageConfig = field(default_factory=StorageConfig)  # the PVC: class, size, write access
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
    # The Service of the Triton Deployment (kube/manifests.py renders "triton"): when set, the rollout steps address
    # each replica at its pod IP, one at a time (triton/fleet.py); None: they talk to triton_url only.
    triton_service: str | None = None
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
        if isinstance(self.image_pull_secrets, str) or not isinstance(self.image_pull_secrets, list | tuple):
            raise fail(f"{p}.image_pull_secrets", f"must be a list of Secret names, got {self.image_pull_secrets!r}")
        for i, secret in enumerate(self.image_pull_secrets):
            string(secret, f"{p}.image_pull_secrets[{i}]", DNS_SUBDOMAIN, "Secret name")
        object.__setattr__(self, "image_pull_secrets", tuple(self.image_pull_secrets))
        if self.gpu_product is not None:
            labels({GPU_PRODUCT_LABEL: self.gpu_product}, f"{p}.gpu_product")
        string(self.shm_size, f"{p}.shm_size", QUANTITY, "Kubernetes quantity")
        if self.triton_service is not None:
            string(self.triton_service, f"{p}.triton_service", DNS_LABEL, "Service name (RFC 1123 label)")
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
        if "api" in data:
            kwargs["api"] = load_section(KubernetesApi, data["api"], f"{path}.api")
        for waits in ("sync_start_timeouts", "build_start_timeouts"):
            if waits in data:
                kwargs[waits] = load_section(PodStartTimeouts, data[waits], f"{path}.{waits}")
        if "storage" in data:
            kwargs["storage"] = StorageConfig.from_dict(data["storage"], f"{path}.storage")
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
