"""Deploy benchmark: publish -> serving on the local stack, through a running Airflow, and what each step costs.

One run starts what `make demo` starts (S3 with its SQS notifications, a Triton fleet in the Kubernetes
emulator, a running Airflow: api-server, scheduler, dag-processor, triggerer), then for several rounds:

- polling start: a run of demo-llm's deploy DAG waits (its sensor deferred in the triggerer, poking S3 every
  ``BENCH_POKE_S``), the next version is published, and the run deploys it;
- event start: demo-tensor's next version is published; the bucket notification reaches SQS, the DAG's
  AssetWatcher starts a run, which deploys it (no poll).

For each round it prints when, after the publish (manifest.json written, the release complete), the sensor
noticed the release and the promote task finished, both from the task instances' own end dates; and per
step the task's duration, the step's own work as its pod reports it (the ``seconds`` of its JSON result, where
it has one) and the difference: what the pod around the work adds (create, schedule, image-less start here,
the operator's polls, the log read). Medians over the rounds; the machine is shared, so read the ratios.

    PYTHONPATH=.:plugins python -m bench.deploy_latency       (make bench runs it)

Environment knobs:
    BENCH_DEPLOY_ROUNDS=3      rounds of each start
    BENCH_POKE_S=2             the sensor's poke interval (the DAGs' default is 60 s: add up to that to polling)
    BENCH_TRITON_REPLICAS=2    Triton replicas (the local stack's default)
    BENCH_DEPLOY_RESULTS=path  where the JSON goes (default bench/results/deploy.json)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devstack import demo_models
from devstack.airflow import USERNAME, AirflowClient, AirflowServer
from devstack.receiver import Receiver
from devstack.stack import BUCKET, DEFAULT_TRITON_REPLICAS, LocalStack, events_queue_variable

REPO = Path(__file__).resolve().parent.parent
POLL_MODEL, EVENT_MODEL = demo_models.LLM_MODEL, demo_models.TENSOR_MODEL
POLL_DAG, EVENT_DAG = f"deploy_{POLL_MODEL}", f"deploy_{EVENT_MODEL}"
STEPS = ("wait_for_release", "resolve", "build_engine", "sync", "load", "smoke", "promote", "announce")


@dataclass
class StepCost:
    task_s: float
    work_s: float | None  # the step's own figure from its pod's result; None where it reports none

    @property
    def pod_overhead_s(self) -> float | None:
        return None if self.work_s is None else round(self.task_s - self.work_s, 2)


@dataclass
class Round:
    start: str  # "polling" | "event"
    model: str
    version: int
    noticed_s: float
    promoted_s: float
    steps: dict[str, StepCost] = field(default_factory=dict)


class Bench:
    def __init__(self, client: AirflowClient, work: Path) -> None:
        self.client = client
        self.work = work

    def _tis(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        return list(self.client.request("GET", path)["task_instances"])

    def _work_seconds(self, dag_id: str, run_id: str, task_id: str) -> float | None:
        path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/xcomEntries/result"
        try:
            value = self.client.request("GET", path).get("value")
        except OSError:  # urllib's HTTPError: no result XCom (a task without a pod)
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        seconds = value.get("seconds") if isinstance(value, dict) else None
        return float(seconds) if isinstance(seconds, int | float) else None

    def measure(self, start: str, dag_id: str, model: str, version: int, run_id: str, published: datetime) -> Round:
        states = self.client.wait_for_run(dag_id, run_id)
        if states.get("promote") != "success":
            raise RuntimeError(f"{dag_id} run {run_id} did not promote v{version}: {states}")
        tis = {t["task_id"]: t for t in self._tis(dag_id, run_id)}
        ends = {k: datetime.fromisoformat(t["end_date"]) for k, t in tis.items() if t.get("end_date")}
        result = Round(start, model, version, round((ends["wait_for_release"] - published).total_seconds(), 2),
                       round((ends["promote"] - published).total_seconds(), 2))
        for step in STEPS:
            ti = tis.get(step)
            if ti is None or ti.get("duration") is None or ti["state"] != "success":
                continue
            work = self._work_seconds(dag_id, run_id, step) if step not in ("wait_for_release", "resolve") else None
            result.steps[step] = StepCost(round(float(ti["duration"]), 2), work)
        return result

    def deferred(self, dag_id: str, run_id: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ti = self.client.request("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                                            "wait_for_release")
            if ti["state"] == "deferred":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the sensor of {run_id} did not defer within {timeout:.0f}s")

    def polling_round(self, version: int) -> Round:
        # Unpausing left a scheduled run waiting for a first release: that one is the warm-up round's run.
        waiting = self.client.runs(POLL_DAG, state=["queued", "running"])
        run_id = str(waiting[-1]["dag_run_id"]) if waiting else self.client.trigger(POLL_DAG, {"only_if_new": True})
        self.deferred(POLL_DAG, run_id)
        demo_models.publish_version(BUCKET, self.work / "releases", POLL_MODEL, version, source="deploy bench")
        published = datetime.now(UTC)  # publish writes manifest.json last: complete from here
        return self.measure("polling", POLL_DAG, POLL_MODEL, version, run_id, published)

    def event_round(self, version: int, timeout: float = 180.0) -> Round:
        self.client.wait_until_idle(EVENT_DAG)
        before = {r["dag_run_id"] for r in self.client.runs(EVENT_DAG, run_type="asset_triggered")}
        demo_models.publish_version(BUCKET, self.work / "releases", EVENT_MODEL, version, source="deploy bench")
        published = datetime.now(UTC)
        deadline = time.monotonic() + timeout
        while not (new := [r for r in self.client.runs(EVENT_DAG, run_type="asset_triggered")
                           if r["dag_run_id"] not in before]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"publishing {EVENT_MODEL} v{version} started no run within {timeout:.0f}s")
            time.sleep(0.2)
        return self.measure("event", EVENT_DAG, EVENT_MODEL, version, str(new[-1]["dag_run_id"]), published)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def summarize(rounds: list[Round]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for start in ("polling", "event"):
        mine = [r for r in rounds if r.start == start]
        steps: dict[str, Any] = {}
        for step in STEPS:
            costs = [r.steps[step] for r in mine if step in r.steps]
            if costs:
                steps[step] = {"task_s": _median([c.task_s for c in costs]),
                               "work_s": _median([c.work_s for c in costs if c.work_s is not None]),
                               "pod_overhead_s": _median([c.pod_overhead_s for c in costs
                                                          if c.pod_overhead_s is not None])}
        out[start] = {"rounds": len(mine), "noticed_s": _median([r.noticed_s for r in mine]),
                      "promoted_s": _median([r.promoted_s for r in mine]), "steps": steps}
    return out


def print_summary(summary: dict[str, Any], poke_s: float, replicas: int) -> None:
    print(f"\npublish -> serving (medians; sensor poke {poke_s:g} s, {replicas} Triton replicas)")
    for start, s in summary.items():
        print(f"  {start:8s} {s['rounds']} rounds: noticed {s['noticed_s']} s, promoted {s['promoted_s']} s "
              "after the publish")
    print("\nper step (median seconds): task = Airflow's duration; work = the step's own figure from its pod; "
          "pod = task - work")
    for start, s in summary.items():
        for step, c in s["steps"].items():
            work, pod = ("-" if c[k] is None else c[k] for k in ("work_s", "pod_overhead_s"))
            print(f"  {start:8s} {step:17s} task {c['task_s']:>6}  work {work:>6}  pod {pod:>6}")


def main() -> int:
    rounds_n = int(os.environ.get("BENCH_DEPLOY_ROUNDS", "3"))
    poke_s = float(os.environ.get("BENCH_POKE_S", "2"))
    replicas = int(os.environ.get("BENCH_TRITON_REPLICAS", str(DEFAULT_TRITON_REPLICAS)))
    results = Path(os.environ.get("BENCH_DEPLOY_RESULTS", REPO / "bench" / "results" / "deploy.json"))
    os.sync()  # after the sync bench: its dirty pages are not this bench's to write back
    (REPO / ".devstack").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="deploy-bench-", dir=REPO / ".devstack"))
    stack = LocalStack(work / "stack", triton_replicas=replicas)
    receiver = Receiver()
    airflow: AirflowServer | None = None
    try:
        stack.start()
        os.environ.update(stack.env())  # this process publishes, as a producer would
        receiver.start()
        airflow = AirflowServer.for_stack(stack, work / "airflow", ROLLOUT_SENSOR_POKE_S=f"{poke_s:g}",
                                          **receiver.airflow_env()).start()
        client = AirflowClient(airflow.url, USERNAME, airflow.password)
        for dag_id in (POLL_DAG, EVENT_DAG):
            client.wait_for_dag(dag_id)
            client.unpause(dag_id)
        # A re-parse request (the UI's "Reparse Dag"): the AssetWatcher of an unpaused DAG is registered at its
        # next parse, up to min_file_process_interval (60 s) away otherwise.
        client.request("PUT", f"/parseDagFile/{client.request('GET', f'/dags/{EVENT_DAG}')['file_token']}")
        airflow.wait_for_sqs_watcher(stack.env()[events_queue_variable(EVENT_MODEL)], 180)
        bench = Bench(client, work)
        rounds: list[Round] = []
        # v1 of each model warms the stack up (first loads, first pods) and is not counted.
        bench.polling_round(1)
        bench.event_round(1)
        for i in range(rounds_n):
            version = i + 2
            for r in (bench.polling_round(version), bench.event_round(version)):
                rounds.append(r)
                print(f"round {i + 1} {r.start}: {r.model} v{r.version} noticed {r.noticed_s} s, promoted "
                      f"{r.promoted_s} s after the publish", flush=True)
        summary = summarize(rounds)
        print_summary(summary, poke_s, replicas)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps({
            "finished": datetime.now(UTC).isoformat(timespec="seconds"), "poke_s": poke_s,
            "triton_replicas": replicas, "cpus": os.cpu_count(), "summary": summary,
            "rounds": [asdict(r) for r in rounds]}, indent=2) + "\n")
        print(f"\nresults: {results}")
        return 0
    finally:
        if airflow is not None:
            airflow.stop()
        stack.stop()
        receiver.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
