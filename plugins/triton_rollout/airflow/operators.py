"""One operator per rollout step: a KubernetesPodOperator whose pod runs ``python -m triton_rollout <step>``.

Each step operator builds its step's typed request (triton_rollout.steps) from the run's context when the
task runs (the release version is only known then) and overrides ``build_pod_request_obj`` to hand the
stock operator the pod kube/specs.py renders for that request: the same pod the Job / CronJob manifests
wrap. The step's JSON result (the CLI's last log line) is read back by a KubernetesPodOperator callback
(``on_pod_completion``, which runs for sync and deferred pods alike: in cncf-kubernetes 10.25
``operators/pod.py`` both ``execute_sync`` and ``trigger_reentry`` call it with the finished pod, failed
ones included) and pushed as XCom ``result``; KPO's xcom sidecar is not used because it needs ``exec``,
which not every API server offers. ``build_pod_request_obj`` is overridden only to set ``full_pod_spec``:
the provider's own method then adds the labels (dag_id, task_id, run_id, try_number) it finds and
re-attaches pods by.

How the operator reaches the API (``kubernetes.api``) and how long its pod may take to be scheduled and to
start (``kubernetes.build_start_timeouts`` for the build pod, ``sync_start_timeouts`` for the others) come
from the model's config; the provider hands both to its deferrable trigger, so the triggerer uses the same.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

from airflow.providers.cncf.kubernetes.callbacks import KubernetesPodOperatorCallback
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from triton_rollout.config import ModelDeployment
from triton_rollout.errors import (
    ConfigError,
    CorruptVersion,
    DeployLeaseHeld,
    DeployLeaseLost,
    DowngradeRefused,
    IncompatibleEngine,
    ManifestError,
    SignatureError,
)

# CLI exit codes (errors.py) that a retry cannot change: the task fails at once instead of retrying.
PERMANENT_EXIT_CODES = {e.exit_code: e.__name__ for e in (ConfigError, ManifestError, CorruptVersion,
                                                          IncompatibleEngine, SignatureError, DeployLeaseLost,
                                                          DowngradeRefused)}
# Load failures before anything was loaded (no deploy lease held): the rollback step has nothing to undo, and
# must not wait for the lease of the run that holds the model.
NOTHING_LOADED_EXIT_CODES = {DeployLeaseHeld.exit_code, DowngradeRefused.exit_code}
NOTHING_LOADED_XCOM = "nothing_loaded"
LOG_TAIL_LINES = 60


class StepFailed(AirflowException):
    """A step's pod failed: its message is the step's error and what to do (retried per the task's retries)."""


def pod_name(model: str, step: str) -> str:
    # Model names may hold '_' or '.', which pod names (RFC 1123 labels) may not.
    return re.sub(r"[^a-z0-9-]+", "-", f"{model}-{step}".lower()).strip("-")[:50]


class StepResultCallback(KubernetesPodOperatorCallback):
    """Reads the finished pod's exit code and result line; logs the SUMMARY line; pushes XCom ``result``."""

    @staticmethod
    def on_pod_completion(*, pod: Any, operator: Any, context: Any = None, **kwargs: Any) -> None:
        if isinstance(operator, RolloutStepOperator) and pod is not None:
            operator.record_completion(pod, context)


class RolloutStepOperator(KubernetesPodOperator):
    """Base of the step operators: one library step for ``model`` in a pod, one SUMMARY line at the end.

    Subclasses set ``step`` and implement :meth:`step_request`; raising AirflowSkipException there skips
    the step before any pod is created."""

    step: ClassVar[str]
    ui_color = "#d9ead3"

    def __init__(self, *, model: ModelDeployment, resolve_task_id: str = "resolve", **kwargs: Any) -> None:
        kube = model.kubernetes
        waits = kube.build_start_timeouts if self.step == "build" else kube.sync_start_timeouts
        kwargs.setdefault("schedule_timeout_seconds", waits.schedule_s)
        kwargs.setdefault("startup_timeout_seconds", waits.startup_s)
        # Exactly one way, named for the worker and (passed on by the provider) the triggerer alike.
        kwargs.setdefault("in_cluster", kube.api.in_cluster)
        kwargs.setdefault("config_file", kube.api.config_file)
        kwargs.setdefault("cluster_context", kube.api.context)
        kwargs.setdefault("kubernetes_conn_id", kube.api.conn_id)
        kwargs.setdefault("on_finish_action", "delete_succeeded_pod")  # failed pods stay for inspection
        # The provider appends the whole pod object (~200 lines) to a failure; the task log should end
        # with the step's error and what to do instead (cncf-kubernetes 10.25 operators/pod.py cleanup()).
        kwargs.setdefault("log_pod_spec_on_failure", False)
        super().__init__(namespace=model.kubernetes.namespace, name=pod_name(model.name, self.step), get_logs=True,
                         do_xcom_push=False, log_events_on_failure=True, callbacks=[StepResultCallback], **kwargs)
        self.model = model
        self.resolve_task_id = resolve_task_id
        self._request: Any = None
        self._exit_code: int | None = None
        self._failure: Any = None  # steps.StepFailure of a failed pod, read by record_completion
        self._pod_name: str | None = None
        self._started: float | None = None  # monotonic, set by execute(); a resumed deferred task has none

    # -- the request and its pod -----------------------------------------------------------------------

    def step_request(self, context: Any) -> Any:
        """The typed request (triton_rollout.steps) this task's pod runs."""
        raise NotImplementedError

    def resolved_release(self, context: Any) -> Any:
        from triton_rollout.release.resolve import ResolvedRelease

        data = context["ti"].xcom_pull(task_ids=self.resolve_task_id)
        if not data:
            raise RuntimeError(f"no resolved release in XCom of task {self.resolve_task_id!r}")
        return ResolvedRelease.from_dict(data)

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> Any:
        if context is not None:
            from triton_rollout.kube.specs import step_pod

            self._request = self.step_request(context)
            self.full_pod_spec = step_pod(self.model, self._request)
        return super().build_pod_request_obj(context, dry_run=dry_run)

    # -- running it --------------------------------------------------------------------------------------

    def convert_config_file_to_dict(self) -> None:
        # The provider falls back to $KUBECONFIG here (cncf-kubernetes 10.25 operators/pod.py), so a worker
        # with KUBECONFIG set would hand the trigger a kubeconfig besides in_cluster / the connection, and
        # the async hook refuses two as mutually exclusive: only the configured file goes to the triggerer.
        self._config_dict = None
        if self.config_file:
            super().convert_config_file_to_dict()

    def execute(self, context: Any) -> Any:
        from .connections import runtime_model

        self._started = time.monotonic()
        self.model = runtime_model(self.model)  # the Triton URL from triton_conn_id, read at run time
        self._sweep_failed_pods()
        with self._fail_fast_on_permanent_errors():
            return super().execute(context)

    def _sweep_failed_pods(self) -> None:
        from triton_rollout.kube.cleanup import sweep_failed_pods

        try:
            sweep_failed_pods(self.client, self.model)
        except Exception as exc:  # housekeeping must never stop a deploy
            self.log.warning("could not sweep old failed pods of %s: %s", self.model.name, exc)

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        # Deferrable pods (the build) resume here in a fresh operator: the callback still reads the result.
        from .connections import runtime_model

        self.model = runtime_model(self.model)
        with self._fail_fast_on_permanent_errors():
            return super().trigger_reentry(context, event)

    @contextlib.contextmanager
    def _fail_fast_on_permanent_errors(self) -> Iterator[None]:
        """A failed step pod ends the task with the step's own error and what to do (the last lines of the
        task log), failing at once where a retry cannot change the outcome."""
        try:
            yield
        except (AirflowSkipException, AirflowFailException):
            raise
        except Exception:
            code = self._exit_code
            if code is None or code == 0:
                raise  # not the step's own failure (API error, pod never started): the provider's message
            message = self._failure_message(code)
            if code in PERMANENT_EXIT_CODES:
                raise AirflowFailException(message + "\n  a retry cannot change that, so the task is not retried"
                                           ) from None
            raise StepFailed(message) from None

    def _failure_message(self, code: int) -> str:
        failure = self._failure
        kind = f" ({PERMANENT_EXIT_CODES[code]})" if code in PERMANENT_EXIT_CODES else ""
        kube = self.model.kubernetes
        kept = (f"pod {self._pod_name} is kept for `kubectl -n {kube.namespace} logs {self._pod_name}` / `describe`, "
                f"and deleted after {kube.failed_pod_retention_s}s (kubernetes.failed_pod_retention_s)")
        error = failure.error if failure else "no error line in the pod log (read the log above)"
        hint = (failure.hint if failure and failure.hint else "read the pod log above") + "; " + kept
        return f"{self.step} of {self.model.name} failed (exit code {code}{kind}): {error}\n  what to do: {hint}"

    # -- the result (called by StepResultCallback) ---------------------------------------------------------

    def record_completion(self, pod: Any, context: Any) -> None:
        from triton_rollout.steps import StepFailure, failure_summary, result_from_log

        seconds = 0.0
        container = self._terminated_container(pod)
        if container is not None:
            term = container.state.terminated
            self._exit_code = int(term.exit_code)
            # Container timestamps have one-second resolution: the task's own clock where it has one.
            seconds = _seconds_between(term.started_at, term.finished_at)
        if self._started is not None:
            seconds = time.monotonic() - self._started
        log_tail: list[str] = []
        try:
            logs = self.pod_manager.read_pod_logs(pod, self.base_container_name, tail_lines=LOG_TAIL_LINES,
                                                  follow=False)
            log_tail = [line.decode(errors="replace").rstrip() for line in logs]
        except Exception as exc:  # the summary is a courtesy; the pod's phase decides success
            self.log.warning("could not read the tail of the pod log: %s", exc)
        request = self._request or self._request_of(pod)
        version = request.pod_version if request is not None else None
        self._pod_name = pod.metadata.name if pod.metadata else None
        if self._exit_code != 0:
            self._failure = StepFailure.from_log(log_tail)
            self.log.error(failure_summary(self.step, self.model.name, version, self._failure, seconds=seconds,
                                           endpoint=self.model.triton_url))
            return
        data = result_from_log(log_tail)
        if data is None or request is None:
            self.log.warning("the %s pod succeeded but its result could not be read (no JSON result line in the "
                             "last %d log lines, or unreadable args): no XCom result", self.step, LOG_TAIL_LINES)
            return
        result = request.read_result(data)
        if context is not None:
            context["ti"].xcom_push(key="result", value=dict(result.data))
        self.log.info(result.summary(model=self.model.name, version=version, seconds=seconds,
                                     endpoint=self.model.triton_url))

    def _terminated_container(self, pod: Any) -> Any:
        """The step container's status once terminated (it can trail the end of the log by a moment)."""
        for attempt in range(5):
            statuses = (pod.status and pod.status.container_statuses) or []
            mine = [c for c in statuses if c.name == self.base_container_name] or statuses[:1]
            if mine and mine[0].state and mine[0].state.terminated:
                return mine[0]
            if attempt < 4:
                time.sleep(0.5)
                try:
                    pod = self.pod_manager.read_pod(pod)
                except Exception as exc:  # only the summary and the retry decision depend on it
                    self.log.warning("could not read the pod's exit code: %s", exc)
                    return None
        return None

    def _request_of(self, pod: Any) -> Any:
        from triton_rollout.steps import request_from_argv

        containers = (pod.spec and pod.spec.containers) or []
        mine = [c for c in containers if c.name == self.base_container_name] or containers[:1]
        try:
            return request_from_argv(mine[0].args or [])
        except Exception as exc:  # only the summary depends on it
            self.log.warning("could not read the step's request from the pod's args: %s", exc)
            return None


def _seconds_between(start: datetime | None, end: datetime | None) -> float:
    return (end - start).total_seconds() if start and end else 0.0


class BuildEngineOperator(RolloutStepOperator):
    """Checkpoint release -> engine release on a GPU pod; skipped for engine releases and built engines."""

    step = "build"

    def step_request(self, context: Any) -> Any:
        from triton_rollout.release.s3 import ObjectReader, ObjectSigner, complete_release
        from triton_rollout.steps import BuildRequest

        from .connections import s3_from_connection

        rel = self.resolved_release(context)
        m = self.model
        if not rel.needs_build:
            raise AirflowSkipException(f"{m.name} v{rel.version} is an engine release: nothing to build")
        s3 = s3_from_connection(m.aws_conn_id)
        reader = ObjectReader(rel.serve_uri.bucket, signer=ObjectSigner(s3.access))
        if complete_release(rel.serve_uri, reader) is not None:
            raise AirflowSkipException(f"the engine of {m.name} v{rel.version} is already in {rel.serve_uri}")
        try:
            request = BuildRequest.for_model(m, rel.uri, rel.serve_uri)
        except ConfigError as exc:
            raise AirflowFailException(exc.message) from exc  # a retry cannot make a build spec appear
        spec = m.build.build_spec
        self.log.info("building %s v%s: %s -> %s (backend %s, family %s, %d GPU(s))", m.name, rel.version,
                      rel.uri, rel.serve_uri, spec.backend, spec.family, spec.gpus)
        return request


class SyncOperator(RolloutStepOperator):
    """The servable release -> the PVC (staging, verify, atomic publish); ``force`` re-hashes and repairs."""

    step = "sync"

    def step_request(self, context: Any) -> Any:
        from triton_rollout.steps import SyncRequest

        rel = self.resolved_release(context)
        extra: dict[str, Any] = {}
        if context["params"].get("force"):
            self.log.warning("force=true: every published file is re-hashed (sha256) and repaired if it differs")
            extra = {"verify": "full", "repair": True}
        return SyncRequest.for_model(self.model, rel.serve_uri, **extra)


class LoadOperator(RolloutStepOperator):
    """Takes the model's deploy lease (waiting for another run's candidate), refuses a downgrade that became one
    while it waited, loads the candidate."""

    step = "load"

    def step_request(self, context: Any) -> Any:
        from triton_rollout.steps import LoadRequest

        from .runinfo import run_request

        return LoadRequest.for_model(self.model, self.resolved_release(context).version, context["run_id"],
                                     refuse_downgrade=not run_request(context).may_downgrade)

    def execute(self, context: Any) -> Any:
        try:
            return super().execute(context)
        except AirflowException:
            if self._exit_code in NOTHING_LOADED_EXIT_CODES:
                why = self._failure.error if self._failure else f"exit code {self._exit_code}"
                context["ti"].xcom_push(key=NOTHING_LOADED_XCOM, value=why)
            raise


class SmokeOperator(RolloutStepOperator):
    step = "smoke"

    def step_request(self, context: Any) -> Any:
        from triton_rollout.steps import SmokeRequest

        v = self.resolved_release(context).version
        if context["params"].get("skip_smoke"):
            self.log.warning("!!! SMOKE TEST SKIPPED (skip_smoke=true): %s v%s is promoted UNTESTED !!!",
                             self.model.name, v)
            raise AirflowSkipException(f"smoke test of {self.model.name} v{v} skipped by the skip_smoke param")
        return SmokeRequest.for_model(self.model, v, context["run_id"])


class PromoteOperator(RolloutStepOperator):
    step = "promote"

    def step_request(self, context: Any) -> Any:
        from triton_rollout.steps import PromoteRequest

        return PromoteRequest.for_model(self.model, self.resolved_release(context).version, context["run_id"])


class RollbackOperator(RolloutStepOperator):
    """Runs when load, smoke or promote failed: the previous version serves again."""

    step = "rollback"

    def step_request(self, context: Any) -> Any:
        from triton_rollout.steps import RollbackRequest

        # Asked first: when an earlier step failed (sensor, resolve, sync) there is no candidate, and maybe
        # no resolved release either.
        if self._upstream_state(context, "load") not in ("success", "failed"):
            raise AirflowSkipException(f"{self.model.name}: the candidate was never loaded (an earlier step "
                                       "failed): nothing to roll back")
        refused = context["ti"].xcom_pull(task_ids="load", key=NOTHING_LOADED_XCOM)
        if refused:
            raise AirflowSkipException(f"{self.model.name}: the load step loaded nothing ({refused}): nothing to "
                                       "roll back")
        v = self.resolved_release(context).version
        return RollbackRequest.for_model(self.model, v, context["run_id"])

    def _upstream_state(self, context: Any, task_id: str) -> str | None:
        ti = context["ti"]
        try:
            states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[task_id], run_ids=[ti.run_id])
            return states.get(ti.run_id, {}).get(task_id)
        except Exception as exc:  # an older API server: assume the step ran, a rollback is harmless
            self.log.warning("cannot read the state of %s (%s); rolling back anyway", task_id, exc)
            return "failed"


class ReconcileOperator(RolloutStepOperator):
    """The promoted version on the PVC and in Triton; full sha256 when asked or in the configured UTC hour."""

    step = "reconcile"

    def __init__(self, *, full_verify_hour: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.full_verify_hour = full_verify_hour

    def step_request(self, context: Any) -> Any:
        from triton_rollout.steps import ReconcileRequest

        logical = context.get("logical_date")
        params = context["params"]
        full = bool(params.get("full_verify")) or (
            self.full_verify_hour is not None and logical is not None and logical.hour == self.full_verify_hour)
        return ReconcileRequest.for_model(self.model, full=full, repair=bool(params.get("repair", True)))
