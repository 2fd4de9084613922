"""batch/v1 Jobs and CronJobs on the API-server emulator (devstack/kube/jobs.py): the Job controller's
pods, counts and conditions, backoffLimit, activeDeadlineSeconds, ttlSecondsAfterFinished, parallelism,
cascading deletes, and CronJobs on a stepped clock, through the real kubectl and the kubernetes client."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.kube import KubeEmulator
from tests.helpers import run_kubectl

NS = "jobs"
KUBECTL = shutil.which("kubectl")
ROOT = Path(__file__).resolve().parents[1]
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulator]:
    state = tmp_path_factory.mktemp("jobs")
    emulator = KubeEmulator(state / "emu", namespaces=[NS], fake_cron_clock=True).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def batch(emu: KubeEmulator) -> Any:
    return emu.batch_v1()


@pytest.fixture(scope="module")
def core(emu: KubeEmulator) -> Any:
    return emu.core_v1()


def kubectl(emu: KubeEmulator, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_kubectl(emu.kubeconfig, NS, *args, stdin=stdin, check=check, timeout=timeout)


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def job_body(name: str, command: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {**spec, "template": {"spec": {
                "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", command]}]}}}}


def conditions(job: Any) -> dict[str, Any]:
    return {c.type: c for c in job.status.conditions or [] if c.status == "True"}


def pods_of(core: Any, job: str) -> list[Any]:
    return core.list_namespaced_pod(NS, label_selector=f"batch.kubernetes.io/job-name={job}").items


def events_of(core: Any, name: str) -> list[tuple[str, str]]:
    evs = core.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items
    return [(e.reason, e.message) for e in evs]


@needs_kubectl
def test_job_completes_with_kubectl(emu: KubeEmulator, core: Any) -> None:
    kubectl(emu, "create", "job", "hello", "--image=busybox", "--", "sh", "-c", "echo hello from the job")
    kubectl(emu, "wait", "--for=condition=complete", "job/hello", "--timeout=30s")
    text = kubectl(emu, "get", "job", "hello").stdout
    header, row = text.splitlines()[:2]
    assert header.split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert row.split()[:3] == ["hello", "Complete", "1/1"]
    assert kubectl(emu, "logs", "job/hello").stdout == "hello from the job\n"
    (pod,) = pods_of(core, "hello")
    assert pod.metadata.name.startswith("hello-") and len(pod.metadata.name) == len("hello-") + 5
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("Job", "hello", True)
    assert pod.metadata.labels["batch.kubernetes.io/controller-uid"] == owner.uid
    job = kubectl(emu, "get", "job", "hello", "-o", "jsonpath={.status.conditions[*].type}").stdout
    assert job.split() == ["SuccessCriteriaMet", "Complete"]  # 1.31: the interim condition first
    reasons = events_of(core, "hello")
    assert ("SuccessfulCreate", f"Created pod: {pod.metadata.name}") in reasons
    assert ("Completed", "Job completed") in reasons
    wide = kubectl(emu, "get", "job", "hello", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[-3:] == ["CONTAINERS", "IMAGES", "SELECTOR"]


def test_backoff_limit(batch: Any, core: Any) -> None:
    batch.create_namespaced_job(NS, job_body("flaky", "echo nope; exit 3", backoffLimit=1))
    job = wait_for("Failed", lambda: (j := batch.read_namespaced_job("flaky", NS)) and "Failed" in conditions(j)
                   and j, timeout=40)
    failed = conditions(job)["Failed"]
    assert (failed.reason, failed.message) == ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    assert "FailureTarget" in conditions(job)
    assert job.status.failed == 2 and not job.status.succeeded and not job.status.active
    assert job.status.completion_time is None
    pods = pods_of(core, "flaky")
    assert len(pods) == 2 and {p.status.phase for p in pods} == {"Failed"}
    assert ("BackoffLimitExceeded", "Job has reached the specified backoff limit") in events_of(core, "flaky")


def test_active_deadline_kills_the_pod(batch: Any, core: Any) -> None:
    batch.create_namespaced_job(NS, job_body("slow", "sleep 60", activeDeadlineSeconds=2))
    job = wait_for("Failed", lambda: (j := batch.read_namespaced_job("slow", NS)) and "Failed" in conditions(j)
                   and j, timeout=40)
    failed = conditions(job)["Failed"]
    assert (failed.reason, failed.message) == ("DeadlineExceeded", "Job was active longer than specified deadline")
    wait_for("the pod stopped", lambda: all(p.status.phase == "Failed" for p in pods_of(core, "slow")))
    assert len(pods_of(core, "slow")) <= 1


def test_ttl_after_finished_deletes_job_and_pods(batch: Any, core: Any) -> None:
    batch.create_namespaced_job(NS, job_body("brief", "true", ttlSecondsAfterFinished=1))
    # completionTime has whole seconds, so the Job may go within a second of finishing: its events stay.
    wait_for("the job gone", lambda: all(j.metadata.name != "brief" for j in batch.list_namespaced_job(NS).items))
    assert ("Completed", "Job completed") in events_of(core, "brief")
    wait_for("its pods gone", lambda: not pods_of(core, "brief"))


def test_completions_and_parallelism(batch: Any, core: Any) -> None:
    batch.create_namespaced_job(NS, job_body("para", "sleep 1", completions=3, parallelism=2))
    most_active = 0
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        job = batch.read_namespaced_job("para", NS)
        running = [p for p in pods_of(core, "para") if p.status.phase not in ("Succeeded", "Failed")]
        most_active = max(most_active, len(running))
        if "Complete" in conditions(job):
            break
        time.sleep(0.1)
    assert "Complete" in conditions(job)
    assert job.status.succeeded == 3 and most_active <= 2
    assert len(pods_of(core, "para")) == 3


@needs_kubectl
def test_delete_propagation(emu: KubeEmulator, batch: Any, core: Any) -> None:
    from kubernetes import client

    for name in ("keep", "drop"):
        batch.create_namespaced_job(NS, job_body(name, "true"))
        wait_for("Complete", lambda n=name: "Complete" in conditions(batch.read_namespaced_job(n, NS)))
    # The client without a propagationPolicy: batch/v1 Jobs orphan their pods (the upstream default).
    batch.delete_namespaced_job("keep", NS)
    (pod,) = pods_of(core, "keep")
    assert not pod.metadata.owner_references
    # kubectl deletes in the background: the garbage collector takes the pods.
    kubectl(emu, "delete", "job", "drop")
    wait_for("the pods collected", lambda: not pods_of(core, "drop"))
    batch.create_namespaced_job(NS, job_body("fg", "true"))
    wait_for("Complete", lambda: "Complete" in conditions(batch.read_namespaced_job("fg", NS)))
    batch.delete_namespaced_job("fg", NS, body=client.V1DeleteOptions(propagation_policy="Foreground"))
    wait_for("the pods deleted", lambda: not pods_of(core, "fg"))


@needs_kubectl
def test_project_manifests_validate(emu: KubeEmulator) -> None:
    emu.create_namespace("triton")
    for manifest in ("deploy-job.yaml", "reconcile-cronjob.yaml", "rollout-target.yaml"):
        out = kubectl(emu, "apply", "--dry-run=server", "-n", "triton", "-f", str(ROOT / "k8s" / manifest))
        assert "created (server dry run)" in out.stdout, out.stdout
    bad = (ROOT / "k8s" / "deploy-job.yaml").read_text().replace("backoffLimit:", "backofLimit:")
    out = kubectl(emu, "apply", "--dry-run=server", "-n", "triton", "-f", "-", stdin=bad, check=False)
    assert out.returncode != 0 and 'unknown field "spec.backofLimit"' in out.stderr, out.stderr


CRON = """apiVersion: batch/v1
kind: CronJob
metadata:
  name: {name}
spec:
  schedule: "* * * * *"
  concurrencyPolicy: {policy}
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - name: main
            image: busybox
            command: ["sh", "-c", "{command}"]
"""


@needs_kubectl
def test_create_job_from_cronjob(emu: KubeEmulator, batch: Any) -> None:
    kubectl(emu, "apply", "-f", "-", stdin=CRON.format(name="manual", policy="Allow", command="echo manual run"))
    kubectl(emu, "patch", "cronjob", "manual", "-p", '{"spec":{"suspend":true}}')
    kubectl(emu, "create", "job", "manual-now", "--from=cronjob/manual")
    job = batch.read_namespaced_job("manual-now", NS)
    assert job.metadata.annotations["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job.metadata.owner_references[0].kind == "CronJob"
    kubectl(emu, "wait", "--for=condition=complete", "job/manual-now", "--timeout=30s")
    assert kubectl(emu, "logs", "job/manual-now").stdout == "manual run\n"
    header, row = kubectl(emu, "get", "cronjob", "manual").stdout.splitlines()[:2]
    assert header.split() == ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"]
    assert row.split()[:8] == ["manual", "*", "*", "*", "*", "*", "<none>", "True"]
    # The status subresource: only .status changes, whatever else the patch carries.
    kubectl(emu, "patch", "cronjob", "manual", "--subresource=status", "--type=merge", "-p",
            '{"spec":{"schedule":"@hourly"},"status":{"lastScheduleTime":"2026-01-01T00:00:00Z"}}')
    cj = batch.read_namespaced_cron_job("manual", NS)
    assert cj.spec.schedule == "* * * * *"
    assert cj.status.last_schedule_time == datetime(2026, 1, 1, tzinfo=UTC)


def test_cronjob_schedule_and_forbid(emu: KubeEmulator, batch: Any, core: Any) -> None:
    from kubernetes import client, utils

    api_client = batch.api_client
    import yaml

    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    utils.create_from_dict(api_client, yaml.safe_load(CRON.format(name="tick", policy="Forbid", command="sleep 30")),
                           namespace=NS)
    emu.set_cron_now(start + timedelta(seconds=5))
    first = f"tick-{int(start.timestamp()) // 60}"
    wait_for("the first scheduled job", lambda: any(j.metadata.name == first
                                                    for j in batch.list_namespaced_job(NS).items))
    cj = wait_for("status.active", lambda: (c := batch.read_namespaced_cron_job("tick", NS)) and c.status.active
                  and c)
    assert [r.name for r in cj.status.active] == [first]
    assert cj.status.last_schedule_time == start
    # The next minute: the first job still runs, so Forbid starts nothing.
    emu.set_cron_now(start + timedelta(minutes=1, seconds=5))
    wait_for("JobAlreadyActive", lambda: any(r == "JobAlreadyActive" for r, _ in events_of(core, "tick")))
    assert [j.metadata.name for j in batch.list_namespaced_job(NS).items if j.metadata.name.startswith("tick-")] \
        == [first]
    batch.patch_namespaced_cron_job("tick", NS, {"spec": {"suspend": True}})
    batch.delete_namespaced_cron_job("tick", NS, body=client.V1DeleteOptions(propagation_policy="Background"))
    wait_for("its job collected", lambda: not any(j.metadata.name == first
                                                  for j in batch.list_namespaced_job(NS).items))


@needs_kubectl
def test_suspend_and_resume(emu: KubeEmulator, batch: Any, core: Any) -> None:
    body = job_body("later", "echo resumed")
    body["spec"]["suspend"] = True
    batch.create_namespaced_job(NS, body)
    wait_for("Suspended", lambda: "Suspended" in conditions(batch.read_namespaced_job("later", NS)))
    assert kubectl(emu, "get", "job", "later").stdout.splitlines()[1].split()[1] == "Suspended"
    time.sleep(0.6)
    assert not pods_of(core, "later") and batch.read_namespaced_job("later", NS).status.start_time is None
    kubectl(emu, "patch", "job", "later", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    kubectl(emu, "wait", "--for=condition=complete", "job/later", "--timeout=30s")
    reasons = [r for r, _ in events_of(core, "later")]
    assert "Suspended" in reasons and "Resumed" in reasons
    assert "job.batch/later" in kubectl(emu, "get", "all", "-o", "name").stdout


def test_pod_create_errors_are_events(batch: Any, core: Any) -> None:
    body = job_body("nosa", "true")
    body["spec"]["template"]["spec"]["serviceAccountName"] = "missing"
    batch.create_namespaced_job(NS, body)
    wait_for("FailedCreate", lambda: [m for r, m in events_of(core, "nosa") if r == "FailedCreate"])
    time.sleep(1)
    (message,) = [m for r, m in events_of(core, "nosa") if r == "FailedCreate"]  # reported once
    assert 'serviceaccount "missing" not found' in message
    assert not pods_of(core, "nosa")
    batch.delete_namespaced_job("nosa", NS)


def test_job_validation(batch: Any) -> None:
    from kubernetes.client.rest import ApiException

    body = job_body("always", "true")
    body["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(ApiException) as err:
        batch.create_namespaced_job(NS, body)
    assert err.value.status == 422
    message = json.loads(err.value.body)["message"]
    assert message.startswith('Job.batch "always" is invalid: spec.template.spec.restartPolicy: Unsupported value: '
                              '"Always"'), message


def test_cronjob_replace(emu: KubeEmulator, batch: Any, core: Any) -> None:
    import yaml
    from kubernetes import client, utils

    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=10)
    utils.create_from_dict(batch.api_client, yaml.safe_load(
        CRON.format(name="swap", policy="Replace", command="sleep 30")), namespace=NS)
    emu.set_cron_now(start + timedelta(seconds=1))
    first = f"swap-{int(start.timestamp()) // 60}"
    wait_for("the first job active", lambda: [r.name for r in batch.read_namespaced_cron_job(
        "swap", NS).status.active or []] == [first])
    emu.set_cron_now(start + timedelta(minutes=1, seconds=1))
    second = f"swap-{int(start.timestamp()) // 60 + 1}"
    wait_for("the second job replaces it", lambda: [r.name for r in batch.read_namespaced_cron_job(
        "swap", NS).status.active or []] == [second])
    wait_for("the first job deleted",
             lambda: all(j.metadata.name != first for j in batch.list_namespaced_job(NS).items))
    job = batch.read_namespaced_job(second, NS)
    stamp = (start + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert job.metadata.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"] == stamp
    batch.patch_namespaced_cron_job("swap", NS, {"spec": {"suspend": True}})
    batch.delete_namespaced_cron_job("swap", NS, body=client.V1DeleteOptions(propagation_policy="Foreground"))
    wait_for("its pods gone", lambda: not pods_of(core, second))


def test_cronjob_time_zone_and_starting_deadline(emu: KubeEmulator, batch: Any) -> None:
    import yaml
    from kubernetes import client, utils

    day = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) + timedelta(days=1)
    doc = yaml.safe_load(CRON.format(name="zoned", policy="Allow", command="true"))
    doc["spec"].update({"schedule": "0 11 * * *", "timeZone": "Etc/GMT-1", "startingDeadlineSeconds": 20})
    utils.create_from_dict(batch.api_client, doc, namespace=NS)
    # 11:00 in UTC+1 is 10:00 UTC; 30 s after it the 20 s starting deadline has passed: nothing starts.
    emu.set_cron_now(day + timedelta(seconds=30))
    time.sleep(1.5)
    names = [j.metadata.name for j in batch.list_namespaced_job(NS).items if j.metadata.name.startswith("zoned-")]
    assert names == [] and batch.read_namespaced_cron_job("zoned", NS).status.last_schedule_time is None
    # The next day, within the deadline.
    emu.set_cron_now(day + timedelta(days=1, seconds=5))
    name = f"zoned-{int((day + timedelta(days=1)).timestamp()) // 60}"
    job = wait_for("the zoned job", lambda: next((j for j in batch.list_namespaced_job(NS).items
                                                  if j.metadata.name == name), None))
    stamp = (day + timedelta(days=1, hours=1)).strftime("%Y-%m-%dT%H:%M:%S+01:00")
    assert job.metadata.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"] == stamp
    batch.delete_namespaced_cron_job("zoned", NS, body=client.V1DeleteOptions(propagation_policy="Background"))


def test_suspending_a_running_job_is_not_a_failure(batch: Any, core: Any) -> None:
    from kubernetes import client

    batch.create_namespaced_job(NS, job_body("pause", "sleep 30"))
    wait_for("a running pod", lambda: [p for p in pods_of(core, "pause") if p.status.phase == "Running"])
    batch.patch_namespaced_job("pause", NS, {"spec": {"suspend": True}})
    wait_for("its pod gone", lambda: not pods_of(core, "pause"), timeout=20)
    time.sleep(0.6)
    job = batch.read_namespaced_job("pause", NS)
    assert conditions(job)["Suspended"].reason == "JobSuspended"
    assert not job.status.failed and not job.status.active and job.status.start_time is None
    batch.delete_namespaced_job("pause", NS, body=client.V1DeleteOptions(propagation_policy="Background"))
