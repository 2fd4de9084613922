"""One library step as a Kubernetes pod: ``python -m triton_rollout <step> ...`` in the sync/build image.

The pod spec is built when the task runs (the release version is only known then) by the same
builders the Job/CronJob manifests use (``triton_rollout.kube.specs``), then handed to the stock
KubernetesPodOperator. Results: the CLI prints one JSON line last; it is read back from the pod log
(KPO's xcom sidecar needs ``exec``, which not every API server offers) and pushed as XCom ``result``.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowSkipException

from triton_rollout.config import ModelDeployment
from triton_rollout.errors import ConfigError, CorruptVersion, IncompatibleEngine, ManifestError, ReleaseNotFound

STEPS = ("build", "sync", "load", "smoke", "promote", "rollback", "reconcile")
# CLI exit codes (errors.py) that a retry cannot change: the task fails at once instead of retrying.
PERMANENT_EXIT_CODES = {e.exit_code: e.__name__ for e in (ConfigError, ManifestError, CorruptVersion,
                                                          IncompatibleEngine)}


def _pod_name(model: str, step: str) -> str:
    # Model names may hold '_' or '.', which pod names (RFC 1123 labels) may not.
    return re.sub(r"[^a-z0-9-]+", "-", f"{model}-{step}".lower()).strip("-")[:50]


class RolloutPodOperator(KubernetesPodOperator):
    """Runs one rollout step for ``model`` in a pod; logs one summary line at the end (version, bytes,
    seconds, endpoint). ``resolve_task_id``: the task whose XCom holds the resolved release."""

    ui_color = "#d9ead3"

    def __init__(self, *, model: ModelDeployment, step: str, resolve_task_id: str = "resolve",
                 full_verify_hour: int | None = None, **kwargs: Any) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown rollout step {step!r}; one of {STEPS}")
        kwargs.setdefault("startup_timeout_seconds", 600)
        kwargs.setdefault("on_finish_action", "delete_succeeded_pod")  # failed pods stay for inspection
        super().__init__(namespace=model.kubernetes.namespace, name=_pod_name(model.name, step), get_logs=True,
                         do_xcom_push=False, log_events_on_failure=True, **kwargs)
        self.model = model
        self.step = step
        self.resolve_task_id = resolve_task_id
        self.full_verify_hour = full_verify_hour
        self._tail: list[str] = []
        self._version: int | None = None

    # -- the pod -------------------------------------------------------------------------------------

    def _release(self, context: Any) -> Any:
        from triton_rollout.release.resolve import ResolvedRelease

        data = context["ti"].xcom_pull(task_ids=self.resolve_task_id)
        if not data:
            raise RuntimeError(f"no resolved release in XCom of task {self.resolve_task_id!r}")
        release = ResolvedRelease.from_dict(data)
        self._version = release.version
        return release

    def make_pod(self, context: Any) -> Any:
        from triton_rollout.kube import specs as specs

        m, params, run_id = self.model, context["params"], context["run_id"]
        if self.step == "reconcile":
            return specs.cli_pod(m, specs.triton_args(m, "reconcile", None,
                                                                reconcile_flags(m, context, self.full_verify_hour)),
                                 component="reconcile")
        rel = self._release(context)
        v = rel.version
        deadline = ["--deadline", f"{m.smoke.ready_deadline_s:g}"]
        if self.step == "build":
            return self._build_pod(rel)
        if self.step == "sync":
            extra = ["--progress-interval", "5"]
            if params.get("force"):
                self.log.warning("force=true: every published file is re-hashed (sha256) and repaired if it differs")
                extra += ["--verify", "full", "--repair"]
            return specs.sync_pod(m, v, release=rel.serve_release, extra=extra)
        if self.step == "load":
            return specs.cli_pod(m, specs.triton_args(m, "load", v, deadline), component="load", version=v)
        if self.step == "smoke":
            if params.get("skip_smoke"):
                self.log.warning("!!! SMOKE TEST SKIPPED (skip_smoke=true): %s v%s is promoted UNTESTED !!!",
                                 m.name, v)
                raise AirflowSkipException(f"smoke test of {m.name} v{v} skipped by the skip_smoke param")
            budget = ["--latency-budget", f"{m.smoke.latency_budget_s:g}"]
            return specs.cli_pod(m, specs.triton_args(m, "smoke", v, budget), component="smoke", version=v)
        if self.step == "promote":
            return specs.cli_pod(m, specs.triton_args(m, "promote", v, ["--run-id", run_id]), component="promote",
                                 version=v)
        # rollback
        if self._upstream_state(context, "load") not in ("success", "failed"):
            raise AirflowSkipException(f"{m.name} v{v} was never loaded (an earlier step failed): nothing to roll back")
        args = specs.triton_args(m, "rollback", None, ["--failed-version", str(v), "--run-id", run_id,
                                                       "--reason", f"deploy run {run_id} failed", *deadline])
        return specs.cli_pod(m, args, component="rollback", version=v)

    def _build_pod(self, rel: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from triton_rollout.kube import specs as specs
        from triton_rollout.release.s3 import ReleaseUri, fetch_manifest

        m = self.model
        if not rel.needs_build:
            raise AirflowSkipException(f"{m.name} v{rel.version} is an engine release: nothing to build")
        try:
            fetch_manifest(ReleaseUri.parse(rel.serve_release))
        except ReleaseNotFound:
            pass  # not built yet (or a build died mid-publish: its files without a manifest are rebuilt)
        else:
            raise AirflowSkipException(f"the engine of {m.name} v{rel.version} is already in {rel.serve_release}")
        spec = m.build.build_spec
        if spec is None:
            # A retry cannot make a build spec appear.
            raise AirflowFailException(f"{m.name} v{rel.version} is a checkpoint release, but models[{m.name}] has "
                                       "no build.spec: set one (triton_rollout.build.spec.BuildSpec) to build it")
        # The full validated spec, so the pod builds exactly what the config said (no defaults of its own).
        args = ["build", "--spec-json", json.dumps(spec.to_dict(), sort_keys=True), "--checkpoint", rel.release,
                "--output", rel.serve_release]
        self.log.info("building %s v%s: %s -> %s (backend %s, family %s, %d GPU(s))", m.name, rel.version,
                      rel.release, rel.serve_release, spec.backend, spec.family, spec.gpus)
        return specs.build_pod(m, args, version=rel.version, gpus=spec.gpus)

    def _upstream_state(self, context: Any, task_id: str) -> str | None:
        ti = context["ti"]
        try:
            states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[task_id], run_ids=[ti.run_id])
            return states.get(ti.run_id, {}).get(task_id)
        except Exception as exc:  # an older API server: assume the step ran, a rollback is harmless
            self.log.warning("cannot read the state of %s (%s); rolling back anyway", task_id, exc)
            return "failed"

    # -- running it ----------------------------------------------------------------------------------

    def _use_kubeconfig_from_env(self) -> None:
        # A kubeconfig in the environment (make up, tests) wins; else in-cluster / the connection.
        # Set before the hook is first built: a deferred task resumes in a fresh operator that never
        # ran execute(), and its hook would otherwise look for in-cluster config.
        self.config_file = self.config_file or os.environ.get("KUBECONFIG") or None

    def execute(self, context: Any) -> Any:
        self._use_kubeconfig_from_env()
        self.full_pod_spec = self.make_pod(context)
        self.pod_request_obj = None
        started = time.monotonic()
        try:
            super().execute(context)
        except Exception as exc:
            self.log.error(self.summary(failed=True, seconds=time.monotonic() - started))
            code = self._exit_code()
            if code in PERMANENT_EXIT_CODES:
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"{self.step} pod of {self.model.name} exited with code {code} "
                                           f"({PERMANENT_EXIT_CODES[code]}): a retry cannot change that, "
                                           "so the task is not retried") from exc
            raise
        result = self.result()
        if result is not None:
            context["ti"].xcom_push(key="result", value=result)
        self.log.info(self.summary(failed=False, seconds=time.monotonic() - started))
        return None

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        # Deferrable pods (the build) resume here, not in execute(): same result XCom and summary line.
        from triton_rollout.kube.specs import VERSION_LABEL

        self._use_kubeconfig_from_env()
        try:
            pod = self.hook.get_pod(event["name"], event["namespace"])
            self._version = int(pod.metadata.labels[VERSION_LABEL])  # a fresh operator: make_pod() did not run
            self._read_tail(pod)
        except Exception as exc:  # no pod in the event (e.g. a timeout): the summary says less
            self.log.warning("could not read the finished pod: %s", exc)
        seconds = float((self.result() or {}).get("seconds") or 0.0)
        try:
            out = super().trigger_reentry(context, event)
        except Exception:
            self.log.error(self.summary(failed=True, seconds=seconds))
            raise
        result = self.result()
        if result is not None:
            context["ti"].xcom_push(key="result", value=result)
        self.log.info(self.summary(failed=False, seconds=seconds))
        return out

    def await_pod_completion(self, pod: Any) -> Any:
        out = super().await_pod_completion(pod)
        self._read_tail(pod)
        return out

    def _read_tail(self, pod: Any) -> None:
        try:
            logs = self.pod_manager.read_pod_logs(pod, self.base_container_name, tail_lines=60, follow=False)
            self._tail = [line.decode(errors="replace").rstrip() for line in logs]
        except Exception as exc:  # the summary is a courtesy; the pod's phase decides success
            self.log.warning("could not read the tail of the pod log: %s", exc)

    def _exit_code(self) -> int | None:
        """The exit code of the step's container in the finished pod (failed pods are kept), or None."""
        pod = getattr(self, "pod", None)
        if pod is None:
            return None
        for _ in range(5):  # the container status can trail the pod phase by a moment
            try:
                remote = self.pod_manager.read_pod(pod)
            except Exception as exc:  # only decides whether a retry is worth it
                self.log.warning("could not read the pod's exit code: %s", exc)
                return None
            statuses = (remote.status and remote.status.container_statuses) or []
            mine = [c for c in statuses if c.name == self.base_container_name] or statuses[:1]
            for c in mine:
                if c.state and c.state.terminated:
                    return int(c.state.terminated.exit_code)
            time.sleep(0.5)
        return None

    def result(self) -> dict[str, Any] | None:
        """The CLI's JSON result: the last log line that parses as a JSON object."""
        for line in reversed(self._tail):
            text = line.split(" ", 1)[1] if line[:4].isdigit() and " " in line else line  # timestamps
            if text.startswith("{"):
                try:
                    return dict(json.loads(text))
                except ValueError:
                    continue
        return None

    def summary(self, *, failed: bool, seconds: float) -> str:
        r = self.result() or {}
        version = r.get("version") or r.get("promoted") or self._version
        nbytes = r.get("bytes_transferred", 0)
        endpoints = r.get("endpoints") or []
        endpoint = endpoints[0] if endpoints else f"{self.model.triton_url}"
        if failed:
            errors = [line for line in self._tail if "error:" in line]
            outcome = "FAILED: " + (errors[-1].split("error:", 1)[1].strip() if errors else "see the pod log above")
        elif self.step == "sync":
            outcome = (f"{r.get('status')}, {r.get('files_transferred')} of {r.get('files_total')} files "
                       f"transferred")
        elif self.step == "build":
            outcome = f"engine release {r.get('status')} at {r.get('release')}"
            nbytes = r.get("bytes", 0)
        elif self.step == "smoke":
            outcome = f"{len(r.get('checks', []))} checks passed"
        elif self.step == "promote":
            outcome = f"promoted (previous v{r.get('previous')})"
            version = self._version
        elif self.step == "rollback":
            outcome = f"candidate rolled back, v{r.get('promoted')} serving"
            version = self._version
        elif self.step == "reconcile":
            outcome = f"{'drift repaired' if r.get('drift') else 'in sync'}"
            version = r.get("promoted")
        else:
            outcome = "done"
        return (f"SUMMARY {self.step} {self.model.name} v{version}: {outcome}; bytes={nbytes}; "
                f"seconds={seconds:.2f}; endpoint={endpoint}")


def reconcile_flags(model: ModelDeployment, context: Any, full_verify_hour: int | None) -> list[str]:
    """The reconcile CLI flags for this run: full sha256 when asked, or in the configured UTC hour."""
    logical = context.get("logical_date")
    full = bool(context["params"].get("full_verify")) or (
        full_verify_hour is not None and logical is not None and logical.hour == full_verify_hour)
    flags = ["--release-prefix", model.release_prefix, "--deadline", f"{model.smoke.ready_deadline_s:g}"]
    if model.build.engine_prefix:
        flags += ["--engine-prefix", model.build.engine_prefix]
    if full:
        flags.append("--full")
    if not context["params"].get("repair", True):
        flags.append("--no-repair")
    return flags
