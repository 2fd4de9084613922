"""One typed contract per rollout step: what a step is asked, and what it answers.

Each step (sync, build, load, smoke, promote, rollback, deploy, reconcile, status) has a request class here.
Its fields are the step's flags; the field's metadata says the flag name, help and (for people at a shell)
the environment variable that fills it. The same class

- adds the step's arguments to the CLI parser and builds itself from the parsed namespace (cli/),
- renders itself back to container args (kube/specs.py for KubernetesPodOperator pods, kube/manifests.py for
  Jobs and CronJobs),
- is built from a model's config by ``for_model`` (the Airflow operators and the manifests share it), and
- reads the step's result, the JSON object the CLI prints as its last line (cli/output.py), back from a
  pod log into a :class:`StepResult`.

So adding a flag to a step is one field here, plus the library code that uses it. Nothing here imports
Airflow, the kubernetes client or the S3 / Triton clients: pods, the CLI and DAG parsing all import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from triton_rollout.errors import ConfigError
from triton_rollout.pvc.lease import DEFAULT_LEASE_TTL_S, DEFAULT_LEASE_WAIT_S, LeaseOptions
from triton_rollout.release.s3 import ReleaseUri
from triton_rollout.release.signing import PublicKey

if TYPE_CHECKING:
    from triton_rollout.config import ModelDeployment

S3_ENV_NOTE = (
    "S3 endpoint and credentials come from the standard AWS environment: AWS_ENDPOINT_URL (omit for AWS), "
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, or the pod's service account (IRSA)."
)
_TRITON_ENV_NOTE = "Defaults come from PVC_DIR, TRITON_URL and TRITON_MODEL_REPOSITORY (what `make up` exports)."
# The smoke test's per-request latency budget when a model's config sets none (seconds).
DEFAULT_LATENCY_BUDGET = 10.0
DEFAULT_READY_DEADLINE = 600.0
# How a candidate is loaded into Triton (triton/shadow.py): models[].candidate, the load step's --candidate.
CANDIDATE_MODES = ("shadow", "in_place")


# -- flags -----------------------------------------------------------------------------------------------

def _trusted_keys_flag() -> Any:
    """The trusted-keys flag of every step that reads a release from S3 (sync, build's checkpoint download and
    reconcile's re-sync)."""
    return flag("--trusted-keys", "comma-separated Ed25519 public keys (ed25519:<base64>, as keygen prints them): "
                "refuse a release whose manifest.json is not signed by one of them, before any download (default: "
                "unsigned releases are accepted)", default=(), parse=_csv)


def _public_keys(texts: Iterable[str]) -> tuple[PublicKey, ...]:
    return tuple(PublicKey.parse(text, f"--trusted-keys[{i}]") for i, text in enumerate(texts))


def _model_keys(model: ModelDeployment) -> tuple[str, ...]:
    return tuple(k.text for k in model.signing.trusted_keys)


def finite_float(text: str) -> float:
    """A float flag's value: nan would make every deadline comparison false (a wait that never ends)."""
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def flag(name: str, help: str, *, default: Any = dataclasses.MISSING, env: str | None = None,
         parse: Callable[[str], Any] = str, choices: Sequence[str] | None = None, group: str | None = None,
         metavar: str | None = None) -> Any:
    """A request field that is the CLI flag ``name``.

    ``parse`` turns the flag's text into the field's type (``bool`` fields are on/off switches); ``env``
    fills a flag left out at the shell (never in rendered pods, whose args are explicit); fields that
    share a ``group`` are mutually exclusive.
    """
    meta = {"flag": name, "help": help, "env": env, "parse": parse, "choices": tuple(choices) if choices else None,
            "group": group, "metavar": metavar}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    if isinstance(default, list | dict | set):
        raise TypeError("request defaults must be immutable")
    return field(default=default, metadata=meta)


def _flags(cls: type) -> list[dataclasses.Field[Any]]:
    """A request's flags in args order: the step's own first, then the ones every step has (--result-file)."""
    own = [f for f in dataclasses.fields(cls) if "flag" in f.metadata]
    return sorted(own, key=lambda f: f.name in _COMMON_FLAGS)


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_COMMON_FLAGS = {"result_file"}


@dataclass(frozen=True, kw_only=True)
class StepRequest:
    """Base of every step's request: flags <-> fields <-> container args."""

    command: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str] = ""

    result_file: str | None = flag("--result-file", "also write the JSON result here (e.g. /airflow/xcom/return.json)",
                                   default=None)

    # -- CLI side ----------------------------------------------------------------------------------------

    @classmethod
    def add_parser(cls, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
        parser = sub.add_parser(cls.command, help=cls.help, description=cls.description or None)
        groups: dict[str, Any] = {}
        for f in _flags(cls):
            meta = f.metadata
            target: Any = parser
            if meta["group"]:
                if meta["group"] not in groups:
                    groups[meta["group"]] = parser.add_mutually_exclusive_group()
                target = groups[meta["group"]]
            help_text = meta["help"]
            if meta["env"]:
                help_text += f" (default ${meta['env']})"
            if meta["parse"] is bool:
                target.add_argument(meta["flag"], dest=f.name, action="store_true", help=help_text)
                continue
            default = None if f.default is dataclasses.MISSING else f.default
            if meta["env"]:
                default = os.environ.get(meta["env"]) or default
            # Numbers are converted by argparse (a usage error names the flag); richer types in from_args.
            kind = {int: int, float: finite_float}.get(meta["parse"])
            required = f.default is dataclasses.MISSING and not meta["env"]
            target.add_argument(meta["flag"], dest=f.name, default=default, type=kind, choices=meta["choices"],
                                required=required, metavar=meta["metavar"], help=help_text)
        return parser

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StepRequest:
        """The request the parsed flags describe; a missing or malformed value is a ConfigError naming the flag."""
        kwargs: dict[str, Any] = {}
        for f in _flags(cls):
            meta = f.metadata
            value = getattr(args, f.name, None)
            if value is None or value == "":
                if f.default is dataclasses.MISSING:
                    env = f" or set {meta['env']}" if meta["env"] else ""
                    raise ConfigError(f"{cls.command}: {meta['flag']} is required: pass {meta['flag']}{env}")
                continue
            if isinstance(value, str) and meta["parse"] is not str:
                try:
                    value = meta["parse"](value)  # a ReleaseUri raises ConfigError itself, naming the URI
                except ValueError as exc:
                    raise ConfigError(f"{cls.command}: {meta['flag']} {value!r} is not valid: {exc}") from exc
            kwargs[f.name] = value
        request = cls(**kwargs)
        request.validate()
        return request

    def validate(self) -> None:
        """Cross-field and range checks; raise ConfigError naming the flag."""

    # -- pod side ----------------------------------------------------------------------------------------

    def to_argv(self) -> list[str]:
        """Container args: the command, then each flag whose value is not its default, in field order."""
        argv = [self.command]
        for f in _flags(type(self)):
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            if f.metadata["parse"] is bool:
                if value:
                    argv.append(f.metadata["flag"])
                continue
            argv += [f.metadata["flag"], _text(value)]
        return argv

    @property
    def pod_version(self) -> int | None:
        """The release version a pod of this step works on (its version label), if it has one."""
        return getattr(self, "version", None)

    # -- result side -------------------------------------------------------------------------------------

    def read_result(self, data: Mapping[str, Any]) -> StepResult:
        """The step's printed JSON result, typed: what Airflow logs, pushes and acts on."""
        return StepResult(step=self.command, model=str(data.get("model", "")),
                          version=_int_or(data.get("version"), self.pod_version), outcome="done", data=dict(data))


def _int_or(value: Any, fallback: int | None) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else fallback


@dataclass(frozen=True)
class StepResult:
    """One step's answer, as read back from its pod log."""

    step: str
    model: str
    version: int | None
    outcome: str
    bytes: int = 0
    endpoints: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    def summary(self, *, model: str, version: int | None, seconds: float, endpoint: str) -> str:
        """The one SUMMARY line the task log ends with (grep-able: step, model, version, outcome, figures)."""
        return (f"SUMMARY {self.step} {model} v{self.version if self.version is not None else version}: "
                f"{self.outcome}; bytes={self.bytes}; seconds={seconds:.2f}; "
                f"endpoint={self.endpoints[0] if self.endpoints else endpoint}")


@dataclass(frozen=True)
class StepFailure:
    """Why a step's pod failed, from its log: the CLI's last ``error:`` line and the ``what to do:`` line
    after it (errors.RolloutError prints both)."""

    error: str
    hint: str | None = None

    @classmethod
    def from_log(cls, log_tail: Sequence[str]) -> StepFailure | None:
        lines = [_strip_timestamp(line) for line in log_tail]
        found = [i for i, line in enumerate(lines) if "error:" in line]
        if not found:
            return None
        i = found[-1]
        hint = None
        if i + 1 < len(lines) and "what to do:" in lines[i + 1]:
            hint = lines[i + 1].split("what to do:", 1)[1].strip()
        return cls(error=lines[i].split("error:", 1)[1].strip(), hint=hint)


def failure_summary(step: str, model: str, version: int | None, failure: StepFailure | None, *, seconds: float,
                    endpoint: str) -> str:
    """The SUMMARY line of a failed step: the CLI's error, or a pointer to the pod log."""
    outcome = "FAILED: " + (failure.error if failure else "see the pod log above")
    failed = StepResult(step=step, model=model, version=version, outcome=outcome)
    return failed.summary(model=model, version=version, seconds=seconds, endpoint=endpoint)


def _strip_timestamp(line: str) -> str:
    """A log line without the RFC 3339 timestamp Kubernetes prefixes when asked for timestamps."""
    return line.split(" ", 1)[1] if line[:4].isdigit() and " " in line else line


def result_from_log(lines: Iterable[str]) -> dict[str, Any] | None:
    """The CLI's JSON result: the last log line that parses as a JSON object (Kubernetes timestamps stripped)."""
    for line in reversed(list(lines)):
        text = _strip_timestamp(line)
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


# -- S3 <-> PVC --------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SyncRequest(StepRequest):
    command: ClassVar[str] = "sync"
    help: ClassVar[str] = "download a release into the PVC, verified, and publish it atomically"
    description: ClassVar[str] = (
        "Download s3://BUCKET/PREFIX/MODEL/VERSION into PVC/staging, verify every file's size and sha256 "
        "against manifest.json, fsync, and rename each Triton model directory into "
        "PVC/repository/<triton_model>/<VERSION>/ in one step. Re-running resumes; re-syncing an intact "
        "version transfers nothing. With --trusted-keys, manifest.json must be signed by one of them (exit code "
        "17 otherwise, before any download). " + S3_ENV_NOTE
    )

    release: ReleaseUri = flag("--release", "s3://BUCKET/[PREFIX/]MODEL/VERSION", parse=ReleaseUri.parse)
    pvc: str = flag("--pvc", "the PVC mount: holds repository/, staging/ and state/", env="PVC_DIR")
    keep: int = flag("--keep", "retention: newest versions to keep besides the promoted and previous ones",
                     default=3, parse=int)
    concurrency: int = flag("--concurrency", "parallel GETs of whole small files", default=8, parse=int)
    large_streams: int = flag("--large-streams", "parallel ranged GETs into large (multi-part) files (more helps "
                              "on high-latency links with spare cores)", default=4, parse=int)
    write_mode: str = flag("--write-mode", "how parts of large files are written: through a shared mapping of each "
                           "part, or pwrite, for filesystems where shared mappings misbehave", default="mmap",
                           choices=("mmap", "pwrite"))
    request_mib: int = flag("--request-mib", "bytes per ranged GET in MiB", default=64, parse=int)
    verify: str = flag("--verify", "how to check an already-published version: 'stat' compares size/mtime/inode "
                       "with the publish record (fast), 'full' re-hashes every file", default="stat",
                       choices=("stat", "full"))
    repair: bool = flag("--repair", "if the published version no longer matches its manifest, re-download the "
                        "damaged files through staging and swap the version in whole (default: report and fail)",
                        default=False, parse=bool)
    no_prune: bool = flag("--no-prune", "skip retention", default=False, parse=bool)
    lock_timeout: float = flag("--lock-timeout", "seconds to wait for another sync of this model", default=600.0,
                               parse=float)
    progress_interval: float = flag("--progress-interval", "seconds between progress lines in the log, 0 for none",
                                    default=5.0, parse=float)
    stall_timeout: float = flag("--stall-timeout", "seconds without a byte from S3 before a GET counts as stalled and "
                                "is retried (retries are bounded, so a stalled server fails the sync, exit code 10, "
                                "instead of hanging it)", default=30.0, parse=float)
    expect_trtllm_version: str | None = flag(
        "--expect-trtllm-version", "refuse an engine release built with another TensorRT-LLM version (before any "
        "download)", default=None)
    expect_compute_capability: str | None = flag(
        "--expect-compute-capability", "refuse an engine release built for another GPU compute capability, e.g. 9.0",
        default=None)
    trusted_keys: tuple[str, ...] = _trusted_keys_flag()

    def validate(self) -> None:
        if min(self.concurrency, self.large_streams, self.request_mib) < 1 or self.keep < 0:
            raise ConfigError("--concurrency, --large-streams and --request-mib must be >= 1 and --keep >= 0")
        if not self.stall_timeout > 0:
            raise ConfigError(f"--stall-timeout must be a positive number of seconds, got {self.stall_timeout}")
        _ = self.public_keys  # parses each key: a bad one is a ConfigError naming --trusted-keys

    @property
    def public_keys(self) -> tuple[PublicKey, ...]:
        return _public_keys(self.trusted_keys)

    @property
    def pod_version(self) -> int | None:
        return self.release.version

    @classmethod
    def for_model(cls, model: ModelDeployment, release: ReleaseUri, **overrides: Any) -> SyncRequest:
        """``release``: the servable engine release (the built one, for a checkpoint). The model's serving
        compat travels with every sync, so a mismatched engine is refused before a byte reaches the PVC
        whichever way the sync is started (Airflow, Job, CronJob)."""
        return cls(release=release, pvc=model.kubernetes.pvc_mount_path, keep=model.keep,
                   expect_trtllm_version=model.serving.trtllm_version,
                   expect_compute_capability=model.serving.compute_capability,
                   trusted_keys=_model_keys(model), **overrides)

    def read_result(self, data: Mapping[str, Any]) -> StepResult:
        return StepResult(
            step=self.command, model=str(data.get("model", self.release.model)),
            version=_int_or(data.get("version"), self.release.version),
            outcome=f"{data.get('status')}, {data.get('files_transferred')} of {data.get('files_total')} files "
                    "transferred",
            bytes=int(data.get("bytes_transferred") or 0), data=dict(data))


@dataclass(frozen=True, kw_only=True)
class BuildRequest(StepRequest):
    command: ClassVar[str] = "build"
    help: ClassVar[str] = "build an engine release from a checkpoint release"
    description: ClassVar[str] = (
        "Download the checkpoint release (verified), probe the TensorRT-LLM version and GPU compute "
        "capability, run the conversion and trtllm-build steps (output streamed to the log), lay out the "
        "Triton ensemble (<triton_model>/...) and publish it as an engine release with its compatibility "
        "facts, manifest.json last. A failed step exits with that step's exit code. " + S3_ENV_NOTE
    )

    spec_file: str | None = flag("--spec", "build spec file (JSON, or YAML with PyYAML)", default=None, group="spec")
    spec_json: str | None = flag("--spec-json", "build spec as a JSON object", default=None, group="spec")
    checkpoint: ReleaseUri = flag("--checkpoint", "s3://BUCKET/[PREFIX/]MODEL/VERSION (a kind=checkpoint release)",
                                  parse=ReleaseUri.parse)
    output: ReleaseUri = flag("--output", "s3://BUCKET/[PREFIX/]engines/MODEL/VERSION: where the engine release is "
                              "published", parse=ReleaseUri.parse)
    workdir: str | None = flag("--workdir", "scratch directory (default $SCRATCH_DIR or the temp dir); kept after a "
                               "failure so a re-run reuses the verified checkpoint", default=None)
    dry_run: bool = flag("--dry-run", "print the exact commands and files the build would run and write; touch "
                         "nothing", default=False, parse=bool)
    trusted_keys: tuple[str, ...] = _trusted_keys_flag()

    def validate(self) -> None:
        # Where the engine may go relative to the checkpoint is the build runner's check (build.run.check_output).
        if (self.spec_file is None) == (self.spec_json is None):
            raise ConfigError("build: pass exactly one of --spec FILE or --spec-json JSON")
        _ = self.public_keys  # parses each key: a bad one is a ConfigError naming --trusted-keys

    @property
    def public_keys(self) -> tuple[PublicKey, ...]:
        return _public_keys(self.trusted_keys)

    @property
    def pod_version(self) -> int | None:
        return self.checkpoint.version

    @classmethod
    def for_model(cls, model: ModelDeployment, checkpoint: ReleaseUri, output: ReleaseUri) -> BuildRequest:
        spec = model.build.build_spec
        if spec is None:
            raise ConfigError(f"{model.name} v{checkpoint.version} is a checkpoint release, but models[{model.name}] "
                              "has no build.spec: set one (triton_rollout.build.spec.BuildSpec) to build it")
        # The full validated spec, so the pod builds exactly what the config said (no defaults of its own).
        # The model's keys: the checkpoint a build compiles is checked as an engine release is before its sync.
        return cls(spec_json=json.dumps(spec.to_dict(), sort_keys=True), checkpoint=checkpoint, output=output,
                   trusted_keys=_model_keys(model))

    def read_result(self, data: Mapping[str, Any]) -> StepResult:
        return StepResult(step=self.command, model=self.checkpoint.model, version=self.checkpoint.version,
                          outcome=f"engine release {data.get('status')} at {data.get('release')}",
                          bytes=int(data.get("bytes") or 0), data=dict(data))


# -- PVC <-> Triton ----------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class TritonStepRequest(StepRequest):
    """What every PVC <-> Triton step needs: the PVC, the Triton endpoint, where Triton sees the repository."""

    description: ClassVar[str] = _TRITON_ENV_NOTE

    pvc: str = flag("--pvc", "the PVC mount", env="PVC_DIR")
    triton_url: str = flag("--triton-url", "Triton's HTTP endpoint, host:port or http://host:port", env="TRITON_URL")
    triton_repository: str | None = flag("--triton-repository", "where Triton sees repository/ (its mount path; "
                                         "default: the PVC's own path)", default=None, env="TRITON_MODEL_REPOSITORY")
    model: str = flag("--model", "release model name (as in S3)")
    triton_models: tuple[str, ...] = flag("--triton-models", "comma-separated Triton models of the release (default: "
                                          "read from the sync's publish record)", default=(), parse=_csv)
    timeout: float = flag("--timeout", "seconds for each Triton request", default=30.0, parse=float)
    live_deadline: float = flag("--live-deadline", "seconds to wait for an unreachable Triton before failing",
                                default=30.0, parse=float)
    triton_service: str | None = flag(
        "--triton-service", "NAMESPACE/NAME of the Triton Deployment's Service: address each of its replicas at its "
        "pod IP, one at a time (triton/fleet.py; needs the Kubernetes API); unset: only --triton-url",
        default=None, env="TRITON_SERVICE", metavar="NAMESPACE/NAME")
    drain_quiet: float = flag("--drain-quiet", "with --triton-service and in_place: seconds a drained replica must "
                              "answer no request before the candidate is loaded on it", default=2.0, parse=float)
    drain_deadline: float = flag("--drain-deadline", "with --triton-service: seconds to wait for a replica to leave "
                                 "or rejoin the Service and go quiet", default=120.0, parse=float)

    @classmethod
    def target(cls, model: ModelDeployment) -> dict[str, Any]:
        kube = model.kubernetes
        return {"pvc": kube.pvc_mount_path, "triton_url": model.triton_url,
                "triton_repository": kube.triton_repository_path, "model": model.name,
                "triton_service": f"{kube.namespace}/{kube.triton_service}" if kube.triton_service else None}


def _lease_wait_flag() -> Any:
    """The wait of the steps that take the deploy lease (load, rollback, deploy)."""
    return flag("--lease-wait", "seconds to wait while another run holds the model's deploy lease (its candidate "
                "between load and promote or rollback) before failing with exit code 19", default=DEFAULT_LEASE_WAIT_S,
                parse=float)


@dataclass(frozen=True, kw_only=True)
class LeasedStepRequest(TritonStepRequest):
    """A step of one deploy run: it holds the model's deploy lease (pvc/lease.py) from load to promote or
    rollback, under the run's id."""

    run_id: str = flag("--run-id", "the deploy run this step belongs to: its deploy lease and the history in "
                       "state/ name it", default="", env="AIRFLOW_CTX_DAG_RUN_ID")
    lease_ttl: float = flag("--lease-ttl", "seconds the deploy lease stands after its last renewal (a dead run's "
                            "lease is taken over after that)", default=DEFAULT_LEASE_TTL_S, parse=float)

    def lease_options(self, wait_s: float = 0.0) -> LeaseOptions:
        return LeaseOptions(ttl_s=self.lease_ttl, wait_s=wait_s)

    def validate(self) -> None:
        super().validate()
        self.lease_options(getattr(self, "lease_wait", 0.0))


@dataclass(frozen=True, kw_only=True)
class LoadRequest(LeasedStepRequest):
    command: ClassVar[str] = "load"
    help: ClassVar[str] = "load a release version into Triton as the candidate"
    description: ClassVar[str] = (
        "Validate the release's config.pbtxt files, then load its models in dependency order with exact version "
        "pins and wait until each version is ready. The promoted version keeps serving while the candidate loads "
        "and if it fails. " + _TRITON_ENV_NOTE)

    version: int = flag("--version", "release version", parse=int)
    deadline: float = flag("--deadline", "seconds to wait for readiness", default=DEFAULT_READY_DEADLINE, parse=float)
    candidate: str = flag("--candidate", "shadow: load under second names, smoke-tested there before any client "
                          "sees it (needs the GPU memory twice); in_place: load where clients are served",
                          default="shadow", choices=CANDIDATE_MODES)
    lease_wait: float = _lease_wait_flag()
    refuse_downgrade: bool = flag("--refuse-downgrade", "fail (exit code 21, nothing loaded) when the version "
                                  "promoted by then is newer: checked under the deploy lease, after any wait",
                                  default=False, parse=bool)

    @classmethod
    def for_model(cls, model: ModelDeployment, version: int, run_id: str = "", *,
                  refuse_downgrade: bool = False) -> LoadRequest:
        return cls(**cls.target(model), version=version, deadline=model.smoke.ready_deadline_s,
                   candidate=model.candidate, run_id=run_id, refuse_downgrade=refuse_downgrade)

    def read_result(self, data: Mapping[str, Any]) -> StepResult:
        entries = data.get("entries") or []
        return StepResult(step=self.command, model=self.model, version=self.version,
                          outcome=f"loaded {', '.join(entries) or 'the release'}",
                          endpoints=tuple(data.get("endpoints") or ()), data=dict(data))


@dataclass(frozen=True, kw_only=True)
class SmokeRequest(LeasedStepRequest):
    command: ClassVar[str] = "smoke"
    help: ClassVar[str] = "smoke-test a loaded version (generate or metadata-built infer + golden cases)"

    version: int = flag("--version", "release version", parse=int)
    latency_budget: float = flag("--latency-budget", "seconds allowed per request", default=DEFAULT_LATENCY_BUDGET,
                                 parse=float)

    @classmethod
    def for_model(cls, model: ModelDeployment, version: int, run_id: str = "") -> SmokeRequest:
        return cls(**cls.target(model), version=version, latency_budget=model.smoke.latency_budget_s, run_id=run_id)

    def read_result(self, data: Mapping[str, Any]) -> StepResult:
        return StepResult(step=self.command, model=self.model, version=self.version,
                          outcome=f"{len(data.get('checks') or [])} checks passed", data=dict(data))


@dataclass(frozen=True, kw_only=True)
class PromoteRequest(LeasedStepRequest):
    command: ClassVar[str] = "promote"
    help: ClassVar[str] = "make a loaded, smoke-tested version the promoted one (config.pbtxt + state)"

    version: int = flag("--version", "release version", parse=int)
    no_ready_check: bool = flag("--no-ready-check", "promote on the PVC without asking Triton (e.g. Triton is being "
                                "restarted)", default=False, parse=bool)
    # With --triton-service, promote switches the replicas the load step did not: each one is loaded, smoke-tested
    # and swapped in (or put back into the Service) like the first.
    deadline: float = flag("--deadline", "seconds to wait for readiness (--triton-service)",
                           default=DEFAULT_READY_DEADLINE, parse=float)
    latency_budget: float = flag("--latency-budget", "seconds allowed per smoke request (--triton-service)",
                                 default=DEFAULT_LATENCY_BUDGET, parse=float)
    candidate: str = flag("--candidate", "how the other replicas load the candidate (--triton-service; as for load)",
                          default="shadow", choices=CANDIDATE_MODES)

    @classmethod
    def for_model(cls, model: ModelDeployment, version: int, run_id: str) -> PromoteRequest:
        return cls(**cls.target(model), version=version, run_id=run_id, deadline=model.smoke.ready_deadline_s,
                   latency_budget=model.smoke.latency_budget_s, candidate=model.candidate)

    def read_result(self, data: Mapping[str, Any]) -> StepResult:
        return StepResult(step=self.command, model=self.model, version=self.version,
                          outcome=f"promoted (previous v{previous})" if (previous := data.get("previous")) is not None
                          else "promoted (the first version of this model)", data=dict(data))


@dataclass(frozen=True, kw_only=True)
class RollbackRequest(LeasedStepRequest):
    command: ClassVar[str] = "rollback"
    help: ClassVar[str] = "serve the previous version again and record it in state/"

    failed_version: int | None = flag("--failed-version", "a loaded candidate that failed: reload the promoted "
                                      "version", default=None, parse=int, group="target")
    to_version: int | None = flag("--to-version", "roll the promoted version back to this one (default: previous)",
                                  default=None, parse=int, group="target")
    reason: str = flag("--reason", "recorded in state/", default="")
    deadline: float = flag("--deadline", "seconds to wait for readiness", default=DEFAULT_READY_DEADLINE, parse=float)
    lease_wait: float = _lease_wait_flag()

    def validate(self) -> None:
        super().validate()
        if self.failed_version is not None and self.to_version is not None:
            raise ConfigError("rollback: pass at most one of --failed-version and --to-version")

    @property
    def pod_version(self) -> int | None:
        return self.failed_version if self.failed_version is not None else self.to_version

    @classmethod
    def for_model(cls, model: ModelDeployment, failed_version: int, run_id: str) -> RollbackRequest:
        return cls(**cls.target(model), failed_version=failed_version, run_id=run_id,
                   reason=f"deploy run {run_id} failed", deadline=model.smoke.ready_deadline_s)

    def read_result(self, data: Mapping[str, Any]) -> StepResult:
        return StepResult(step=self.command, model=self.model, version=self.pod_version,
                          outcome=f"candidate rolled back, v{data.get('promoted')} serving", data=dict(data))


@dataclass(frozen=True, kw_only=True)
class DeployRequest(LeasedStepRequest):
    command: ClassVar[str] = "deploy"
    help: ClassVar[str] = "load, smoke-test and promote a version; roll back if the smoke test fails"

    version: int = flag("--version", "release version", parse=int)
    deadline: float = flag("--deadline", "seconds to wait for readiness", default=DEFAULT_READY_DEADLINE, parse=float)
    latency_budget: float = flag("--latency-budget", "seconds allowed per smoke request",
                                 default=DEFAULT_LATENCY_BUDGET, parse=float)
    candidate: str = flag("--candidate", "how the candidate is loaded: shadow or in_place (as for load)",
                          default="shadow", choices=CANDIDATE_MODES)
    lease_wait: float = _lease_wait_flag()

    @classmethod
    def for_model(cls, model: ModelDeployment, version: int, run_id: str, *, live_deadline: float) -> DeployRequest:
        """``live_deadline``: how long to wait for Triton to answer at all (a Job applied with Triton may
        start before Triton's pod is scheduled and pulled)."""
        return cls(**cls.target(model), version=version, run_id=run_id, deadline=model.smoke.ready_deadline_s,
                   latency_budget=model.smoke.latency_budget_s, live_deadline=live_deadline,
                   candidate=model.candidate)

    def read_result(self, data: Mapping[str, Any]) -> StepResult:
        return StepResult(step=self.command, model=self.model, version=self.version,
                          outcome=str(data.get("outcome", "done")), data=dict(data))


@dataclass(frozen=True, kw_only=True)
class ReconcileRequest(TritonStepRequest):
    command: ClassVar[str] = "reconcile"
    help: ClassVar[str] = "check the promoted version on the PVC and in Triton; repair drift"
    description: ClassVar[str] = (
        "Compare the promoted version's files with the publish record (stat) or their sha256 (--full), re-sync "
        "damaged or missing files through staging, and load the version again where Triton does not serve it. "
        + _TRITON_ENV_NOTE)

    release_prefix: str = flag("--release-prefix", "s3://BUCKET/PREFIX the model's releases live under")
    engine_prefix: str | None = flag("--engine-prefix", "where engines built from checkpoints live (default "
                                     "PREFIX/engines)", default=None)
    full: bool = flag("--full", "re-hash every file instead of comparing stat records", default=False, parse=bool)
    no_repair: bool = flag("--no-repair", "only report; exit non-zero on drift", default=False, parse=bool)
    deadline: float = flag("--deadline", "seconds to wait for readiness", default=DEFAULT_READY_DEADLINE, parse=float)
    # A repair re-syncs the promoted version from S3: through the same signature gate as its first sync.
    trusted_keys: tuple[str, ...] = _trusted_keys_flag()

    def validate(self) -> None:
        _ = self.public_keys

    @property
    def public_keys(self) -> tuple[PublicKey, ...]:
        return _public_keys(self.trusted_keys)

    @classmethod
    def for_model(cls, model: ModelDeployment, *, full: bool = False, repair: bool = True) -> ReconcileRequest:
        return cls(**cls.target(model), release_prefix=model.release_prefix, engine_prefix=model.build.engine_prefix,
                   full=full, no_repair=not repair, deadline=model.smoke.ready_deadline_s,
                   trusted_keys=_model_keys(model))

    def read_result(self, data: Mapping[str, Any]) -> StepResult:
        return StepResult(step=self.command, model=self.model, version=_int_or(data.get("promoted"), None),
                          outcome=f"skipped ({data['skipped']})" if data.get("skipped")
                          else "drift repaired" if data.get("drift") else "in sync",
                          bytes=int(data.get("bytes_transferred") or 0),
                          endpoints=tuple(data.get("endpoints") or ()), data=dict(data))


@dataclass(frozen=True, kw_only=True)
class StatusRequest(StepRequest):
    command: ClassVar[str] = "status"
    help: ClassVar[str] = "what is on the PVC, promoted, loaded, and which endpoints answer now"

    pvc: str = flag("--pvc", "the PVC mount", env="PVC_DIR")
    triton_url: str | None = flag("--triton-url", "Triton's HTTP endpoint (without it, only the PVC is read)",
                                  default=None, env="TRITON_URL")
    model: str | None = flag("--model", "only this release model's deployment state", default=None)
    timeout: float = flag("--timeout", "seconds for each Triton request", default=30.0, parse=float)
    triton_service: str | None = flag("--triton-service", "NAMESPACE/NAME of the Triton Service: report each replica",
                                      default=None, env="TRITON_SERVICE", metavar="NAMESPACE/NAME")
    as_json: bool = flag("--json", "print JSON instead of text", default=False, parse=bool)


@dataclass(frozen=True, kw_only=True)
class ServingGateRequest(StepRequest):
    """The Triton pod's sidecar (kube/manifests.py triton()): a new pod's readiness gate, set once."""

    command: ClassVar[str] = "serving-gate"
    help: ClassVar[str] = "set this Triton pod's triton-rollout/serving gate True once Triton is ready (a sidecar)"
    description: ClassVar[str] = (
        "A new Triton pod declares the readiness gate triton-rollout/serving and has no such condition yet, so it "
        "stays out of its Service. Once the local Triton answers /v2/health/ready (every model it loaded at start, "
        "the promoted versions, is ready), this sets the condition True, once: after that only a rollout changes "
        "it. Then it idles until the pod stops.")

    pod: str = flag("--pod", "this pod's name", env="POD_NAME")
    namespace: str = flag("--namespace", "this pod's namespace", env="POD_NAMESPACE")
    triton_url: str = flag("--triton-url", "the local Triton's HTTP endpoint", env="TRITON_URL")
    interval: float = flag("--interval", "seconds between readiness checks", default=2.0, parse=float)


ROLLOUT_STEPS: tuple[type[StepRequest], ...] = (
    SyncRequest, BuildRequest, LoadRequest, SmokeRequest, PromoteRequest, RollbackRequest, DeployRequest,
    ReconcileRequest, StatusRequest)


def request_from_argv(argv: Sequence[str]) -> StepRequest:
    """The request a pod's container args describe: how a deferred task, resumed in a fresh operator that
    never rendered its pod, learns what the pod was asked."""
    by_command = {cls.command: cls for cls in ROLLOUT_STEPS}
    if not argv or argv[0] not in by_command:
        raise ConfigError(f"not the args of a rollout step: {list(argv)[:3]}")
    parser = argparse.ArgumentParser(prog="python -m triton_rollout", exit_on_error=False)
    step = by_command[argv[0]]
    step.add_parser(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(list(argv))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ConfigError(f"the pod's args do not parse as a {argv[0]} step: {exc}") from exc
    return step.from_args(args)
