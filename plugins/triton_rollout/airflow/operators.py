"""One library step as a Kubernetes pod: ``python -m triton_rollout <step> ...`` in the sync/build image.

The pod spec is built when the task runs (the release version is only known then) by the same
builders the Job/CronJob manifests use (``triton_rollout.k8s_specs``), then handed to the stock
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

STEPS = ("build", "sync", "load", "smoke", "promote", "rollback", "reconcile")


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
        from triton_rollout.releases import ResolvedRelease

        data = context["ti"].xcom_pull(task_ids=self.resolve_task_id)
        if not data:
            raise RuntimeError(f"no resolved release in XCom of task {self.resolve_task_id!r}")
        release = ResolvedRelease.from_dict(data)
        self._version = release.version
        return release

    def make_pod(self, context: Any) -> Any:
        from triton_rollout import k8s_specs as specs

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
        from triton_rollout import k8s_specs as specs
        from triton_rollout.releases import find_release

        m = self.model
        if not rel.needs_build:
            raise AirflowSkipException(f"{m.name} v{rel.version} is an engine release: nothing to build")
        built = find_release(ModelDeployment(name=m.name, release_prefix=rel.serve_release.rsplit("/", 2)[0]),
                             version=rel.version)
        if built is not None:
            raise AirflowSkipException(f"the engine of {m.name} v{rel.version} is already in {rel.serve_release}")
        # The engine-build spec (build_spec.BuildSpec); tp/pp/dtype default from the model's settings.
        spec = {"tp_size": m.tp_size, "pp_size": m.pp_size, "dtype": m.build.dtype, **m.build.spec}
        args = ["build", "--spec-json", json.dumps(spec, sort_keys=True), "--checkpoint", rel.release,
                "--output", rel.serve_release]
        return specs.build_pod(m, args, version=rel.version)

    def _upstream_state(self, context: Any, task_id: str) -> str | None:
        ti = context["ti"]
        try:
            states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[task_id], run_ids=[ti.run_id])
            return states.get(ti.run_id, {}).get(task_id)
        except Exception as exc:  # an older API server: assume the step ran, a rollback is harmless
            self.log.warning("cannot read the state of %s (%s); rolling back anyway", task_id, exc)
            return "failed"

    # -- running it ----------------------------------------------------------------------------------

    def execute(self, context: Any) -> Any:
        # A kubeconfig in the environment (make up, tests) wins; else in-cluster / the connection.
        self.config_file = self.config_file or os.environ.get("KUBECONFIG") or None
        self.full_pod_spec = self.make_pod(context)
        self.pod_request_obj = None
        started = time.monotonic()
        try:
            super().execute(context)
        except Exception:
            self.log.error(self.summary(failed=True, seconds=time.monotonic() - started))
            raise
        result = self.result()
        if result is not None:
            context["ti"].xcom_push(key="result", value=result)
        self.log.info(self.summary(failed=False, seconds=time.monotonic() - started))
        return None

    def await_pod_completion(self, pod: Any) -> Any:
        out = super().await_pod_completion(pod)
        try:
            logs = self.pod_manager.read_pod_logs(pod, self.base_container_name, tail_lines=60, follow=False)
            self._tail = [line.decode(errors="replace").rstrip() for line in logs]
        except Exception as exc:  # the summary is a courtesy; the pod's phase decides success
            self.log.warning("could not read the tail of the pod log: %s", exc)
        return out

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
