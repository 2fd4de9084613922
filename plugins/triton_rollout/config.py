"""Typed per-model deployment config: everything the pods, manifests and DAGs need to know about one model.

Validated once, at construction, with errors that name the field by its path in the source document
(``models[2].kubernetes.resources.sync.limits.memory``), because the DAG factory loads these from a
YAML/JSON file that a person edits. ``from_dict`` rejects unknown keys: a typo must not silently fall
back to a default (e.g. ``tolerations`` misspelt would schedule GPU builds nowhere).

Defaults suit a real cluster: non-root user 1000, modest sync resources, a GPU build pod that asks for
its GPUs, shared memory and scratch space explicitly.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .errors import ConfigError
from .manifest import validate_name
from .s3io import S3Uri

# RFC 1123 label (namespaces, service accounts) and subdomain (secrets, PVC claims) names.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A Kubernetes resource quantity: 500m, 2, 1.5, 4Gi, 100M, 1e3.
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# registry/repo[:tag][@digest]; no whitespace, no shell characters.
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[a-f0-9]{64})?$")
_IAM_ROLE = re.compile(r"^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}$")
_RESOURCE_NAME = re.compile(r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")

TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
GPU_RESOURCE = "nvidia.com/gpu"
# The label NVIDIA's GPU feature discovery puts on nodes (e.g. NVIDIA-H100-80GB-HBM3).
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"config field '{path}': {message}")


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: set[str], path: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _str(value: object, path: str, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"must be a non-empty string, got {value!r}")
    if pattern is not None and not pattern.match(value):
        raise _fail(path, f"{value!r} is not a valid {what}")
    return value


def _int(value: object, path: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise _fail(path, f"must be {bound}, got {value}")
    return value


def _labels(value: object, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, val in _mapping(value, path).items():
        prefix, _, name = key.rpartition("/") if isinstance(key, str) else ("", "", "")
        if not name or not _LABEL_NAME.match(name) or (prefix and not _DNS_SUBDOMAIN.match(prefix)):
            raise _fail(f"{path}.{key}", "is not a valid Kubernetes label key")
        if not isinstance(val, str) or not _LABEL_VALUE.match(val):
            raise _fail(f"{path}.{key}", f"label value {val!r} is not valid (<= 63 chars, alphanumeric, -_.)")
        out[key] = val
    return out


@dataclass(frozen=True)
class ResourceSpec:
    """requests / limits, each a mapping of resource name to quantity (cpu, memory, ephemeral-storage)."""

    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)
    _path: str = field(default="resources", repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind in ("requests", "limits"):
            checked: dict[str, str] = {}
            for name, qty in _mapping(getattr(self, kind), f"{self._path}.{kind}").items():
                where = f"{self._path}.{kind}.{name}"
                if not isinstance(name, str) or not _RESOURCE_NAME.match(name):
                    raise _fail(where, "is not a valid resource name")
                if isinstance(qty, int | float) and not isinstance(qty, bool):
                    qty = str(qty)  # YAML turns `cpu: 2` into an int
                checked[name] = _str(qty, where, _QUANTITY, "Kubernetes quantity (e.g. 500m, 2, 4Gi)")
            object.__setattr__(self, kind, checked)

    @classmethod
    def from_dict(cls, data: object, path: str = "resources") -> ResourceSpec:
        data = _mapping(data, path)
        _check_keys(data, {"requests", "limits"}, path)
        return cls(data.get("requests", {}), data.get("limits", {}), path)


@dataclass(frozen=True)
class Toleration:
    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None
    _path: str = field(default="toleration", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        if self.operator not in TOLERATION_OPERATORS:
            raise _fail(f"{p}.operator", f"must be one of {TOLERATION_OPERATORS}, got {self.operator!r}")
        if self.effect is not None and self.effect not in TAINT_EFFECTS:
            raise _fail(f"{p}.effect", f"must be one of {TAINT_EFFECTS} or absent, got {self.effect!r}")
        if self.operator == "Exists" and self.value:
            raise _fail(f"{p}.value", "must be empty when operator is Exists")
        if self.operator == "Equal" and not self.key:
            raise _fail(f"{p}.key", "is required when operator is Equal")
        if self.key is not None:
            _str(self.key, f"{p}.key")

    @classmethod
    def from_dict(cls, data: object, path: str) -> Toleration:
        data = _mapping(data, path)
        _check_keys(data, {"key", "operator", "value", "effect"}, path)
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
            raise _fail(p, "set exactly one of secret_name (a Secret with the keys) or irsa_role_arn (IRSA)")
        if self.secret_name is not None:
            _str(self.secret_name, f"{p}.secret_name", _DNS_SUBDOMAIN, "Secret name")
        if self.irsa_role_arn is not None:
            _str(self.irsa_role_arn, f"{p}.irsa_role_arn", _IAM_ROLE, "IAM role ARN")
        _str(self.access_key_id_key, f"{p}.access_key_id_key")
        _str(self.secret_access_key_key, f"{p}.secret_access_key_key")
        if self.region is not None:
            _str(self.region, f"{p}.region", re.compile(r"^[a-z0-9-]+$"), "AWS region")
        if self.endpoint_url is not None:
            _url(self.endpoint_url, f"{p}.endpoint_url")

    @classmethod
    def from_dict(cls, data: object, path: str = "aws") -> AwsCredentials:
        data = _mapping(data, path)
        keys = {"secret_name", "irsa_role_arn", "access_key_id_key", "secret_access_key_key", "region",
                "endpoint_url"}
        _check_keys(data, keys, path)
        return cls(**{k: data[k] for k in keys if k in data}, _path=path)


def _url(value: object, path: str) -> str:
    text = _str(value, path)
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise _fail(path, f"must be an http(s) URL, got {text!r}")
    return text.rstrip("/")


@dataclass(frozen=True)
class Images:
    sync: str = "ghcr.io/example/triton-rollout-sync:0.1.0"
    build: str = "ghcr.io/example/triton-rollout-build:0.1.0"
    triton: str = "nvcr.io/nvidia/tritonserver:24.10-trtllm-python-py3"
    _path: str = field(default="images", repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("sync", "build", "triton"):
            _str(getattr(self, name), f"{self._path}.{name}", _IMAGE, "image reference (lowercase, no spaces)")

    @classmethod
    def from_dict(cls, data: object, path: str = "images") -> Images:
        data = _mapping(data, path)
        _check_keys(data, {"sync", "build", "triton"}, path)
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
    _path: str = field(default="kubernetes", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        _str(self.namespace, f"{p}.namespace", _DNS_LABEL, "namespace name (RFC 1123 label)")
        _str(self.pvc_claim, f"{p}.pvc_claim", _DNS_SUBDOMAIN, "PVC claim name")
        _str(self.service_account, f"{p}.service_account", _DNS_SUBDOMAIN, "service account name")
        object.__setattr__(self, "node_selector", _labels(self.node_selector, f"{p}.node_selector"))
        object.__setattr__(self, "build_node_selector", _labels(self.build_node_selector,
                                                                f"{p}.build_node_selector"))
        object.__setattr__(self, "tolerations", tuple(self.tolerations))
        if self.gpu_product is not None:
            _labels({GPU_PRODUCT_LABEL: self.gpu_product}, f"{p}.gpu_product")
        _str(self.shm_size, f"{p}.shm_size", _QUANTITY, "Kubernetes quantity")
        for name in ("pvc_mount_path", "triton_repository_path"):
            mount = _str(getattr(self, name), f"{p}.{name}")
            if not mount.startswith("/") or mount.rstrip("/") in ("", "/tmp", "/dev/shm") or ".." in mount.split("/"):
                raise _fail(f"{p}.{name}", f"must be an absolute path other than /, /tmp, /dev/shm, got {mount!r}")
        for name in ("run_as_user", "run_as_group", "fs_group"):
            # 0 would be root: the pods must not run as root.
            _int(getattr(self, name), f"{p}.{name}", 1, 2**31 - 1)

    @classmethod
    def from_dict(cls, data: object, path: str = "kubernetes") -> KubernetesConfig:
        data = _mapping(data, path)
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        _check_keys(data, names, path)
        kwargs: dict[str, Any] = {k: v for k, v in data.items()}
        if "aws" in data:
            kwargs["aws"] = AwsCredentials.from_dict(data["aws"], f"{path}.aws")
        if "images" in data:
            kwargs["images"] = Images.from_dict(data["images"], f"{path}.images")
        for res in ("sync_resources", "build_resources", "triton_resources"):
            if res in data:
                kwargs[res] = ResourceSpec.from_dict(data[res], f"{path}.{res}")
        if "tolerations" in data:
            if not isinstance(data["tolerations"], list):
                raise _fail(f"{path}.tolerations", "must be a list")
            kwargs["tolerations"] = tuple(
                Toleration.from_dict(t, f"{path}.tolerations[{i}]") for i, t in enumerate(data["tolerations"])
            )
        return cls(**kwargs, _path=path)


@dataclass(frozen=True)
class ModelDeployment:
    """One model's deployment: where its releases are, where it is served, how its pods look.

    Releases live at ``<release_prefix>/<name>/<version>/`` (the S3 release contract).
    """

    name: str
    release_prefix: str
    triton_url: str = "http://triton.triton.svc.cluster.local:8000"
    keep: int = 2
    tp_size: int = 1
    pp_size: int = 1
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    _path: str = field(default="model", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        try:
            validate_name(self.name, field_name=f"{p}.name")
        except Exception as exc:
            raise _fail(f"{p}.name", str(getattr(exc, "message", exc))) from exc
        # Model names also become pod-name parts and label values.
        if not _LABEL_VALUE.match(self.name):
            raise _fail(f"{p}.name", f"{self.name!r} must also be a valid label value (<= 63 chars)")
        _str(self.release_prefix, f"{p}.release_prefix")
        try:
            uri = S3Uri.parse(self.release_prefix)
        except ConfigError as exc:
            raise _fail(f"{p}.release_prefix", exc.message) from exc
        object.__setattr__(self, "release_prefix", f"s3://{uri.bucket}/{uri.key}".rstrip("/"))
        object.__setattr__(self, "triton_url", _url(self.triton_url, f"{p}.triton_url"))
        _int(self.keep, f"{p}.keep", 0, 1000)
        _int(self.tp_size, f"{p}.tp_size", 1, 64)
        _int(self.pp_size, f"{p}.pp_size", 1, 64)

    @property
    def gpus(self) -> int:
        """GPUs an engine build (and a serving replica) needs: one rank per GPU."""
        return self.tp_size * self.pp_size

    def release_uri(self, version: int) -> str:
        _int(version, "version", 1)
        return f"{self.release_prefix}/{self.name}/{version}"

    @classmethod
    def from_dict(cls, data: object, path: str = "model") -> ModelDeployment:
        data = _mapping(data, path)
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        _check_keys(data, names, path)
        for required in ("name", "release_prefix"):
            if required not in data:
                raise _fail(f"{path}.{required}", "is required")
        kwargs = dict(data)
        if "kubernetes" in data:
            kwargs["kubernetes"] = KubernetesConfig.from_dict(data["kubernetes"], f"{path}.kubernetes")
        return cls(**kwargs, _path=path)


def load_models(data: object) -> list[ModelDeployment]:
    """``{"defaults": {...kubernetes...}, "models": [...]}``: each model's kubernetes block overrides defaults."""
    root = _mapping(data, "<root>")
    _check_keys(root, {"defaults", "models"}, "<root>")
    defaults = _mapping(root.get("defaults", {}), "defaults")
    models = root.get("models")
    if not isinstance(models, list) or not models:
        raise _fail("models", "must be a non-empty list")
    out: list[ModelDeployment] = []
    seen: set[str] = set()
    for i, raw in enumerate(models):
        raw = dict(_mapping(raw, f"models[{i}]"))
        if defaults:
            raw["kubernetes"] = _deep_merge(defaults, _mapping(raw.get("kubernetes", {}), f"models[{i}].kubernetes"))
        model = ModelDeployment.from_dict(raw, f"models[{i}]")
        if model.name in seen:
            raise _fail(f"models[{i}].name", f"duplicate model name {model.name!r}")
        seen.add(model.name)
        out.append(model)
    return out


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
