"""A model's deployment settings (where its releases are, how it is served, built, watched and tested)
and the project's: every model plus the reconcile DAG.

Each dataclass validates itself at construction; ``from_dict`` builds it from the config document and
rejects unknown keys, so a misspelt key is an error rather than a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from triton_rollout.config.kubernetes import KubernetesConfig
from triton_rollout.config.validators import (
    DNS_SUBDOMAIN,
    LABEL_VALUE,
    boolean,
    check_keys,
    fail,
    field_names,
    integer,
    load_section,
    mapping,
    number,
    string,
    url,
)
from triton_rollout.errors import ConfigError
from triton_rollout.release.compat import ServingCompat
from triton_rollout.release.manifest import validate_name
from triton_rollout.release.s3 import ReleaseUri, S3Uri
from triton_rollout.release.signing import PublicKey
from triton_rollout.steps import CANDIDATE_MODES

if TYPE_CHECKING:
    from triton_rollout.build.spec import BuildSpec

# An Airflow pool name (BuildSettings.pool).
_POOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")
# Airflow's schedule presets; anything else must look like a 5-field cron expression.
SCHEDULE_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight")
_CRON_FIELD = re.compile(r"^[0-9*/,\-A-Za-z?LW#]+$")


def _schedule(value: object, path: str) -> str | None:
    """None (manual and S3-triggered runs only; no backfills), a preset, or a cron expression."""
    if value is None:
        return None
    text = string(value, path)
    if text in SCHEDULE_PRESETS:
        return text
    fields = text.split()
    if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
        raise fail(path, f"{text!r} is neither a preset {SCHEDULE_PRESETS} nor a 5-field cron expression")
    return text


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
        number(self.poke_interval_s, f"{self._path}.poke_interval_s", 0.1, 86400)
        if self.timeout_s is not None:
            number(self.timeout_s, f"{self._path}.timeout_s", 0, 7 * 86400)


@dataclass(frozen=True)
class SmokeSettings:
    """The candidate's smoke test and load deadlines."""

    latency_budget_s: float = 5.0
    ready_deadline_s: float = 600.0
    _path: str = field(default="smoke", repr=False, compare=False)

    def __post_init__(self) -> None:
        number(self.latency_budget_s, f"{self._path}.latency_budget_s", 0.01, 3600)
        number(self.ready_deadline_s, f"{self._path}.ready_deadline_s", 1, 7200)


@dataclass(frozen=True)
class ParamDefaults:
    """Defaults of the deploy DAG's trigger form (scheduled runs use them as they are)."""

    force: bool = False
    skip_smoke: bool = False
    _path: str = field(default="params", repr=False, compare=False)

    def __post_init__(self) -> None:
        boolean(self.force, f"{self._path}.force")
        boolean(self.skip_smoke, f"{self._path}.skip_smoke")


@dataclass(frozen=True)
class BuildSettings:
    """Engine builds for checkpoint releases.

    ``engine_prefix``: where built engines are published (default ``<release prefix>/engines``);
    ``pool``: the Airflow pool GPU builds queue in (each build takes its GPU count in slots, at least 1);
    ``spec``: the engine build spec (``build.spec.BuildSpec``: backend, family, dtype, quantization, tp/pp,
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
            key = string(self.engine_prefix, f"{p}.engine_prefix").strip("/")
            if any(s in ("", ".", "..") for s in key.split("/")):
                raise fail(f"{p}.engine_prefix", f"{self.engine_prefix!r} has empty, '.' or '..' segments")
        string(self.pool, f"{p}.pool", _POOL_NAME, "pool name")
        boolean(self.deferrable, f"{p}.deferrable")
        number(self.timeout_s, f"{p}.timeout_s", 60, 7 * 86400)
        spec = dict(mapping(self.spec, f"{p}.spec"))
        object.__setattr__(self, "spec", spec)
        if spec:
            # Lazy: build.spec imports config.validators, which runs this package's __init__ (and so this module).
            from triton_rollout.build.spec import BuildSpec

            object.__setattr__(self, "_build_spec", BuildSpec.from_dict(spec, f"{p}.spec"))

    @property
    def build_spec(self) -> BuildSpec | None:
        """The validated engine build spec, or None when this model has no builder."""
        return self._build_spec  # type: ignore[no-any-return]

    @property
    def pool_slots(self) -> int:
        # A build that needs no GPU still takes one slot, so builds queue one at a time in the pool.
        return max(1, self.build_spec.gpus) if self.build_spec is not None else 1


@dataclass(frozen=True)
class SigningSettings:
    """Who may publish this model's releases (release/signing.py).

    ``trusted_keys``: Ed25519 public keys written ``ed25519:<base64>``, as ``python -m triton_rollout keygen``
    prints them. With any set, the sync refuses a release whose manifest.json is not signed by one of them
    (unsigned, changed after signing, or signed by another key) before a byte reaches the PVC. Empty:
    unsigned releases are accepted, as without this section. An engine built in the cluster from a
    checkpoint is signed by the build pod's key (``build_key_secret``): list that key's public key too.
    ``build_key_secret``: a Secret holding the build's private key PEM under the key ``signing-key.pem``,
    mounted read-only into build pods; None: engines built in the cluster are unsigned.
    """

    trusted_keys: tuple[PublicKey, ...] = ()
    build_key_secret: str | None = None
    _path: str = field(default="signing", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        keys = self.trusted_keys
        if isinstance(keys, str) or not isinstance(keys, list | tuple):
            raise fail(f"{p}.trusted_keys", f"must be a list of public keys (ed25519:<base64>), got {keys!r}")
        parsed = tuple(k if isinstance(k, PublicKey) else PublicKey.parse(k, f"config field '{p}.trusted_keys[{i}]'")
                       for i, k in enumerate(keys))
        ids = [k.key_id for k in parsed]
        if len(set(ids)) != len(ids):
            raise fail(f"{p}.trusted_keys", f"lists a key twice (key ids {ids})")
        object.__setattr__(self, "trusted_keys", parsed)
        if self.build_key_secret is not None:
            string(self.build_key_secret, f"{p}.build_key_secret", DNS_SUBDOMAIN, "Secret name")

    @property
    def required(self) -> bool:
        return bool(self.trusted_keys)


CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
# Where a deploy's failures and rollbacks are posted (NotifySettings.when).
NOTIFY_EVENTS = ("failure", "rollback")


@dataclass(frozen=True)
class EventSettings:
    """S3 event notifications that start this model's deploys within seconds: the bucket sends
    ObjectCreated for ``<release_prefix>/<name>/*/manifest.json`` to ``sqs_queue_url`` (one queue per model:
    the watcher deletes what it reads), an AssetWatcher in the triggerer turns each batch into an asset
    event, and the deploy DAG runs on it. None: no events, the polling sensor waits on scheduled runs.

    With events on, scheduled runs check S3 once and skip when nothing is newer (a catch-up for a lost
    notification) instead of holding the DAG's only active run while they poll.
    ``wait_time_s``: the SQS long poll (1-20 s; a message is seen as soon as it arrives).
    ``aws_conn_id``: the connection for SQS; None: the model's own ``aws_conn_id``.
    """

    sqs_queue_url: str | None = None
    wait_time_s: int = 20
    aws_conn_id: str | None = None
    _path: str = field(default="events", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        if self.sqs_queue_url is not None:
            url(self.sqs_queue_url, f"{p}.sqs_queue_url")
        integer(self.wait_time_s, f"{p}.wait_time_s", 1, 20)  # SQS's own bound on WaitTimeSeconds
        if self.aws_conn_id is not None:
            string(self.aws_conn_id, f"{p}.aws_conn_id", CONN_ID, "Airflow connection id (letters, digits, _-.)")

    @property
    def enabled(self) -> bool:
        return self.sqs_queue_url is not None


@dataclass(frozen=True)
class NotifySettings:
    """Who hears about a failed deploy or a rollback: a JSON POST (the http provider's HttpNotifier) to
    ``endpoint`` on the host of the Airflow HTTP connection ``http_conn_id``; None: no notifications.
    ``when``: which of ``failure`` (a step failed: the model, version, step, error and what to do) and
    ``rollback`` (the previous version serves again) are sent."""

    http_conn_id: str | None = None
    endpoint: str = ""
    when: tuple[str, ...] = NOTIFY_EVENTS
    _path: str = field(default="notify", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        if self.http_conn_id is not None:
            string(self.http_conn_id, f"{p}.http_conn_id", CONN_ID, "Airflow connection id (letters, digits, _-.)")
        if self.endpoint is None:  # an unset ${VAR:-} reference: the connection's host itself
            object.__setattr__(self, "endpoint", "")
        if not isinstance(self.endpoint, str):
            raise fail(f"{p}.endpoint", f"must be a string (a path on the connection's host), got {self.endpoint!r}")
        when = tuple(self.when) if isinstance(self.when, list | tuple) else None
        if when is None or not when or any(e not in NOTIFY_EVENTS for e in when):
            raise fail(f"{p}.when", f"must be a non-empty list of {list(NOTIFY_EVENTS)}, got {self.when!r}")
        object.__setattr__(self, "when", when)

    @property
    def enabled(self) -> bool:
        return self.http_conn_id is not None

    def wants(self, event: str) -> bool:
        return self.enabled and event in self.when



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
    # Which keys may sign this model's releases; none = unsigned releases are accepted (release/signing.py).
    signing: SigningSettings = field(default_factory=SigningSettings)
    # Airflow connections for what the Airflow side reads (airflow/connections.py); pods never use them.
    # S3: credentials, region, endpoint_url from the connection, the AWS environment where it has none.
    aws_conn_id: str | None = "aws_default"
    # Triton: when set, its URL (host, port, schema) replaces triton_url for the tasks and their pods.
    triton_conn_id: str | None = None
    events: EventSettings = field(default_factory=EventSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    # How a candidate is loaded (triton/shadow.py): "shadow", under second names and smoke-tested before any
    # client reaches it, where the model fits in GPU memory twice; "in_place" where it does not (the candidate
    # then answers clients during its smoke test: the README's trade-off).
    candidate: str = "shadow"
    _path: str = field(default="model", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        for name in ("aws_conn_id", "triton_conn_id"):
            if getattr(self, name) is not None:
                string(getattr(self, name), f"{p}.{name}", CONN_ID, "Airflow connection id (letters, digits, _-.)")
        try:
            validate_name(self.name, field_name=f"{p}.name")
        except Exception as exc:
            raise fail(f"{p}.name", str(getattr(exc, "message", exc))) from exc
        # Model names also become pod-name parts and label values.
        if not LABEL_VALUE.fullmatch(self.name):
            raise fail(f"{p}.name", f"{self.name!r} must also be a valid label value (<= 63 chars)")
        string(self.release_prefix, f"{p}.release_prefix")
        try:
            uri = S3Uri.parse(self.release_prefix)
        except ConfigError as exc:
            raise fail(f"{p}.release_prefix", exc.message) from exc
        object.__setattr__(self, "release_prefix", f"s3://{uri.bucket}/{uri.key}".rstrip("/"))
        object.__setattr__(self, "triton_url", url(self.triton_url, f"{p}.triton_url"))
        if self.candidate not in CANDIDATE_MODES:
            raise fail(f"{p}.candidate", f"must be one of {', '.join(CANDIDATE_MODES)}, got {self.candidate!r}")
        integer(self.keep, f"{p}.keep", 0, 1000)
        integer(self.tp_size, f"{p}.tp_size", 1, 64)
        integer(self.pp_size, f"{p}.pp_size", 1, 64)
        object.__setattr__(self, "schedule", _schedule(self.schedule, f"{p}.schedule"))
        spec = self.build.build_spec
        if spec is not None and spec.gpus and (spec.tp_size, spec.pp_size) != (self.tp_size, self.pp_size):
            # Triton serves the engine with one rank per GPU: a build for another shape would not load.
            raise fail(f"{self.build._path}.spec.tp_size",
                       f"the engine would be built for tp={spec.tp_size} x pp={spec.pp_size} but the model is "
                       f"served with tp={self.tp_size} x pp={self.pp_size} ({p}.tp_size / {p}.pp_size); "
                       "set them once, at the model level")

    @property
    def gpus(self) -> int:
        """GPUs an engine build (and a serving replica) needs: one rank per GPU."""
        return self.tp_size * self.pp_size

    def release(self, version: int) -> ReleaseUri:
        """The S3 address of release ``version`` of this model (``<release_prefix>/<name>/<version>``)."""
        integer(version, "version", 1)
        return ReleaseUri.under(self.release_prefix, self.name, version)

    def servable_release(self, version: int, *, kind: str) -> ReleaseUri:
        """Where the servable engine of release ``version`` is: the release itself for an engine, the engine
        built from it (under ``build.engine_prefix``) for a checkpoint."""
        return self.release(version).servable(kind, self.build.engine_prefix)

    def releases_location(self) -> tuple[str, str]:
        """(bucket, key prefix) under which this model's version folders are listed."""
        uri = S3Uri.parse(self.release_prefix)
        return uri.bucket, uri.child(self.name)

    @classmethod
    def from_dict(cls, data: object, path: str = "model") -> ModelDeployment:
        data = mapping(data, path)
        check_keys(data, field_names(cls), path)
        for required in ("name", "release_prefix"):
            if required not in data:
                raise fail(f"{path}.{required}", "is required")
        kwargs = dict(data)
        if "kubernetes" in data:
            kwargs["kubernetes"] = KubernetesConfig.from_dict(data["kubernetes"], f"{path}.kubernetes")
        if "build" in data:
            kwargs["build"] = load_section(BuildSettings, _build_defaults(data, path), f"{path}.build")
        for name, section in (("sensor", SensorSettings), ("smoke", SmokeSettings), ("params", ParamDefaults),
                              ("events", EventSettings), ("notify", NotifySettings), ("signing", SigningSettings)):
            if name in data:
                kwargs[name] = load_section(section, data[name], f"{path}.{name}")
        if "serving" in data:
            kwargs["serving"] = ServingCompat.from_dict(_serving_strings(data["serving"]), f"{path}.serving")
        return cls(**kwargs, _path=path)


def _build_defaults(data: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The build section with its spec's tp_size / pp_size / triton_repository taken from the model when
    absent: the engine is built for the shape and the repository path it is served with, set once."""
    build = mapping(data["build"], f"{path}.build")
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
            integer(self.full_verify_hour, f"{self._path}.full_verify_hour", 0, 23)


@dataclass(frozen=True)
class ProjectConfig:
    """Every configured model, and the reconcile DAG's settings."""

    models: list[ModelDeployment]
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)

    def model(self, name: str) -> ModelDeployment:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"model {name!r} is not configured; configured: {[m.name for m in self.models]}")

