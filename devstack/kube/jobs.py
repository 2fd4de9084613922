"""batch/v1 Jobs and CronJobs: API defaults and validation, the Job and CronJob controllers, and the
ownerReference garbage collection between CronJobs, Jobs and their pods.

Follows upstream kubernetes v1.31: pkg/apis/batch/v1/defaults.go and pkg/registry/batch/job/strategy.go
(defaults, generated selector and labels, the default Orphan propagation of batch/v1 Jobs),
pkg/controller/job/job_controller.go (pods from the template, counting, backoffLimit against failed pods
and, under restartPolicy OnFailure, the container restarts of running and pending pods (the kubelet
restarts those in place, pastBackoffLimitOnFailure), activeDeadlineSeconds, suspend, and the 1.31
terminal conditions: FailureTarget / SuccessCriteriaMet first, Failed / Complete once no pod is left
running), pkg/controller/ttlafterfinished,
pkg/controller/cronjob/cronjob_controllerv2.go and utils.go (schedules, concurrencyPolicy,
startingDeadlineSeconds, history limits, job names), pkg/controller/garbagecollector (dependents of a
deleted owner go, or lose their ownerReference with propagationPolicy Orphan).

Not emulated: the pod failure backoff delay (10 s doubling upstream: a failed pod is replaced at once),
Indexed completion mode (treated as NonIndexed), podFailurePolicy, successPolicy, backoffLimitPerIndex,
the job-tracking finalizers.
"""

from __future__ import annotations

import contextlib
import copy
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .controller import Controller
from .store import ApiError, Obj, Store, now_iso

if TYPE_CHECKING:
    from .api import Api

try:
    from croniter import croniter
except ImportError:  # pragma: no cover - Airflow brings croniter into the project's venv
    croniter = None

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
SCHEDULED_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"
POLL_S = 0.25


def _ts(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339(when: datetime) -> str:
    """Go's time.RFC3339: Z for UTC, else the numeric offset."""
    text = when.replace(microsecond=0).isoformat()
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _invalid(kind: str, name: str, problem: str) -> ApiError:
    return ApiError(422, "Invalid", f'{kind}.batch "{name}" is invalid: {problem}')


def _check_template(kind: str, name: str, template: Obj, path: str) -> None:
    spec = (template or {}).get("spec") or {}
    if not spec.get("containers"):
        raise _invalid(kind, name, f"{path}.spec.containers: Required value")
    policy = spec.get("restartPolicy") or "Always"
    if policy not in ("OnFailure", "Never"):
        raise _invalid(kind, name, f'{path}.spec.restartPolicy: Unsupported value: "{policy}": supported values: '
                       '"OnFailure", "Never"')


def _default_job_spec(spec: Obj) -> None:
    # pkg/apis/batch/v1/defaults.go SetDefaults_Job
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
        spec["parallelism"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    pod_spec = spec.setdefault("template", {}).setdefault("spec", {})
    pod_spec.setdefault("terminationGracePeriodSeconds", 30)
    pod_spec.setdefault("dnsPolicy", "ClusterFirst")
    pod_spec.setdefault("schedulerName", "default-scheduler")
    pod_spec.setdefault("securityContext", {})


def default_job(body: Obj, uid: str) -> None:
    """Defaults and checks at create (strategy.go PrepareForCreate / generateSelector, validation.go)."""
    meta = body.setdefault("metadata", {})
    name = meta.get("name") or meta.get("generateName", "")
    spec = body.setdefault("spec", {})
    _check_template("Job", name, spec.get("template") or {}, "spec.template")
    for key in ("completions", "parallelism", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, int) or value < (1 if key == "activeDeadlineSeconds" else 0)):
            raise _invalid("Job", name, f"spec.{key}: Invalid value: {value}: must be greater than or equal to "
                           f"{1 if key == 'activeDeadlineSeconds' else 0}")
    _default_job_spec(spec)
    if not spec.get("manualSelector"):
        # The generated selector and the labels it selects (pkg/registry/batch/job/strategy.go).
        job_name = meta.get("name", "")
        labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
        labels.update({CONTROLLER_UID_LABEL: uid, JOB_NAME_LABEL: job_name, "controller-uid": uid,
                       "job-name": job_name})
        spec["selector"] = {"matchLabels": {CONTROLLER_UID_LABEL: uid}}
    body["status"] = {}


def default_cronjob(body: Obj) -> None:
    """pkg/apis/batch/v1/defaults.go SetDefaults_CronJob and the schedule / timeZone checks."""
    meta = body.setdefault("metadata", {})
    name = meta.get("name") or meta.get("generateName", "")
    spec = body.setdefault("spec", {})
    schedule = spec.get("schedule") or ""
    if not schedule:
        raise _invalid("CronJob", name, "spec.schedule: Required value")
    if croniter is not None and not croniter.is_valid(schedule):
        raise _invalid("CronJob", name, f'spec.schedule: Invalid value: "{schedule}": unparseable cron schedule')
    tz = spec.get("timeZone")
    if tz:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise _invalid("CronJob", name, f'spec.timeZone: Invalid value: "{tz}": unknown time zone {tz}') from exc
    if "TZ=" in schedule or "CRON_TZ=" in schedule:
        raise _invalid("CronJob", name, f'spec.schedule: Invalid value: "{schedule}": cannot use TZ or CRON_TZ '
                       "in schedule, use timeZone field instead")
    template = spec.get("jobTemplate") or {}
    _check_template("CronJob", name, (template.get("spec") or {}).get("template") or {},
                    "spec.jobTemplate.spec.template")
    _default_job_spec(template.setdefault("spec", {}))
    spec["jobTemplate"] = template
    spec.setdefault("concurrencyPolicy", "Allow")
    if spec["concurrencyPolicy"] not in ("Allow", "Forbid", "Replace"):
        raise _invalid("CronJob", name, f'spec.concurrencyPolicy: Unsupported value: "{spec["concurrencyPolicy"]}": '
                       'supported values: "Allow", "Forbid", "Replace"')
    spec.setdefault("suspend", False)
    spec.setdefault("successfulJobsHistoryLimit", 3)
    spec.setdefault("failedJobsHistoryLimit", 1)
    body["status"] = {}


def _owned_by(obj: Obj, uid: str) -> bool:
    return any(r.get("uid") == uid for r in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _controller_uid(obj: Obj) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


DEPENDENTS = {"jobs": "pods", "cronjobs": "jobs"}


def cascade(api: Api, resource: str, ns: str, owner: Obj, q: dict[str, str], body: Obj | None) -> None:
    """What deleting a Job / CronJob does to its dependents. batch/v1 Jobs default to Orphan, for backwards
    compatibility (pkg/registry/batch/job/strategy.go DefaultGarbageCollectionPolicy); CronJobs to
    Background. Orphan: the dependents lose their ownerReference; Foreground: they are deleted first (here:
    deleted, then the owner goes at once); Background: the garbage collector loop deletes them."""
    body = body or {}
    policy = q.get("propagationPolicy") or body.get("propagationPolicy")
    orphan = q.get("orphanDependents") or body.get("orphanDependents")
    if not policy and orphan is not None:
        policy = "Orphan" if str(orphan).lower() == "true" else "Background"
    policy = policy or ("Orphan" if resource == "jobs" else "Background")
    if policy not in ("Orphan", "Background", "Foreground"):
        raise ApiError(400, "BadRequest", f'propagationPolicy: Unsupported value: "{policy}": supported values: '
                       '"Foreground", "Background", "Orphan"')
    uid = owner["metadata"]["uid"]
    dependents, _ = api.store.list(DEPENDENTS[resource], ns)
    for dep in dependents:
        if not _owned_by(dep, uid):
            continue
        dep_name = dep["metadata"]["name"]
        if policy == "Orphan":
            def drop(o: Obj) -> None:
                refs = [r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
                if refs:
                    o["metadata"]["ownerReferences"] = refs
                else:
                    o["metadata"].pop("ownerReferences", None)
            api.store.mutate(DEPENDENTS[resource], ns, dep_name, drop)
        elif policy == "Foreground":
            with contextlib.suppress(ApiError):
                api.delete(DEPENDENTS[resource], ns, dep_name, {"propagationPolicy": "Foreground"}, None)


def record_event(store: Store, obj: Obj, type_: str, reason: str, message: str, component: str) -> None:
    meta = obj["metadata"]
    ts = now_iso()
    event: Obj = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
        "involvedObject": {"kind": obj.get("kind", ""), "namespace": meta["namespace"], "name": meta["name"],
                           "uid": meta["uid"], "apiVersion": "batch/v1",
                           "resourceVersion": meta.get("resourceVersion", "")},
        "reason": reason, "message": message, "type": type_, "count": 1,
        "source": {"component": component}, "firstTimestamp": ts, "lastTimestamp": ts,
        "reportingComponent": component, "reportingInstance": "",
    }
    with contextlib.suppress(Exception):
        store.create("events", meta["namespace"], event)


def _condition(type_: str, reason: str, message: str) -> Obj:
    ts = now_iso()
    return {"type": type_, "status": "True", "lastProbeTime": ts, "lastTransitionTime": ts, "reason": reason,
            "message": message}


def _has(job: Obj, type_: str) -> Obj | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def finished(job: Obj) -> str | None:
    """Complete / Failed when the Job has that terminal condition (pkg/controller/job/util IsJobFinished)."""
    for type_ in ("Complete", "Failed"):
        if _has(job, type_):
            return type_
    return None


def _past_backoff_limit_on_failure(spec: Obj, pods: list[Obj]) -> bool:
    """pkg/controller/job/job_controller.go pastBackoffLimitOnFailure: under restartPolicy OnFailure the
    kubelet restarts failed containers in place, so their restarts in Running / Pending pods count against
    backoffLimit (reached at the limit, or at the first restart with a limit of 0)."""
    if ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy") != "OnFailure":
        return False
    restarts = sum(int(st.get("restartCount") or 0) for p in pods
                   if (p.get("status") or {}).get("phase") in ("Running", "Pending")
                   for key in ("initContainerStatuses", "containerStatuses")
                   for st in (p.get("status") or {}).get(key) or [])
    limit = int(spec.get("backoffLimit", 6))
    return restarts > 0 if limit == 0 else restarts >= limit


class JobController(Controller):
    """One thread running the Job, TTL-after-finished, CronJob and garbage-collector loops.

    ``clock_file``: when set and present, the CronJob controller's "now" is the ISO timestamp in it (tests
    step it); the Job controller always uses the real clock."""

    name = "job-controller"
    wait_s = POLL_S * 2
    pause_s = POLL_S / 2

    def __init__(self, api: Api, *, clock_file: Path | None = None) -> None:
        super().__init__(api)
        self.clock_file = clock_file
        self._counted: dict[str, dict[str, str]] = {}  # job uid -> pod uid -> Succeeded / Failed
        self._said: set[tuple[str, str]] = set()  # (cronjob uid, event key) already reported
        self._create_errors: dict[str, str] = {}  # job uid -> the last FailedCreate message (reported once)

    def steps(self) -> list[Callable[[], None]]:
        return [self._sync_cronjobs, self._sync_jobs, self._collect_garbage]

    def cron_now(self) -> datetime:
        if self.clock_file is not None:
            with contextlib.suppress(OSError, ValueError):
                return datetime.fromisoformat(self.clock_file.read_text().strip().replace("Z", "+00:00"))
        return datetime.now(UTC)

    # -- garbage collection ----------------------------------------------------------------------------

    def _collect_garbage(self) -> None:
        """Dependents whose Job / CronJob owners are all gone are deleted (Background propagation)."""
        owners = {o["metadata"]["uid"] for r in ("jobs", "cronjobs") for o in self.store.list(r)[0]}
        for resource in ("jobs", "pods"):
            for obj in self.store.list(resource)[0]:
                refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("kind") in ("Job", "CronJob")]
                if refs and all(r.get("uid") not in owners for r in refs) and not obj["metadata"].get(
                        "deletionTimestamp"):
                    with contextlib.suppress(ApiError):
                        self.api.delete(resource, obj["metadata"]["namespace"], obj["metadata"]["name"],
                                        {"propagationPolicy": "Background"}, None)

    # -- jobs ------------------------------------------------------------------------------------------

    def _sync_jobs(self) -> None:
        jobs, _ = self.store.list("jobs")
        pods, _ = self.store.list("pods")
        by_owner: dict[str, list[Obj]] = {}
        for pod in pods:
            owner = _controller_uid(pod)
            if owner:
                by_owner.setdefault(owner, []).append(pod)
        live = {j["metadata"]["uid"] for j in jobs}
        for uid in set(self._counted) - live:
            del self._counted[uid]
        for uid in set(self._create_errors) - live:
            del self._create_errors[uid]
        for job in jobs:
            job["kind"] = "Job"
            self._sync_job(job, by_owner.get(job["metadata"]["uid"], []))

    def _delete_pod(self, pod: Obj) -> None:
        with contextlib.suppress(ApiError):
            self.api.delete("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], {}, None)

    def _sync_job(self, job: Obj, pods: list[Obj]) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        status = copy.deepcopy(job.get("status") or {})
        now = datetime.now(UTC)
        done = finished(job)
        if done:
            # pkg/controller/ttlafterfinished: the Job (and, Foreground, its pods) go ttl seconds after it finished.
            ttl = spec.get("ttlSecondsAfterFinished")
            cond = _has(job, done) or {}
            end = _ts(status.get("completionTime") or cond.get("lastTransitionTime"))
            if ttl is not None and end is not None and now >= end + timedelta(seconds=int(ttl)):
                with contextlib.suppress(ApiError):
                    self.api.delete("jobs", ns, name, {"propagationPolicy": "Foreground"}, None)
            return
        counted = self._counted.setdefault(uid, {})
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed") and pod["metadata"]["uid"] not in counted:
                counted[pod["metadata"]["uid"]] = phase
        # Counted once per pod, remembered by the controller (upstream: the job-tracking finalizers), so a
        # pod deleted after it ended still counts.
        succeeded = sum(1 for ph in counted.values() if ph == "Succeeded")
        failed = sum(1 for ph in counted.values() if ph == "Failed")
        running = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        active = [p for p in running if not p["metadata"].get("deletionTimestamp")]
        terminating = [p for p in running if p["metadata"].get("deletionTimestamp")]
        conditions: list[Obj] = list(status.get("conditions") or [])
        events: list[tuple[str, str, str]] = []

        def add(cond: Obj) -> None:
            conditions[:] = [c for c in conditions if c.get("type") != cond["type"]] + [cond]

        suspended = bool(spec.get("suspend"))
        was_suspended = _has(job, "Suspended") is not None
        def remove(pods_: list[Obj], *, count_as_failed: bool) -> None:
            for pod in pods_:
                if not count_as_failed:
                    # Pods removed for suspension or after success are not failures (upstream: only a
                    # failing Job counts its lingering pods as failed).
                    counted.setdefault(pod["metadata"]["uid"], "Removed")
                self._delete_pod(pod)

        if suspended:
            remove(active, count_as_failed=False)
            active = []
            if not was_suspended:
                add(_condition("Suspended", "JobSuspended", "Job suspended"))
                events.append(("Normal", "Suspended", "Job suspended"))
                status.pop("startTime", None)
        else:
            if was_suspended:
                add({**_condition("Suspended", "JobResumed", "Job resumed"), "status": "False"})
                events.append(("Normal", "Resumed", "Job resumed"))
                status.pop("startTime", None)
            status.setdefault("startTime", now_iso())
        target = _has({"status": {"conditions": conditions}}, "FailureTarget") or \
            _has({"status": {"conditions": conditions}}, "SuccessCriteriaMet")
        if target is None and not suspended:
            start = _ts(status.get("startTime"))
            deadline = spec.get("activeDeadlineSeconds")
            completions = spec.get("completions")
            if failed > int(spec.get("backoffLimit", 6)) or _past_backoff_limit_on_failure(spec, pods):
                target = _condition("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff "
                                    "limit")
            elif deadline is not None and start is not None and now >= start + timedelta(seconds=int(deadline)):
                target = _condition("FailureTarget", "DeadlineExceeded", "Job was active longer than specified "
                                    "deadline")
            elif (completions is not None and succeeded >= int(completions)) or (
                    completions is None and succeeded > 0 and not active):
                target = _condition("SuccessCriteriaMet", "CompletionsReached",
                                    "Reached expected number of succeeded pods")
            if target is not None:
                add(target)  # 1.31: the interim condition first, the terminal one once no pod is left running
        if target is not None:
            remove(active, count_as_failed=target["type"] == "FailureTarget")
            terminating += active
            active = []
            if not terminating:
                if target["type"] == "FailureTarget":
                    add(_condition("Failed", target["reason"], target["message"]))
                    events.append(("Warning", target["reason"], target["message"]))
                else:
                    add(_condition("Complete", target["reason"], target["message"]))
                    status["completionTime"] = now_iso()
                    events.append(("Normal", "Completed", "Job completed"))
        elif not suspended:
            parallelism = int(spec.get("parallelism", 1))
            completions = spec.get("completions")
            want = parallelism if completions is None else min(parallelism, int(completions) - succeeded)
            for _ in range(max(0, want - len(active))):
                pod = self._new_pod(job)
                try:
                    created = self.api.create("pods", ns, pod)
                except ApiError as exc:
                    # Retried every loop (upstream: with backoff); the same error is reported once.
                    same = re.sub(r'^pods "[^"]*"', "pods", exc.message)  # each try names a new pod
                    if self._create_errors.get(uid) != same:
                        self._create_errors[uid] = same
                        events.append(("Warning", "FailedCreate", f"Error creating: {exc.message}"))
                    break
                self._create_errors.pop(uid, None)
                active.append(created)
                events.append(("Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}"))
        ready = sum(1 for p in active if any(c.get("type") == "Ready" and c.get("status") == "True"
                                              for c in (p.get("status") or {}).get("conditions") or []))
        status.update({"active": len(active), "succeeded": succeeded, "failed": failed,
                       "terminating": len(terminating), "ready": ready, "uncountedTerminatedPods": {}})
        if conditions:
            status["conditions"] = conditions
        for key in ("active", "succeeded", "failed"):
            if not status[key]:
                status.pop(key)  # omitempty, as the real status reads

        def write(j: Obj) -> None:
            j["status"] = status
        if status != (job.get("status") or {}):
            self.store.mutate("jobs", ns, name, write)
        for type_, reason, message in events:
            record_event(self.store, job, type_, reason, message, "job-controller")

    def _new_pod(self, job: Obj) -> Obj:
        template = copy.deepcopy(job["spec"].get("template") or {})
        meta = template.get("metadata") or {}
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": f"{job['metadata']['name']}-", "labels": meta.get("labels") or {},
                         "annotations": meta.get("annotations") or {},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                              "name": job["metadata"]["name"], "uid": job["metadata"]["uid"],
                                              "controller": True, "blockOwnerDeletion": True}]},
            "spec": template.get("spec") or {},
        }

    # -- cronjobs --------------------------------------------------------------------------------------

    def _sync_cronjobs(self) -> None:
        crons, _ = self.store.list("cronjobs")
        if not crons:
            return
        jobs, _ = self.store.list("jobs")
        for cj in crons:
            cj["kind"] = "CronJob"
            uid = cj["metadata"]["uid"]
            self._sync_cronjob(cj, [j for j in jobs if _controller_uid(j) == uid])

    def _say(self, cj: Obj, key: str, type_: str, reason: str, message: str) -> None:
        if (cj["metadata"]["uid"], key) not in self._said:
            self._said.add((cj["metadata"]["uid"], key))
            record_event(self.store, cj, type_, reason, message, "cronjob-controller")

    def _sync_cronjob(self, cj: Obj, jobs: list[Obj]) -> None:
        meta, spec = cj["metadata"], cj.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        status = copy.deepcopy(cj.get("status") or {})
        active_refs: list[Obj] = list(status.get("active") or [])
        by_uid = {j["metadata"]["uid"]: j for j in jobs}
        for j in jobs:
            ref_uid = j["metadata"]["uid"]
            in_active = any(r.get("uid") == ref_uid for r in active_refs)
            state = finished(j)
            if not in_active and not state:
                self._say(cj, "unexpected/" + ref_uid, "Warning", "UnexpectedJob",
                          f"Saw a job that the controller did not create or forgot: {j['metadata']['name']}")
            elif in_active and state:
                active_refs = [r for r in active_refs if r.get("uid") != ref_uid]
                self._say(cj, "done/" + ref_uid, "Normal", "SawCompletedJob",
                          f"Saw completed job: {j['metadata']['name']}, condition: {state}")
            if state == "Complete":
                done_at = (j.get("status") or {}).get("completionTime")
                if done_at and (not status.get("lastSuccessfulTime") or done_at > status["lastSuccessfulTime"]):
                    status["lastSuccessfulTime"] = done_at
        for ref in list(active_refs):
            if ref.get("uid") not in by_uid:
                active_refs.remove(ref)
                self._say(cj, "missing/" + str(ref.get("uid")), "Normal", "MissingJob",
                          f"Active job went missing: {ref.get('name')}")
        # History limits (cleanupFinishedJobs): the oldest finished Jobs beyond each limit are deleted.
        for kind, limit_key in (("Complete", "successfulJobsHistoryLimit"), ("Failed", "failedJobsHistoryLimit")):
            limit = spec.get(limit_key)
            done = sorted((j for j in jobs if finished(j) == kind),
                          key=lambda j: (j.get("status") or {}).get("startTime") or j["metadata"]["creationTimestamp"])
            if limit is not None and len(done) > int(limit):
                for j in done[:len(done) - int(limit)]:
                    with contextlib.suppress(ApiError):
                        self.api.delete("jobs", ns, j["metadata"]["name"], {"propagationPolicy": "Background"}, None)
                        self._say(cj, "deleted/" + j["metadata"]["uid"], "Normal", "SuccessfulDelete",
                                  f"Deleted job {j['metadata']['name']}")
        if not spec.get("suspend") and not meta.get("deletionTimestamp"):
            self._schedule(cj, spec, status, active_refs, by_uid)
        status["active"] = active_refs
        if not active_refs:
            status.pop("active")
        if status != (cj.get("status") or {}):
            def write(o: Obj) -> None:
                o["status"] = status
            self.store.mutate("cronjobs", ns, name, write)

    def _schedule(self, cj: Obj, spec: Obj, status: Obj, active_refs: list[Obj], by_uid: dict[str, Obj]) -> None:
        meta = cj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        now = self.cron_now()
        tz = ZoneInfo(spec["timeZone"]) if spec.get("timeZone") else UTC
        earliest = _ts(status.get("lastScheduleTime")) or _ts(meta["creationTimestamp"])
        assert earliest is not None
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None:
            earliest = max(earliest, now - timedelta(seconds=int(deadline)))
        scheduled = most_recent(spec["schedule"], tz, earliest, now)
        if scheduled is None:
            return
        key = _iso(scheduled)
        if deadline is not None and scheduled < now - timedelta(seconds=int(deadline)):
            when = scheduled.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S %z")  # Go's RFC1123Z, in UTC
            self._say(cj, "miss/" + key, "Warning", "MissSchedule", f"Missed scheduled time to start a job: {when}")
            return
        policy = spec.get("concurrencyPolicy", "Allow")
        if policy == "Forbid" and active_refs:
            # Not started, and lastScheduleTime not moved: retried until startingDeadlineSeconds passes.
            self._say(cj, "forbid/" + key, "Normal", "JobAlreadyActive",
                      "Not starting job because prior execution is running and concurrency policy is Forbid")
            return
        if policy == "Replace":
            for ref in list(active_refs):
                with contextlib.suppress(ApiError):
                    self.api.delete("jobs", ns, ref["name"], {"propagationPolicy": "Background"}, None)
                    self._say(cj, "deleted/" + str(ref.get("uid")), "Normal", "SuccessfulDelete",
                              f"Deleted job {ref['name']}")
                active_refs.remove(ref)
        template = copy.deepcopy(spec.get("jobTemplate") or {})
        tmeta = template.get("metadata") or {}
        job_name = f"{name}-{int(scheduled.timestamp()) // 60}"  # utils.go getJobName: the time in minutes
        body = {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name, "labels": tmeta.get("labels") or {},
                         "annotations": {**(tmeta.get("annotations") or {}),
                                         SCHEDULED_ANNOTATION: _rfc3339(scheduled.astimezone(tz))},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": name,
                                              "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": template.get("spec") or {},
        }
        try:
            created = self.api.create("jobs", ns, body)
        except ApiError as exc:
            if exc.code != 409:
                self._say(cj, "failed/" + key, "Warning", "FailedCreate", f"Error creating job: {exc.message}")
                return
            created = self.store.find("jobs", ns, job_name)
            if created is None or not _owned_by(created, meta["uid"]):
                return
        else:
            self._say(cj, "created/" + key, "Normal", "SuccessfulCreate", f"Created job {job_name}")
        if not any(r.get("uid") == created["metadata"]["uid"] for r in active_refs) and not finished(created):
            active_refs.append({"kind": "Job", "namespace": ns, "name": job_name, "uid": created["metadata"]["uid"],
                                "apiVersion": "batch/v1", "resourceVersion": created["metadata"]["resourceVersion"]})
        status["lastScheduleTime"] = key


def most_recent(schedule: str, tz: Any, earliest: datetime, now: datetime) -> datetime | None:
    """The latest schedule time in (earliest, now], or None (utils.go mostRecentScheduleTime)."""
    if croniter is None:
        raise ApiError(500, "InternalError", "croniter is not installed: CronJob schedules cannot be computed")
    it = croniter(schedule, now.astimezone(tz) + timedelta(seconds=1))
    prev: datetime = it.get_prev(datetime)
    while prev > now:
        prev = it.get_prev(datetime)
    return prev if prev > earliest else None
