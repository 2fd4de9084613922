"""The main job on the local stack, through a running Airflow: ``make demo``.

Starts S3 (moto's server, which sends bucket notifications to its SQS), Triton (CPU tritonserver), the
Kubernetes API emulator (pods run for real) and
Airflow (api-server, scheduler, dag-processor, triggerer on loopback, as ``make up`` does), then tells
the committed deploy DAG's story the way users start deploys, every run executed by the scheduler:

1. auto-start: the DAG is unpaused with nothing published; the scheduled run's sensor defers in the
   triggerer; v1 is published and the run deploys it (publish -> serving, by polling);
2. a deploy through the REST API the UI's trigger form uses: v2, by version;
3. a manual run asking for the older v1 is refused (no ``allow_downgrade``), and v2 keeps serving;
4. a backfill over two past hours, run by the scheduler: each run deploys the version current at its
   logical date (the demo's releases carry back-dated ``created_at`` stamps so there is a past to replay);
5. a bad v3 (loads, answers wrongly): the smoke test fails, the rollback restores v2, the run fails; a
   local webhook receives the failure and the rollback notifications;
6. S3 events: demo-tensor's DAG runs on its bucket notifications (SQS -> an AssetWatcher in the
   triggerer); its v1 is published and served without any poll (publish -> serving, by event).

Prints the figures (time to healthy, per-step durations, publish -> serving), the endpoints and a real
answer, then stops everything it started. Exit status 0 only if every step did what it should.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .airflow import USERNAME, AirflowClient, AirflowServer
from .receiver import Receiver
from .stack import BUCKET, DEFAULT_TRITON_REPLICAS, LocalStack, events_queue_variable

REPO = Path(__file__).resolve().parent.parent
MODEL = "demo-llm"
DAG_ID = f"deploy_{MODEL}"
EVENT_MODEL = "demo-tensor"  # devstack.stack.EVENT_MODELS: its bucket notifications start its deploys
EVENT_DAG_ID = f"deploy_{EVENT_MODEL}"
STEPS = ["wait_for_release", "resolve", "build_engine", "sync", "load", "smoke", "promote", "announce", "rollback"]


class DemoFailed(Exception):
    pass


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _infer(base_url: str, version: int, prompt: str) -> dict[str, Any]:
    body = {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [prompt]},
                       {"name": "max_tokens", "shape": [1], "datatype": "INT32", "data": [16]}]}
    req = urllib.request.Request(f"{base_url}/v2/models/ensemble/versions/{version}/infer",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def _text(answer: dict[str, Any]) -> str:
    return str(next(o for o in answer["outputs"] if o["name"] == "text_output")["data"][0])


def _states(states: dict[str, str]) -> str:
    return ", ".join(f"{t}={states.get(t, '?')}" for t in STEPS)


class Story:
    """The demo's steps against one running Airflow and stack."""

    def __init__(self, client: AirflowClient, stack: LocalStack, work: Path, receiver: Receiver) -> None:
        self.client = client
        self.stack = stack
        self.work = work
        self.receiver = receiver
        self.base = stack.triton_url  # the Triton Service (what clients use)
        self.results: list[str] = []

    def publish(self, version: int, created_at: datetime, variant: str = "good") -> None:
        from devstack import demo_models

        uri = demo_models.publish_version(BUCKET, self.work / "releases", MODEL, version, variant=variant,
                                          created_at=created_at, source=f"make demo: {variant} release")
        print(f"  published {uri} ({variant}, created_at {created_at.isoformat(timespec='minutes')})")

    def wait(self, run_id: str, *, expect: str, dag_id: str = DAG_ID) -> dict[str, str]:
        states = self.client.wait_for_run(dag_id, run_id)
        run = self.client.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        print(f"  run {run_id}: {run['state']}; tasks: {_states(states)}")
        if run["state"] != expect:
            raise DemoFailed(f"run {run_id} ended {run['state']}, expected {expect}: {_states(states)}")
        return states

    def serving(self, version: int) -> str:
        answer = _infer(self.base, version, "the model ")
        if answer["model_version"] != str(version):
            raise DemoFailed(f"Triton answered with version {answer['model_version']}, expected {version}")
        return _text(answer)

    def step_durations(self, run_id: str, dag_id: str = DAG_ID) -> str:
        tis = self.client.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        took = {t["task_id"]: t.get("duration") for t in tis if t.get("duration") is not None}
        return ", ".join(f"{t} {took[t]:.1f}s" for t in STEPS if t in took)

    def latency(self, dag_id: str, run_id: str, published: datetime) -> str:
        """How long after ``published`` the run noticed the release (its sensor succeeded) and promoted it,
        from the task instances' own end dates (the same clock for polling and event runs)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        ends = {t["task_id"]: datetime.fromisoformat(t["end_date"])
                for t in self.client.request("GET", path)["task_instances"] if t.get("end_date")}
        noticed, promoted = ends["wait_for_release"] - published, ends["promote"] - published
        return (f"published -> noticed {noticed.total_seconds():.1f}s -> promoted {promoted.total_seconds():.1f}s "
                "after the publish")

    def deferred(self, run_id: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ti = self.client.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/wait_for_release")
            if ti["state"] == "deferred":
                return
            time.sleep(1)
        raise DemoFailed(f"the sensor of {run_id} did not defer within {timeout:.0f}s")

    # -- the story ---------------------------------------------------------------------------------------

    def auto_start(self, history: datetime) -> None:
        _say("1. auto-start: unpause the DAG with nothing published; the scheduled run waits in the triggerer")
        self.client.unpause(DAG_ID)
        run_id = self._first_scheduled_run()
        self.deferred(run_id)
        print(f"  {run_id}: wait_for_release is deferred (the triggerer polls S3 every 2 s)")
        self.publish(1, created_at=history)
        published = datetime.now(UTC)  # publish writes manifest.json last: the release is complete now
        self.wait(run_id, expect="success")
        text = self.serving(1)
        self.results.append(f"auto-start by polling (2 s poke; the default 60 s adds up to 60 s): v1 "
                            f"{self.latency(DAG_ID, run_id, published)}; steps: {self.step_durations(run_id)}")
        print(f"  v1 serves: {text!r}")

    def _first_scheduled_run(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.client.runs(DAG_ID, run_type="scheduled")
            if runs:
                return str(runs[-1]["dag_run_id"])
            time.sleep(1)
        raise DemoFailed("unpausing the deploy DAG created no scheduled run")

    def rest_deploy(self, created_at: datetime) -> None:
        _say("2. deploy v2 through the REST API the UI's trigger form uses (conf {\"version\": 2})")
        self.publish(2, created_at=created_at)
        started = time.monotonic()
        run_id = self.client.trigger(DAG_ID, {"version": 2})
        self.wait(run_id, expect="success")
        text = self.serving(2)
        self.results.append(f"REST deploy: v2 promoted in {time.monotonic() - started:.0f}s from the trigger; "
                            f"steps: {self.step_durations(run_id)}")
        self.results.append(f"live endpoint: {self.base}/v2/models/ensemble/versions/2/infer (and /generate); "
                            f"'the model ' -> {text!r}")

    def refused_downgrade(self) -> None:
        _say("3. a manual run asking for the older v1 (as a 0 typed in the form becomes 1): refused")
        run_id = self.client.trigger(DAG_ID, {"version": 1})
        states = self.wait(run_id, expect="failed")
        log = self.client.task_log(DAG_ID, run_id, "resolve")
        refusal = next((line for line in log.splitlines() if "refusing to replace" in line), "")
        if states.get("resolve") != "failed" or not refusal:
            raise DemoFailed(f"the downgrade was not refused at resolve: {_states(states)}")
        print(f"  {refusal.strip()}")
        self.serving(2)
        self.results.append("downgrade to v1 without allow_downgrade: refused before any change; v2 kept serving")

    def backfill(self, first: datetime, second: datetime) -> None:
        _say(f"4. backfill {first:%H:%M}..{second:%H:%M} UTC (hourly), run by the scheduler: the versions current then")
        self.client.wait_until_idle(DAG_ID)  # a backfill's runs are not held back by max_active_runs
        started = time.monotonic()
        backfill = self.client.backfill(DAG_ID, first, second)
        self.client.wait_for_backfill(backfill)
        runs = self.client.runs(DAG_ID, run_type="backfill")
        deployed = []
        for run in runs:
            states = self.wait(run["dag_run_id"], expect="success")
            summary = [line for line in self.client.task_log(DAG_ID, run["dag_run_id"], "resolve").splitlines()
                       if "SUMMARY resolve" in line]
            deployed.append(summary[-1].split("SUMMARY resolve ", 1)[1].split(":", 1)[0] if summary else "?")
            if states.get("promote") != "success":
                raise DemoFailed(f"backfill run {run['dag_run_id']} did not promote: {_states(states)}")
        if deployed != [f"{MODEL} v1", f"{MODEL} v2"]:
            raise DemoFailed(f"the backfill deployed {deployed}, expected v1 then v2")
        self.serving(2)
        self.results.append(f"backfill: {len(runs)} runs of type backfill deployed {', '.join(deployed)} "
                            f"(as of their logical dates) in {time.monotonic() - started:.0f}s; v2 serves")

    def bad_release(self) -> None:
        _say("5. a bad v3 (it loads, but answers differently from its golden cases): rolled back")
        before = self.serving(2)
        self.publish(3, created_at=datetime.now(UTC), variant="wrong")
        run_id = self.client.trigger(DAG_ID)
        states = self.wait(run_id, expect="failed")
        if states.get("smoke") != "failed" or states.get("rollback") != "success":
            raise DemoFailed(f"the bad release was not rolled back as expected: {_states(states)}")
        log = self.client.task_log(DAG_ID, run_id, "smoke").splitlines()
        ending = [line for line in log if line.startswith("StepFailed:") or "what to do:" in line][-2:]
        print("  the smoke task fails with:\n    " + "\n    ".join(ending))
        if self.serving(2) != before:
            raise DemoFailed("after the rollback v2 answers differently")
        posted = self.receiver.wait_for(2, where=lambda m: m.body.get("run_id") == run_id, timeout=60)
        events = sorted(str(m.body.get("event")) for m in posted)
        if events != ["failure", "rollback"]:
            raise DemoFailed(f"expected a failure and a rollback notification for {run_id}, got {events}")
        print("  notifications posted to the webhook:\n    " + "\n    ".join(
            str(m.body["text"]).splitlines()[0] for m in posted))
        self.results.append("bad release v3: smoke test failed (on its shadow names: no client reached it), the "
                            "rollback discarded it, the run failed (as it should); v2 still answers the same; the "
                            "webhook got the failure and the rollback notices")


    def watch_events(self) -> None:
        """Unpause the event-started model's DAG early: its AssetWatcher is registered at the next parse of
        the DAG file (a paused DAG's assets get none), up to min_file_process_interval (60 s) later."""
        self.client.unpause(EVENT_DAG_ID)

    def event_start(self, airflow: AirflowServer, timeout: float = 180.0) -> None:
        _say(f"6. S3 events: publish {EVENT_MODEL} v1; the bucket notifies SQS, the AssetWatcher starts the run")
        queue = self.stack.env()[events_queue_variable(EVENT_MODEL)]
        try:
            airflow.wait_for_sqs_watcher(queue, timeout)
        except RuntimeError as exc:
            raise DemoFailed(f"{EVENT_DAG_ID}: {exc}") from None
        self.client.wait_until_idle(EVENT_DAG_ID)  # the catch-up scheduled run of unpausing: it looked once
        print(f"  the triggerer long-polls {queue}")
        from devstack import demo_models

        uri = demo_models.publish_version(BUCKET, self.work / "releases", EVENT_MODEL, 1, source="make demo: event")
        published = datetime.now(UTC)
        print(f"  published {uri}")
        deadline = time.monotonic() + timeout
        while not (runs := self.client.runs(EVENT_DAG_ID, run_type="asset_triggered")):
            if time.monotonic() > deadline:
                raise DemoFailed(f"publishing {EVENT_MODEL} v1 started no asset-triggered run within {timeout:.0f}s")
            time.sleep(0.2)
        run_id = str(runs[-1]["dag_run_id"])
        self.wait(run_id, expect="success", dag_id=EVENT_DAG_ID)
        if not _ready(self.base, "demo_tensor", 1):
            raise DemoFailed(f"the event run {run_id} succeeded but {EVENT_MODEL} v1 is not ready in Triton")
        self.results.append(f"auto-start by S3 event (no poll): {EVENT_MODEL} v1 "
                            f"{self.latency(EVENT_DAG_ID, run_id, published)}; "
                            f"steps: {self.step_durations(run_id, EVENT_DAG_ID)}")


def _ready(base_url: str, triton_model: str, version: int) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/v2/models/{triton_model}/versions/{version}/ready", timeout=2):
            return True
    except OSError:  # URLError and HTTPError (400 until the version is loaded) are OSErrors
        return False


def run_demo(*, keep: bool = False, rollback: bool = True) -> int:
    work = Path(tempfile.mkdtemp(prefix="demo-", dir=_work_root()))
    stack = LocalStack(work / "stack", triton_replicas=DEFAULT_TRITON_REPLICAS)
    receiver = Receiver()  # the webhook the failure and rollback notifications reach
    airflow: AirflowServer | None = None
    started = time.monotonic()
    try:
        _say("starting the local stack: S3 + SQS (moto's server), Triton, Kubernetes API emulator")
        stack.start()
        env = stack.env()
        os.environ.update(env)  # this process publishes the releases, as a producer would
        print(f"S3 {env['AWS_ENDPOINT_URL']} · Triton {env['TRITON_URL']} · kubeconfig {env['KUBECONFIG']}")

        _say("starting Airflow on loopback: api-server, scheduler, dag-processor, triggerer (LocalExecutor)")
        t0 = time.monotonic()
        receiver.start()
        airflow = AirflowServer.for_stack(stack, work / "airflow", ROLLOUT_SENSOR_POKE_S="2",
                                          **receiver.airflow_env()).start()
        healthy = time.monotonic() - t0
        client = AirflowClient(airflow.url, USERNAME, airflow.password)
        client.wait_for_dag(DAG_ID)
        print(f"Airflow {airflow.url} (login {USERNAME} / {airflow.password}): healthy in {healthy:.0f}s "
              "(db migrate + pools included)")

        story = Story(client, stack, work, receiver)
        story.results.append(f"Airflow healthy in {healthy:.0f}s after start (db migrate, pools, four components)")
        story.watch_events()
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        # Back-dated stamps: v1 was current at hour-3h, v2 from hour-2.5h on; the backfill replays both.
        story.auto_start(history=hour - timedelta(hours=3, minutes=30))
        story.rest_deploy(created_at=hour - timedelta(hours=2, minutes=30))
        story.refused_downgrade()
        story.backfill(hour - timedelta(hours=3), hour - timedelta(hours=2))
        if rollback:
            story.bad_release()
        story.event_start(airflow)

        _say(f"demo result ({time.monotonic() - started:.0f}s)")
        for line in story.results:
            print(f"  {line}")
        return 0
    except DemoFailed as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"\ndemo FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if airflow is not None:
            airflow.stop()
        stack.stop()
        receiver.stop()
        print("stopped Airflow, S3, Triton, the Kubernetes emulator and the webhook receiver", flush=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")


def _work_root() -> Path:
    root = REPO / ".devstack"
    root.mkdir(exist_ok=True)
    return root
