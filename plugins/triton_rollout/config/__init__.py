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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from triton_rollout.errors import ConfigError
from triton_rollout.release.compat import ServingCompat
from triton_rollout.release.manifest import validate_name
from triton_rollout.release.s3 import S3Uri

if TYPE_CHECKING:
    from triton_rollout.build.spec import BuildSpec

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
    # The same NGC release as docker/Dockerfile.build: an engine only loads under the runtime it was built by.
    triton: str = "nvcr.io/nvidia/tritonserver:25.01-trtllm-python-py3"
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


def _num(value: object, path: str, minimum: float, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, f"must be a number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum:g}" if maximum is None else f"between {minimum:g} and {maximum:g}"
        raise _fail(path, f"must be {bound}, got {value!r}")
    return float(value)


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"must be true or false, got {value!r}")
    return value


# Airflow's schedule presets; anything else must look like a 5-field cron expression.
SCHEDULE_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight")
_CRON_FIELD = re.compile(r"^[0-9*/,\-A-Za-z?LW#]+$")


def _schedule(value: object, path: str) -> str | None:
    """None (manual and S3-triggered runs only; no backfills), a preset, or a cron expression."""
    if value is None:
        return None
    text = _str(value, path)
    if text in SCHEDULE_PRESETS:
        return text
    fields = text.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise _fail(path, f"{text!r} is neither a preset {SCHEDULE_PRESETS} nor a 5-field cron expression")
    return text


def _section(cls: type, data: object, path: str) -> Any:
    """Build a small settings dataclass from a mapping, rejecting unknown keys."""
    data = _mapping(data, path)
    names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    _check_keys(data, names, path)
    return cls(**dict(data), _path=path)


@dataclass(frozen=True)
class SensorSettings:
    """How the deploy DAG waits for a complete release (manifest.json present) in S3.

    ``timeout_s``: how long one run waits before it is skipped ("nothing new"); None = the schedule's
    interval is not known here, so the factory uses ``DEFAULT_SENSOR_TIMEOUT``.
    """

    poke_interval_s: float = 60.0
    timeout_s: float | None = None
    _path: str = field(default="sensor", repr=False, compare=False)

    def __post_init__(self) -> None:
        _num(self.poke_interval_s, f"{self._path}.poke_interval_s", 0.1, 86400)
        if self.timeout_s is not None:
            _num(self.timeout_s, f"{self._path}.timeout_s", 0, 7 * 86400)


@dataclass(frozen=True)
class SmokeSettings:
    """The candidate's smoke test and load deadlines."""

    latency_budget_s: float = 5.0
    ready_deadline_s: float = 600.0
    _path: str = field(default="smoke", repr=False, compare=False)

    def __post_init__(self) -> None:
        _num(self.latency_budget_s, f"{self._path}.latency_budget_s", 0.01, 3600)
        _num(self.ready_deadline_s, f"{self._path}.ready_deadline_s", 1, 7200)


@dataclass(frozen=True)
class ParamDefaults:
    """Defaults of the deploy DAG's trigger form (scheduled runs use them as they are)."""

    force: bool = False
    skip_smoke: bool = False
    _path: str = field(default="params", repr=False, compare=False)

    def __post_init__(self) -> None:
        _bool(self.force, f"{self._path}.force")
        _bool(self.skip_smoke, f"{self._path}.skip_smoke")


@dataclass(frozen=True)
class BuildSettings:
    """Engine builds for checkpoint releases.

    ``engine_prefix``: where built engines are published (default ``<release prefix>/engines``);
    ``pool``: the Airflow pool GPU builds queue in (each build takes its GPU count in slots, at least 1);
    ``spec``: the engine build spec (``build_spec.BuildSpec``: backend, family, dtype, quantization, tp/pp,
    max lengths, ...), validated here once, so a bad spec is a parse-time error naming
    ``models[i].build.spec.<field>``. ``tp_size`` / ``pp_size`` / ``triton_repository`` default to the
    model's own settings (ModelDeployment.from_dict). Empty: the model has no builder, and a checkpoint
    release of it fails the build task. dtype and the other engine facts live only in the spec.
    """

    engine_prefix: str | None = None
    pool: str = "gpu_builds"
    deferrable: bool = True
    timeout_s: float = 4 * 3600.0
    spec: Mapping[str, Any] = field(default_factory=dict)
    _path: str = field(default="build", repr=False, compare=False)
    # The parsed spec (None when ``spec`` is empty); underscored so config files cannot set it.
    _build_spec: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        if self.engine_prefix is not None:
            key = _str(self.engine_prefix, f"{p}.engine_prefix").strip("/")
            if any(s in ("", ".", "..") for s in key.split("/")):
                raise _fail(f"{p}.engine_prefix", f"{self.engine_prefix!r} has empty, '.' or '..' segments")
        _str(self.pool, f"{p}.pool", re.compile(r"^[A-Za-z0-9_.-]{1,256}$"), "pool name")
        _bool(self.deferrable, f"{p}.deferrable")
        _num(self.timeout_s, f"{p}.timeout_s", 60, 7 * 86400)
        spec = dict(_mapping(self.spec, f"{p}.spec"))
        object.__setattr__(self, "spec", spec)
        if spec:
            # Lazy: build_spec imports this module's validators.
            from triton_rollout.build.spec import BuildSpec

            object.__setattr__(self, "_build_spec", BuildSpec.from_dict(spec, f"{p}.spec"))

    @property
    def build_spec(self) -> BuildSpec | None:
        """The validated engine build spec, or None when this model has no builder."""
        return self._build_spec  # type: ignore[no-any-return]

    @property
    def pool_slots(self) -> int:
        # A CPU (demo) build still takes one slot, so builds queue one at a time in the pool.
        return max(1, self.build_spec.gpus) if self.build_spec is not None else 1


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
    schedule: str | None = "@hourly"
    sensor: SensorSettings = field(default_factory=SensorSettings)
    smoke: SmokeSettings = field(default_factory=SmokeSettings)
    params: ParamDefaults = field(default_factory=ParamDefaults)
    build: BuildSettings = field(default_factory=BuildSettings)
    # What the serving Triton runs (TensorRT-LLM version, GPU compute capability): the sync refuses
    # engine releases built for anything else (compat.py). Unset values are not checked.
    serving: ServingCompat = field(default_factory=ServingCompat)
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
        object.__setattr__(self, "schedule", _schedule(self.schedule, f"{p}.schedule"))
        spec = self.build.build_spec
        if spec is not None and spec.gpus and (spec.tp_size, spec.pp_size) != (self.tp_size, self.pp_size):
            # Triton serves the engine with one rank per GPU: a build for another shape would not load.
            raise _fail(f"{self.build._path}.spec.tp_size",
                        f"the engine would be built for tp={spec.tp_size} x pp={spec.pp_size} but the model is "
                        f"served with tp={self.tp_size} x pp={self.pp_size} ({p}.tp_size / {p}.pp_size); "
                        "set them once, at the model level")

    @property
    def gpus(self) -> int:
        """GPUs an engine build (and a serving replica) needs: one rank per GPU."""
        return self.tp_size * self.pp_size

    def release_uri(self, version: int) -> str:
        _int(version, "version", 1)
        return f"{self.release_prefix}/{self.name}/{version}"

    def engine_uri(self, version: int) -> str:
        """Where the engine built from checkpoint release ``version`` is published."""
        from triton_rollout.release.s3 import ReleaseUri

        return str(ReleaseUri.parse(self.release_uri(version)).engine_release(self.build.engine_prefix))

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
        if "build" in data:
            kwargs["build"] = _section(BuildSettings, _build_defaults(data, path), f"{path}.build")
        for name, section in (("sensor", SensorSettings), ("smoke", SmokeSettings), ("params", ParamDefaults)):
            if name in data:
                kwargs[name] = _section(section, data[name], f"{path}.{name}")
        if "serving" in data:
            kwargs["serving"] = ServingCompat.from_dict(_serving_strings(data["serving"]), f"{path}.serving")
        return cls(**kwargs, _path=path)


def _build_defaults(data: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The build section with its spec's tp_size / pp_size / triton_repository taken from the model when
    absent: the engine is built for the shape and the repository path it is served with, set once."""
    build = _mapping(data["build"], f"{path}.build")
    spec = build.get("spec")
    if not isinstance(spec, Mapping) or not spec:
        return build  # BuildSettings reports a wrong type; empty = no builder
    filled = dict(spec)
    for key in ("tp_size", "pp_size"):
        if key in data:
            filled.setdefault(key, data[key])
    kube = data.get("kubernetes")
    if isinstance(kube, Mapping) and kube.get("triton_repository_path"):
        filled.setdefault("triton_repository", kube["triton_repository_path"])
    return {**build, "spec": filled}


def _serving_strings(data: object) -> object:
    # YAML reads `compute_capability: 9.0` as a float and `80` as an int; both mean the string.
    if not isinstance(data, Mapping):
        return data
    return {k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for k, v in data.items()}


@dataclass(frozen=True)
class ReconcileSettings:
    """The reconcile DAG: how often it checks every model, and when it re-hashes in full.

    ``full_verify_hour``: runs whose logical date falls in this UTC hour re-hash every file (sha256)
    instead of comparing stat records; a run triggered with ``full_verify`` does too.
    """

    schedule: str | None = "*/30 * * * *"
    full_verify_hour: int | None = 3
    _path: str = field(default="reconcile", repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", _schedule(self.schedule, f"{self._path}.schedule"))
        if self.full_verify_hour is not None:
            _int(self.full_verify_hour, f"{self._path}.full_verify_hour", 0, 23)


@dataclass(frozen=True)
class ProjectConfig:
    models: list[ModelDeployment]
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)

    def model(self, name: str) -> ModelDeployment:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"model {name!r} is not configured; configured: {[m.name for m in self.models]}")


def load_project(data: object) -> ProjectConfig:
    """``{"defaults", "models", "reconcile"}``: the models (see load_models) plus the reconcile settings."""
    root = _mapping(data, "<root>")
    reconcile = _section(ReconcileSettings, root.get("reconcile", {}), "reconcile")
    return ProjectConfig(models=load_models({k: v for k, v in root.items() if k != "reconcile"}),
                         reconcile=reconcile)


def load_models(data: object) -> list[ModelDeployment]:
    """``{"defaults": {...}, "models": [...]}``: each model's settings override ``defaults`` (deep merge).

    ``defaults`` takes the same keys as a model except name (release_prefix, triton_url, schedule,
    kubernetes, smoke, ...).
    """
    root = _mapping(data, "<root>")
    _check_keys(root, {"defaults", "models"}, "<root>")
    defaults = dict(_mapping(root.get("defaults", {}), "defaults"))
    # Older files put only the kubernetes block under defaults; both forms are accepted.
    model_keys = {f.name for f in dataclasses.fields(ModelDeployment) if not f.name.startswith("_")} - {"name"}
    if defaults and not set(defaults) & model_keys:
        defaults = {"kubernetes": defaults}
    _check_keys(defaults, model_keys, "defaults")
    models = root.get("models")
    if not isinstance(models, list) or not models:
        raise _fail("models", "must be a non-empty list")
    out: list[ModelDeployment] = []
    seen: set[str] = set()
    for i, raw in enumerate(models):
        raw = _deep_merge(defaults, _mapping(raw, f"models[{i}]")) if defaults else dict(_mapping(raw, f"models[{i}]"))
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


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def expand_env(value: Any, path: str = "<root>", environ: Mapping[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed config document.

    One config file then serves the local stack (whose ports are chosen at start) and a real cluster.
    A string that is exactly one reference and expands to "" becomes null (the field's default), so
    ``endpoint_url: ${AWS_ENDPOINT_URL:-}`` means "AWS itself" when the variable is unset.
    """
    import contextlib
    import json
    import os

    env = os.environ if environ is None else environ
    if isinstance(value, Mapping):
        return {k: expand_env(v, f"{path}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3)
        if name in env and env[name] != "":
            return env[name]
        if default is None:
            raise _fail(path, f"refers to ${{{name}}}, which is not set in the environment "
                              f"(set it, or give a default: ${{{name}:-value}})")
        return default

    out = _ENV_REF.sub(sub, value)
    if _ENV_REF.fullmatch(value):
        if out == "":
            return None
        # A whole-value reference keeps YAML's scalar types: "30" is a number, "true" a boolean.
        with contextlib.suppress(ValueError):
            typed = json.loads(out)
            if isinstance(typed, int | float | bool):
                return typed
    return out


def read_config_file(path: str | Any) -> ProjectConfig:
    """Load the models config file (YAML or JSON), expanding environment references; errors name the file."""
    import json
    from pathlib import Path

    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the models config file {file}: {exc}",
                          hint="set TRITON_ROLLOUT_MODELS to the config file's path") from exc
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(str(exc)) from exc
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{file} is not valid {file.suffix.lstrip('.').upper() or 'JSON'}: {exc}") from exc
    try:
        return load_project(expand_env(data))
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc.message}", hint=exc.hint) from exc
