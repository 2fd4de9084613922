"""S3 events start deploys in a running Airflow: a PUT of a release's manifest.json -> the bucket's
notification -> the model's SQS queue -> the AssetWatcher in the real triggerer -> an asset-triggered run
by the scheduler -> serving. On the session's local stack, whose S3 is moto's server (devstack/moto.py:
the one local S3 that sends bucket notifications)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from urllib.parse import quote

import pytest

from devstack import demo_models
from devstack.stack import BUCKET
from tests.helpers import DEPLOY_TENSOR, RunningAirflow, environment

pytestmark = pytest.mark.slow

TENSOR = demo_models.TENSOR_MODEL
TRITON_NAME = "demo_tensor"  # the release's Triton model (devstack/demo_models/tensor)


def _ready(triton_url: str, version: int) -> bool:
    try:
        with urllib.request.urlopen(f"{triton_url}/v2/models/{TRITON_NAME}/versions/{version}/ready", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def _event_runs(af: RunningAirflow) -> list[dict]:  # type: ignore[type-arg]
    return af.client.runs(DEPLOY_TENSOR, run_type="asset_triggered")


@pytest.mark.timeout(600)
def test_a_published_release_is_served_within_seconds_through_the_s3_event(running_airflow: RunningAirflow) -> None:
    af, client = running_airflow, running_airflow.client
    queue = af.wait_for_event_watcher()
    client.wait_until_idle(DEPLOY_TENSOR)
    # Unpausing started the scheduled run of the current interval: with events on it looked once and
    # skipped ("nothing newer") instead of holding the DAG's one active run while it polled.
    (catch_up,) = client.runs(DEPLOY_TENSOR, run_type="scheduled")
    states = client.wait_for_run(DEPLOY_TENSOR, catch_up["dag_run_id"])
    if states["wait_for_release"] == "skipped":
        log = client.task_log(DEPLOY_TENSOR, catch_up["dag_run_id"], "wait_for_release")
        assert "a scheduled run only catches up on a lost one; looked once for a release" in log, log[-2000:]

    v = af.next_version(TENSOR)
    before = len(_event_runs(af))
    af.publish(v, model=TENSOR)
    published = datetime.now(UTC)  # manifest.json, written last, is in S3: the release is complete
    deadline = time.monotonic() + 120
    while len(runs := _event_runs(af)) == before:
        assert time.monotonic() < deadline, f"publishing v{v} of {TENSOR} started no event run within 120 s"
        time.sleep(0.2)
    assert len(runs) == before + 1, runs
    run_id = runs[-1]["dag_run_id"]
    states = client.wait_for_run(DEPLOY_TENSOR, run_id)
    assert states["promote"] == "success" and states["announce"] == "success", states
    assert _ready(af.triton_url, v)
    tis = client.request("GET", f"/dags/{DEPLOY_TENSOR}/dagRuns/{quote(run_id, safe='')}/taskInstances")
    ends = {t["task_id"]: datetime.fromisoformat(t["end_date"]) for t in tis["task_instances"] if t.get("end_date")}
    noticed = (ends["wait_for_release"] - published).total_seconds()
    latency = (ends["promote"] - published).total_seconds()
    print(f"\npublish -> noticed {noticed:.1f} s -> promoted {latency:.1f} s through the S3 event (v{v}, {queue})")
    log = client.task_log(DEPLOY_TENSOR, run_id, "wait_for_release")
    assert "event run asking for the newest release" in log
    assert f"started by S3 event(s): s3://{BUCKET}/releases/{TENSOR}/{v}/manifest.json (ObjectCreated:Put" in log
    # Within seconds: the deploy itself (sync, load, smoke, promote pods) is most of it; a 60 s poll would
    # add 30 s on average before the run even starts.
    assert noticed < 15, f"the event run's sensor finished {noticed:.1f} s after the publish"
    assert latency < 60, f"publish -> promoted took {latency:.1f} s through the event path"

    # The same manifest written again (a re-upload) notifies again: the run looks, finds nothing newer
    # than what serves, and is skipped: an event never re-deploys or downgrades.
    with environment(af.env):
        from triton_rollout.release.s3 import make_client

        s3 = make_client()
        key = f"releases/{TENSOR}/{v}/manifest.json"
        s3.put_object(Bucket=BUCKET, Key=key, Body=s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    deadline = time.monotonic() + 120
    while len(_event_runs(af)) < before + 2:
        assert time.monotonic() < deadline, "re-writing the manifest started no event run"
        time.sleep(0.5)
    again = _event_runs(af)[-1]["dag_run_id"]
    states = client.wait_for_run(DEPLOY_TENSOR, again)
    assert states["wait_for_release"] == "skipped" and states["sync"] == "skipped", states
    log = client.task_log(DEPLOY_TENSOR, again, "wait_for_release")
    assert f"an S3 event run; looked once for a release newer than v{v}" in log, log[-2000:]
    assert _ready(af.triton_url, v)
