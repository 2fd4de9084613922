"""The deploy DAG run by a running Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor),
triggered through the REST API the UI uses, on the local stack (S3, Triton, the Kubernetes emulator).

What dag.test() cannot show: tasks authenticated by the shared JWT secret, scheduled by the scheduler into
the GPU pool, the deferred build pod resumed by the real triggerer in a fresh operator, task logs served by
the api-server, and nothing of Airflow listening beyond loopback.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from devstack.receiver import Received, Receiver
from tests.helpers import (
    DEPLOY_LLM,
    RUNNING_AIRFLOW_POD_RETENTION_S,
    RunningAirflow,
    environment,
    golden,
    infer_llm,
    scan_for_secrets,
    text_of,
    until,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def test_rest_trigger_deploys_and_the_deferred_build_resumes_in_the_triggerer(running_airflow: RunningAirflow) -> None:
    from triton_rollout.release.s3 import ReleaseUri, fetch_manifest

    af, client = running_airflow, running_airflow.client
    v = af.next_version()
    af.publish(v)
    run_id = client.trigger(DEPLOY_LLM, {"version": v})  # unpausing may also start the current scheduled run
    states = client.wait_for_run(DEPLOY_LLM, run_id)
    assert states["promote"] == "success" and states["announce"] == "success", states
    assert states["build_engine"] == "skipped" and states["rollback"] == "skipped", states
    assert f"SUMMARY smoke demo-llm v{v}: 3 checks passed" in af.summary(DEPLOY_LLM, run_id, "smoke")

    # The next version a checkpoint: the build pod (deferrable, in the GPU pool) must build it first.
    ckpt = af.publish_checkpoint(v + 1)
    engine = ReleaseUri.parse(ckpt).engine_release()
    run_id = client.trigger(DEPLOY_LLM, {"version": v + 1})
    states = client.wait_for_run(DEPLOY_LLM, run_id)
    assert states["build_engine"] == "success" and states["promote"] == "success", states
    # Resumed from the triggerer in a fresh operator: the result is read through the pod's own args.
    assert (f"SUMMARY build demo-llm v{v + 1}: engine release published at {engine}"
            in af.summary(DEPLOY_LLM, run_id, "build_engine"))
    assert f"promoted (previous v{v})" in af.summary(DEPLOY_LLM, run_id, "promote")
    with environment(af.env):
        assert fetch_manifest(engine).kind == "engine"
    assert text_of(infer_llm(af.triton_url, v + 1)) == golden(v + 1)


def test_bad_params_are_refused_by_the_api(running_airflow: RunningAirflow) -> None:
    client = running_airflow.client
    for bad in ({"version": 0}, {"version": "abc"}):
        with pytest.raises(urllib.error.HTTPError) as info:
            client.request("POST", f"/dags/{DEPLOY_LLM}/dagRuns", {"logical_date": None, "conf": bad})
        assert info.value.code == 400
        assert "version" in info.value.read().decode()


def test_a_misspelled_conf_key_and_a_silent_downgrade_are_refused(running_airflow: RunningAirflow) -> None:
    af, client = running_airflow, running_airflow.client
    v = af.next_version()
    af.publish(v)
    af.publish(v + 1)
    _, states = af.deploy({"version": v + 1})
    assert states["promote"] == "success", states

    run_id, states = af.deploy({"versoin": v})
    assert states["wait_for_release"] == "failed" and states["sync"] == "upstream_failed", states
    assert states["rollback"] == "skipped", states
    log = client.task_log(DEPLOY_LLM, run_id, "wait_for_release")
    assert "unknown conf key(s) 'versoin'" in log and "allow_downgrade, force, only_if_new, skip_smoke, version" in log

    # What the UI's number field turned a typed 0 into (1), or any older version: refused, nothing changes.
    run_id, states = af.deploy({"version": v})
    assert states["resolve"] == "failed" and states["sync"] == "upstream_failed", states
    assert states["rollback"] == "skipped", states  # nothing was loaded, nothing to roll back
    log = client.task_log(DEPLOY_LLM, run_id, "resolve")
    assert f"refusing to replace demo-llm v{v + 1} (what Triton serves) with the older v{v}" in log
    assert infer_llm(af.triton_url, v + 1)["model_version"] == str(v + 1)

    # Said on purpose: the older version is deployed (a deliberate rollback).
    run_id, states = af.deploy({"version": v, "allow_downgrade": True})
    assert states["promote"] == "success", states
    assert f"promoted (previous v{v + 1})" in af.summary(DEPLOY_LLM, run_id, "promote")
    assert text_of(infer_llm(af.triton_url, v)) == golden(v)


def test_a_ui_run_dated_now_deploys_a_release_published_after_it_was_triggered(running_airflow: RunningAirflow) -> None:
    from datetime import UTC, datetime
    from urllib.parse import quote

    af, client = running_airflow, running_airflow.client
    v = af.next_version()  # first the newest release serves, so "only if new" has nothing to take at once
    af.publish(v)
    _, states = af.deploy({"version": v})
    assert states["promote"] == "success", states
    # The UI's form pre-fills the logical date with "now"; "Only if new" waits for a newer release.
    run_id = client.trigger(DEPLOY_LLM, {"only_if_new": True}, logical_date=datetime.now(UTC))
    # The sensor looks once, finds nothing newer and defers: publish only then.
    sensor = f"/dags/{DEPLOY_LLM}/dagRuns/{quote(run_id, safe='')}/taskInstances/wait_for_release"
    until("the sensor to defer", lambda: client.request("GET", sensor)["state"] == "deferred", timeout=120)
    v += 1
    af.publish(v)
    states = client.wait_for_run(DEPLOY_LLM, run_id)
    assert states["promote"] == "success", states
    assert f"SUMMARY resolve demo-llm v{v}:" in af.summary(DEPLOY_LLM, run_id, "resolve")
    assert text_of(infer_llm(af.triton_url, v)) == golden(v)


def test_a_backfill_run_by_the_scheduler_deploys_the_versions_current_then(running_airflow: RunningAirflow) -> None:
    from datetime import UTC, datetime, timedelta

    af, client = running_airflow, running_airflow.client
    # The session's schedule is monthly (tests/conftest.py): replay two whole months four months back.
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    first = _months_before(month, 4)
    second = _months_before(month, 3)
    v = af.next_version()
    # Airflow 3's cron schedules are trigger timetables: a run's data interval is its logical date, so each
    # backfill run deploys the release current at its logical date.
    af.publish(v, created_at=first - timedelta(days=1))  # current on the first date
    af.publish(v + 1, created_at=first + timedelta(days=14))  # current on the second
    before = {r["dag_run_id"] for r in client.runs(DEPLOY_LLM)}
    client.unpause(DEPLOY_LLM)
    client.wait_until_idle(DEPLOY_LLM)  # e.g. the scheduled run unpausing starts
    backfill = client.backfill(DEPLOY_LLM, first, second)
    client.wait_for_backfill(backfill)
    runs = [r for r in client.runs(DEPLOY_LLM, run_type="backfill") if r["dag_run_id"] not in before]
    assert [r["logical_date"][:10] for r in runs] == [first.date().isoformat(), second.date().isoformat()], runs
    for run, version in zip(runs, (v, v + 1), strict=True):
        states = client.wait_for_run(DEPLOY_LLM, run["dag_run_id"])
        assert states["promote"] == "success", (run, states)
        assert f"SUMMARY resolve demo-llm v{version}:" in af.summary(DEPLOY_LLM, run["dag_run_id"], "resolve")
    answer = infer_llm(af.triton_url, v + 1)
    assert answer["model_version"] == str(v + 1) and text_of(answer) == golden(v + 1)


def _months_before(month: datetime, n: int) -> datetime:
    year, index = divmod(month.year * 12 + month.month - 1 - n, 12)
    return month.replace(year=year, month=index + 1)


def test_a_bad_release_is_rolled_back_and_its_log_ends_with_what_to_do(running_airflow: RunningAirflow,
                                                                        notify_receiver: Receiver) -> None:
    import json
    import time
    from datetime import UTC, timedelta
    from urllib.parse import quote

    from devstack.receiver import DEFAULT_ENDPOINT

    af, client = running_airflow, running_airflow.client
    v = af.next_version()
    af.publish(v)
    _, states = af.deploy({"version": v})
    assert states["promote"] == "success", states
    af.publish(v + 1, variant="wrong")
    run_id, states = af.deploy()
    assert states["smoke"] == "failed" and states["rollback"] == "success", states
    assert text_of(infer_llm(af.triton_url, v)) == golden(v)

    # Notified (models.yaml notify, pointed at the session's receiver): the smoke failure, then the rollback.
    def of_this_run(event: str) -> Callable[[Received], bool]:
        return lambda m: isinstance(m.body, dict) and m.body.get("run_id") == run_id and m.body.get("event") == event

    [failure] = notify_receiver.wait_for(1, where=of_this_run("failure"), timeout=60)
    [rolled_back] = notify_receiver.wait_for(1, where=of_this_run("rollback"), timeout=60)
    assert failure.path == DEFAULT_ENDPOINT and failure.headers["content-type"] == "application/json"
    sent = failure.body
    assert (sent["model"], sent["version"], sent["step"]) == ("demo-llm", v + 1, "smoke"), sent
    assert sent["error"].startswith("smoke of demo-llm failed (exit code"), sent
    assert "kubectl -n triton logs" in sent["what_to_do"], sent
    assert sent["run_url"] == f"{af.server.url}/dags/{DEPLOY_LLM}/runs/{quote(run_id, safe='')}", sent
    sent = rolled_back.body
    assert (sent["version"], sent["serving_version"], sent["failed_step"]) == (v + 1, v, "smoke"), sent
    assert f"demo-llm v{v + 1} was rolled back after smoke failed: v{v} serves again." in sent["text"], sent
    this_run = [m.body for m in notify_receiver.messages if isinstance(m.body, dict) and m.body.get("run_id") == run_id]
    assert sorted(m["step"] for m in this_run) == ["rollback", "smoke"], this_run  # one each, nothing else
    assert "sent the failure notification of demo-llm" in client.task_log(DEPLOY_LLM, run_id, "smoke")

    tail = client.task_log(DEPLOY_LLM, run_id, "smoke").strip().splitlines()[-15:]
    assert any("smoke of demo-llm failed (exit code" in line for line in tail), tail
    assert any("what to do:" in line and "kubectl -n triton logs" in line for line in tail), tail
    assert not any("remote_pod" in line for line in client.task_log(DEPLOY_LLM, run_id, "smoke").splitlines())

    # The failed smoke pod is kept for inspection ...
    def failed_smoke_pods() -> dict[str, datetime]:
        """Name -> when its container stopped (what the retention counts from, triton_rollout.kube.cleanup)."""
        pods = json.loads(af.kubectl("-n", "triton", "get", "pods", "-l", "triton-rollout/model=demo-llm",
                                     "-o", "json"))["items"]
        return {p["metadata"]["name"]: max(datetime.fromisoformat(s["state"]["terminated"]["finishedAt"])
                                           for s in p["status"]["containerStatuses"])
                for p in pods if p["status"].get("phase") == "Failed" and "smoke" in p["metadata"]["name"]}

    kept = failed_smoke_pods()
    assert kept, "the failed smoke pod should be kept for inspection"
    # ... and swept by the next step task once it is older than the retention.
    expires = max(kept.values()) + timedelta(seconds=RUNNING_AIRFLOW_POD_RETENTION_S + 1)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()))
    _, states = af.deploy({"version": v})
    assert states["promote"] == "success", states
    assert not set(kept) & set(failed_smoke_pods())


def test_a_failed_deferred_build_is_notified_once_after_its_retry(running_airflow: RunningAirflow,
                                                                   notify_receiver: Receiver) -> None:
    from triton_rollout.release.publish import publish_release

    from devstack import demo_models
    from devstack.stack import BUCKET

    af = running_airflow
    v = af.next_version()
    # A checkpoint without its tokenizer: the (deferred) build pod fails, a failure that is retried once.
    src = demo_models.write_llm_checkpoint(af.work / f"broken-checkpoint-{v}", v)
    (src / demo_models.VOCAB_FILE).unlink()
    with environment(af.env):
        publish_release(src, demo_models.release_uri(BUCKET, "releases", demo_models.LLM_MODEL, v), kind="checkpoint",
                        source="test checkpoint without a tokenizer")
    run_id, states = af.deploy({"version": v})
    assert states["build_engine"] == "failed" and states["sync"] == "upstream_failed", states
    assert states["rollback"] == "skipped", states

    # Sent by the resumed task's runner after the last try; the first try's failure (a retry) sends nothing.
    [failure] = notify_receiver.wait_for(1, where=lambda m: isinstance(m.body, dict) and m.body["run_id"] == run_id,
                                         timeout=60)
    sent = failure.body
    assert (sent["event"], sent["step"], sent["version"], sent["try_number"]) == ("failure", "build_engine", v, 2), sent
    assert sent["error"].startswith("build of demo-llm failed (exit code"), sent
    assert "kubectl -n triton logs" in sent["what_to_do"], sent
    assert len([m for m in notify_receiver.messages if isinstance(m.body, dict) and m.body["run_id"] == run_id]) == 1


def test_airflow_listens_on_loopback_only(running_airflow: RunningAirflow) -> None:
    airflow = running_airflow.server
    pids = set(airflow.pids().values())
    # Every process of each component's group (the api-server's workers, the executor's, the parser's).
    groups = {os.getpgid(pid) for pid in pids}
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout.splitlines()
    ours = [line for line in listening
            if any(f"pid={pid}," in line for pid in _group_members(groups))]
    assert ours, "the api-server should be listening"
    assert all(" 127.0.0.1:" in line for line in ours), ours


def _group_members(groups: set[int]) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) in groups:
                    members.add(int(entry.name))
            except ProcessLookupError:
                continue
    return members


def test_no_secret_appears_in_logs_xcoms_pages_notifications_or_manifests(
    running_airflow: RunningAirflow, notify_receiver: Receiver
) -> None:
    """Runs last in this file, after its deploys (REST, backfill, a rollback, a failed build): the S3 secret
    key (in the aws_default connection and the pods' Secret), Airflow's JWT secret and the metadata
    database's password appear in no task log, component log, pod log, XCom, API or UI page, notification
    or rendered manifest. Their legitimate stores are not scanned: the connection and the Secret themselves,
    the database, the kubeconfigs and the generated files in AIRFLOW_HOME."""
    scan = scan_for_secrets(running_airflow, [m.body for m in notify_receiver.messages])
    assert scan.task_logs and scan.pod_logs, "the deploys of this session should have written task and pod logs"
    print(f"\n{scan.describe()}")
    assert scan.leaks == [], scan.leaks[:5]
