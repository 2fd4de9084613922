"""Airflow faults and concurrent deploys against a running Airflow (tests/chaos/conftest.py ``chaos_airflow``):
the deploy DAG's task process, the worker, the triggerer and the scheduler SIGKILLed mid-run, and three deploys
of one model at once.

Every round watches what Triton could see and what clients got: a RepositoryWatcher on each Triton model's
new version directory (nothing partial ever visible), a ClientLoop on the model's unversioned generate endpoint
(every answer from a tested version, its text the golden text of the version it names), the previous version's
files hashed before and after (nothing lost), then the run's final state and the deployment state and history
on the PVC. Counts go to the faults ledger first, the assertions come after.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from devstack import demo_models
from devstack.stack import BUCKET
from tests.chaos.ledger import LEDGER, FaultRow
from tests.helpers import (
    DEPLOY_LLM,
    ClientLoop,
    RepositoryWatcher,
    RunningAirflow,
    environment,
    golden,
    post,
    scan_for_secrets,
    tree_digest,
    until,
)

pytestmark = [pytest.mark.slow]
MODEL = demo_models.LLM_MODEL
# The faults' releases: the demo LLM plus this much padding in its engine directory, published in parts of
# PART_MIB, so that the throttled sync (conftest.POD_S3_BYTES_PER_S) runs for seconds and journals parts.
PADDING_MIB = 16
PART_MIB = 2
RUN_TIMEOUT_S = 300.0


# -- what a round observes ---------------------------------------------------------------------------------


def _publish_big(af: RunningAirflow, version: int, *, created_at: datetime | None = None) -> dict[str, dict[str, int]]:
    """Publish demo-llm ``version`` with PADDING_MIB of engine padding; returns {triton model: {path: size}}."""
    from triton_rollout.release.publish import publish_release

    src = demo_models.write_release(MODEL, af.work / "big" / str(version), version)
    block = os.urandom(1024 * 1024)
    with open(src / "tensorrt_llm" / "padding.bin", "wb") as fh:
        for i in range(PADDING_MIB):
            fh.write(i.to_bytes(8, "little") + block[8:])
    with environment(af.env):
        publish_release(src, demo_models.release_uri(BUCKET, "releases", MODEL, version), created_at=created_at,
                        source="chaos release", compat=demo_models.release_compat(MODEL),
                        part_size=PART_MIB * 1024 * 1024)
    return {d.name: {p.relative_to(d).as_posix(): p.stat().st_size for p in d.rglob("*") if p.is_file()}
            for d in src.iterdir() if d.is_dir()}


def _layout(af: RunningAirflow) -> Any:
    from triton_rollout.pvc.layout import PvcLayout

    return PvcLayout.at(af.local.pvc, create=False)


def _digest(af: RunningAirflow, version: int) -> dict[str, dict[str, str]]:
    layout = _layout(af)
    return {m: tree_digest(layout.version_dir(m, version)) for m in demo_models.LLM_TRITON_MODELS}


def _generate(url: str) -> dict[str, Any]:
    answer = post(f"{url}/v2/models/ensemble/generate", {"text_input": "the ", "max_tokens": 12})
    time.sleep(0.05)  # a steady client, not a load test: the 2 cores also run Airflow, S3 and the pods
    return answer


class ServedVersionWatcher(RepositoryWatcher):
    """A RepositoryWatcher for a version Triton loads: the python backend writes its byte code next to model.py
    (``__pycache__/``) once the version is loaded, after the publish; every file of the release must be there at
    full size from the first moment the directory is."""

    def _check(self) -> None:
        if not self.version_dir.exists():
            return
        try:
            sizes = {p.relative_to(self.version_dir).as_posix(): p.stat().st_size
                     for p in self.version_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        except FileNotFoundError as exc:
            # Retention prunes a version by renaming its directory away whole (release/sync.py): a scan that
            # loses the race with that rename finds the directory gone; a file missing from one still there is not.
            if self.version_dir.exists():
                self.violations.append(f"file vanished from a published version: {exc.filename}")
            return
        if sizes != self.expected:
            differ = sorted(k for k in set(sizes) | set(self.expected) if sizes.get(k) != self.expected.get(k))
            self.violations.append(f"partial version visible in {self.version_dir}: {differ[:3]} differ")
        else:
            self.seen_complete += 1


@dataclass
class Round:
    """One injection: watchers on the new version, a client on the model, the previous version's digest."""

    af: RunningAirflow
    row: FaultRow
    version: int
    sizes: dict[str, dict[str, int]]
    previous: int | None = None
    before: dict[str, dict[str, str]] = field(default_factory=dict)
    watchers: list[ServedVersionWatcher] = field(default_factory=list)
    loop: ClientLoop | None = None
    started: float = 0.0

    def __enter__(self) -> Round:
        layout = _layout(self.af)
        self.previous = layout.deployment(MODEL).promoted
        assert self.previous is not None, "the session's first deploy should have promoted a version"
        self.before = _digest(self.af, self.previous)
        self.watchers = [ServedVersionWatcher(layout.version_dir(m, self.version), sizes)
                         for m, sizes in self.sizes.items()]
        for w in self.watchers:
            w.start()
        self.loop = ClientLoop(lambda: _generate(self.af.triton_url)).__enter__()
        self.started = time.monotonic()
        self.row.runs += 1
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None
        self.loop.__exit__()
        for w in self.watchers:
            w.stop.set()
            w.join()
        self.row.seconds += round(time.monotonic() - self.started, 1)

    def wrong_answers(self, allowed: set[int]) -> list[dict[str, Any]]:
        assert self.loop is not None
        return [a for a in self.loop.answers if int(a["model_version"]) not in allowed
                or a["text_output"] != golden(int(a["model_version"]))]

    def record(self, *, states: Any, survived_if: bool, allowed: set[int], extra: list[str]) -> list[str]:
        """Count what was observed into the row; returns the violations (empty when the round survived):
        the watchers', the client's, the previous version's, the run's (``survived_if``) and ``extra``."""
        assert self.loop is not None and self.previous is not None
        partial = [v for w in self.watchers for v in w.violations]
        wrong = self.wrong_answers(allowed)
        after = _digest(self.af, self.previous)
        # Intact, or pruned whole by retention once neither promoted nor the rollback target (several runs).
        pruned = not any(after.values()) and self.previous not in _layout(self.af).deployment(MODEL).protected
        lost = after != self.before and not pruned
        self.row.injected += 1
        self.row.partial_visible += sum(1 for w in self.watchers if w.violations)  # versions seen partial
        self.row.wrong_answers += len(wrong)
        self.row.data_lost += int(lost)
        self.row.client_answers += self.loop.ok
        problems = [*partial[:3], *(f"wrong answer {a['model_version']}: {a['text_output']!r}" for a in wrong[:3])]
        if lost:
            problems.append(f"the previous version v{self.previous} changed on the PVC")
        if self.loop.failed:
            problems.append(f"{len(self.loop.failed)} client requests failed, e.g. {self.loop.failed[0]}")
        if not survived_if:
            problems.append(f"the run did not end as it should: {states}")
        problems += extra
        if not problems:
            self.row.survived += 1
        return problems


def _ti(af: RunningAirflow, run_id: str, task: str) -> dict[str, Any]:
    return dict(af.client.request("GET", f"/dags/{DEPLOY_LLM}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task}"))


def _sync_result(af: RunningAirflow, run_id: str) -> dict[str, Any]:
    entry = af.client.request("GET", f"/dags/{DEPLOY_LLM}/dagRuns/{quote(run_id, safe='')}/taskInstances/sync/"
                                     "xcomEntries/result?deserialize=true")
    value = entry["value"]
    return dict(json.loads(value) if isinstance(value, str) else value)


def _journaled_parts(af: RunningAirflow, version: int) -> int:
    """Parts of the big file the running sync has verified so far (its resume journal in staging)."""
    staging = _layout(af).staging_release(MODEL, version)
    total = 0
    for journal in staging.rglob("*.parts") if staging.exists() else ():
        try:
            total += len(journal.read_text().split())
        except FileNotFoundError:
            continue
    return total


def _sync_pods(af: RunningAirflow, phase: str) -> list[str]:
    pods = json.loads(af.kubectl("-n", "triton", "get", "pods", "-l", f"triton-rollout/model={MODEL}",
                                 "-o", "json"))["items"]
    return [p["metadata"]["name"] for p in pods
            if "sync" in p["metadata"]["name"] and p["status"].get("phase") == phase]


def _sync_mid_transfer(af: RunningAirflow, run_id: str, version: int) -> tuple[dict[str, Any], str]:
    """Until the run's sync task runs and its pod has verified a few parts but not all; returns the TI and
    the pod's name."""
    until("the sync pod to be mid-transfer", lambda: _journaled_parts(af, version) >= 2, timeout=120)
    ti = _ti(af, run_id, "sync")
    assert ti["state"] == "running" and ti["pid"], ti
    [pod] = _sync_pods(af, "Running")
    return ti, pod


def _promoted(af: RunningAirflow, version: int, run_id: str, previous: int) -> list[str]:
    state = _layout(af).deployment(MODEL)
    last = state.last
    problems = []
    if (state.promoted, state.previous) != (version, previous):
        problems.append(f"deployment state promoted v{state.promoted} previous v{state.previous}, "
                        f"expected v{version} and v{previous}")
    if last is None or (last.event, last.version, last.details.get("run_id")) != ("promote", version, run_id):
        problems.append(f"the last history entry is {last}, not the promote of v{version} by {run_id}")
    answer = post(f"{af.triton_url}/v2/models/ensemble/generate", {"text_input": "the ", "max_tokens": 12})
    if (answer["model_version"], answer["text_output"]) != (str(version), golden(version)):
        problems.append(f"Triton answers {answer['model_version']} {answer['text_output']!r} after the run")
    return problems


# -- 1. the task process, and the whole worker, killed while the sync pod runs ------------------------------


@pytest.mark.parametrize("what", ["task process", "worker"])
def test_a_killed_task_process_or_worker_is_retried_onto_its_sync_pod(chaos_airflow: RunningAirflow,
                                                                       what: str) -> None:
    af = chaos_airflow
    row = LEDGER.row(
        "Airflow", f"The {what} SIGKILLed while its sync pod runs",
        injected_how=("SIGKILL to the task's process (the pid of the sync task instance) once its pod has verified "
                      "2+ parts of a 16 MiB release over a throttled S3 link" if what == "task process" else
                      "SIGKILL to the scheduler's process group (LocalExecutor workers and task supervisors) and to "
                      "the task process while the sync pod runs, then the scheduler started again"),
        behaviour=("the task fails (supervisor: killed by SIGKILL) and its retry re-attaches to the still-running "
                   "sync pod (KPO reattach_on_restart), which finishes the publish; the run promotes the new version"
                   if what == "task process" else
                   "the task is left running under the dead scheduler's job; the restarted scheduler marks that job "
                   "failed and resets the task (orphaned-task check), which runs again: it re-attaches to the sync "
                   "pod, or, the pod done, runs a new one that finds the version published and transfers nothing; "
                   "the run promotes the new version"))
    v = af.next_version()
    sizes = _publish_big(af, v)
    with Round(af, row, v, sizes) as rnd:
        run_id = af.client.trigger(DEPLOY_LLM, {"version": v})
        ti, pod = _sync_mid_transfer(af, run_id, v)
        if what == "worker":
            af.server.kill("scheduler")
        os.kill(int(ti["pid"]), signal.SIGKILL)
        if what == "worker":
            af.server.restart("scheduler")
        states = af.client.wait_for_run(DEPLOY_LLM, run_id, timeout=RUN_TIMEOUT_S)
    retried = _ti(af, run_id, "sync")
    result = _sync_result(af, run_id)
    retry_log = af.client.task_log(DEPLOY_LLM, run_id, "sync", try_number=int(retried["try_number"]))
    reattached = f"Reusing existing pod '{pod}'" in retry_log
    if what == "task process":  # failed at once by its supervisor: the retry starts while the pod still runs
        retry_ok = retried["try_number"] == 2 and reattached and result["status"] == "published"
    else:  # reset once the dead scheduler's job is noticed: the pod may have finished by then
        retry_ok = reattached or result["status"] == "unchanged"
    problems = rnd.record(states=states, survived_if=states.get("promote") == "success", allowed={rnd.previous, v},
                          extra=[*_promoted(af, v, run_id, rnd.previous),
                                 *([] if retry_ok else [f"the retry neither re-attached nor found the version "
                                                        f"published: {result}, {retry_log[-2000:]}"])])
    how = "re-attached to the running sync pod" if reattached else "found the pod finished and ran a new one"
    row.note(f"the retry {how}: sync {result.get('status')}, {result.get('bytes_transferred')} of "
             f"{result.get('bytes_total')} bytes transferred by the pod it read, parts_reused "
             f"{result.get('parts_reused')} (the pod was never interrupted, so nothing had to resume; "
             "tests/test_sync_kill.py SIGKILLs the sync itself)")
    assert problems == [], problems


# -- 2. the triggerer killed while the release sensor is deferred -------------------------------------------


def test_the_deferred_release_sensor_resumes_in_a_restarted_triggerer(chaos_airflow: RunningAirflow) -> None:
    af = chaos_airflow
    row = LEDGER.row(
        "Airflow", "The triggerer SIGKILLed while the release sensor is deferred",
        injected_how="SIGKILL to the triggerer's process group while wait_for_release waits (deferred) for a "
                     "release not yet published; triggerer started again, then the release published",
        behaviour="the trigger is reassigned to the new triggerer once the dead one misses its heartbeats; it finds "
                  "the release, the sensor resumes and the run promotes it")
    v = af.next_version()
    sizes = {m: {} for m in demo_models.LLM_TRITON_MODELS}  # filled once published; nothing may appear before
    with Round(af, row, v, sizes) as rnd:
        run_id = af.client.trigger(DEPLOY_LLM, {"version": v})
        until("the sensor to defer", lambda: _ti(af, run_id, "wait_for_release")["state"] == "deferred", timeout=120)
        af.server.kill("triggerer")
        af.server.restart("triggerer")
        published = _publish_sizes(af, v)
        for w in rnd.watchers:
            w.expected = published[w.version_dir.parent.name]
        states = af.client.wait_for_run(DEPLOY_LLM, run_id, timeout=RUN_TIMEOUT_S)
    sensor = _ti(af, run_id, "wait_for_release")
    problems = rnd.record(states=states, survived_if=states.get("promote") == "success", allowed={rnd.previous, v},
                          extra=[*_promoted(af, v, run_id, rnd.previous),
                                 *([] if sensor["try_number"] == 1 else [f"the sensor was retried: {sensor}"])])
    assert problems == [], problems


def _publish_sizes(af: RunningAirflow, version: int) -> dict[str, dict[str, int]]:
    af.publish(version)
    src = af.work / MODEL / f"{version}-good"
    return {d.name: {p.relative_to(d).as_posix(): p.stat().st_size for p in d.rglob("*") if p.is_file()}
            for d in src.iterdir() if d.is_dir()}


# -- 3. the scheduler killed mid-run ------------------------------------------------------------------------


def test_a_run_completes_after_the_scheduler_is_killed_and_restarted(chaos_airflow: RunningAirflow) -> None:
    af = chaos_airflow
    row = LEDGER.row(
        "Airflow", "The scheduler SIGKILLed mid-run",
        injected_how="SIGKILL to the scheduler's process group (with its LocalExecutor workers) while the run waits "
                     "in its deferred release sensor; scheduler started again, then the release published",
        behaviour="the trigger keeps running in the triggerer; the new scheduler resumes the sensor when the "
                  "release appears and schedules the remaining steps; the run promotes the new version")
    v = af.next_version()
    sizes = {m: {} for m in demo_models.LLM_TRITON_MODELS}  # filled once published; nothing may appear before
    with Round(af, row, v, sizes) as rnd:
        run_id = af.client.trigger(DEPLOY_LLM, {"version": v})
        until("the sensor to defer", lambda: _ti(af, run_id, "wait_for_release")["state"] == "deferred", timeout=120)
        af.server.kill("scheduler")
        af.server.restart("scheduler")
        published = _publish_sizes(af, v)
        for w in rnd.watchers:
            w.expected = published[w.version_dir.parent.name]
        states = af.client.wait_for_run(DEPLOY_LLM, run_id, timeout=RUN_TIMEOUT_S)
    problems = rnd.record(states=states, survived_if=states.get("promote") == "success", allowed={rnd.previous, v},
                          extra=_promoted(af, v, run_id, rnd.previous))
    assert problems == [], problems


# -- 4. three deploys of one model at once ------------------------------------------------------------------


def test_three_deploys_of_one_model_at_once_are_serialized_and_the_history_explains_them(chaos_airflow: RunningAirflow
                                                                                        ) -> None:
    """A manual run syncing a slow release; while it syncs, a second manual run (what a scheduled run is to
    max_active_runs as well) and a backfill of a past month. The second run waits for the first
    (max_active_runs=1). A backfill's runs are not counted against max_active_runs (Airflow 3 counts them
    apart: airflow/jobs/scheduler_job_runner.py, active_non_backfill_runs), so the backfill's load waits on the
    model's deploy lease (pvc/lease.py) instead. Whatever the order: the runs hold the model one at a time
    (the lease log's take / release per run never overlap), each ends promoted, or refused before loading
    anything (a manual run older than what was promoted while it waited: load exit code 21, no rollback), the
    history on the PVC has one promote per promoted run, with its run id, the last is what serves, and no client
    ever gets an untested or mislabelled answer."""
    af, client = chaos_airflow, chaos_airflow.client
    row = LEDGER.row(
        "Concurrency", "Three deploys of one model at once (two manual runs, a backfill)",
        injected_how="a REST run syncing a 16 MiB release over a throttled link; during its sync a second REST run "
                     "of a newer version and a backfill of a past month (its release back-dated)",
        behaviour="serialized: the second manual run starts after the first ends (max_active_runs=1); the backfill "
                  "run (which Airflow 3 does not hold back) waits at its load for the model's deploy lease; the "
                  "runs hold the model one at a time, each is promoted or refused before loading (a downgrade by "
                  "then), and the PVC history and lease log name every run")
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    past = (month - timedelta(days=100)).replace(day=1)
    va = af.next_version()
    sizes = _publish_big(af, va)
    vb, vc = va + 1, va + 2
    af.publish(vb)
    af.publish(vc, created_at=past - timedelta(days=1))  # the one current at the backfilled date
    with Round(af, row, va, sizes) as rnd:
        manual = client.trigger(DEPLOY_LLM, {"version": va})
        _sync_mid_transfer(af, manual, va)
        second = client.trigger(DEPLOY_LLM, {"version": vb})
        backfill = client.backfill(DEPLOY_LLM, past, past)
        client.wait_for_backfill(backfill, timeout=RUN_TIMEOUT_S)
        [filled] = [r["dag_run_id"] for r in client.runs(DEPLOY_LLM, run_type="backfill")
                    if r["logical_date"].startswith(past.date().isoformat())]
        runs = {manual: va, second: vb, filled: vc}
        states = {rid: client.wait_for_run(DEPLOY_LLM, rid, timeout=RUN_TIMEOUT_S) for rid in runs}
    windows = {rid: _run_window(af, rid) for rid in runs}
    layout = _layout(af)
    state = layout.deployment(MODEL)
    history = [h for h in state.history if h.details.get("run_id") in runs]
    holds = _lease_holds(layout.deploy_lease(MODEL).log, runs)
    outcomes = {rid: _outcome(s) for rid, s in states.items()}
    extra = []
    if not windows[second][0] >= windows[manual][1]:
        extra.append(f"the second manual run started before the first ended: {windows}")
    ordered = sorted((start, end, rid) for rid, (start, end) in holds.items())
    if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(ordered)):
        extra.append(f"two runs held the model at once: {ordered}")
    if set(holds) != {rid for rid, o in outcomes.items() if o in ("promoted", "refused at load")}:
        extra.append(f"the lease log {holds} does not account for the runs {outcomes}")
    if any(o not in ("promoted", "refused at load") for o in outcomes.values()) or outcomes[manual] != "promoted":
        extra.append(f"a run was neither promoted nor refused before loading: {outcomes}")
    expected = sorted(("promote", rid) for rid, o in outcomes.items() if o == "promoted")
    if sorted((h.event, h.details["run_id"]) for h in history) != expected:
        extra.append(f"the history {[(h.event, h.version, h.details['run_id']) for h in history]} does not "
                     f"account for the runs {outcomes}")
    promotes = [h for h in state.history if h.event == "promote"]
    answer = post(f"{af.triton_url}/v2/models/ensemble/generate", {"text_input": "the ", "max_tokens": 12})
    if not (promotes and state.promoted == promotes[-1].version
            and (answer["model_version"], answer["text_output"]) == (str(state.promoted), golden(state.promoted))):
        extra.append(f"promoted v{state.promoted}, Triton answers {answer['model_version']}")
    problems = rnd.record(states=states, survived_if=not extra, allowed={rnd.previous, va, vb, vc}, extra=extra)
    waited = [e.run_id for e in layout.deploy_lease(MODEL).log if e.action == "waiting" and e.run_id in runs]
    row.note(f"order held: {' -> '.join(f'v{runs[rid]}' for _, _, rid in ordered)}; waited for the lease: "
             f"{[f'v{runs[r]}' for r in waited]}; outcomes by version: {({runs[r]: o for r, o in outcomes.items()})}")
    assert problems == [], problems


# The ends a deploy run may come to, by its task states.
def _outcome(states: dict[str, str]) -> str:
    """"promoted"; "rolled back" (load, smoke or promote failed, the rollback succeeded); "refused" (resolve
    refused it before anything changed, e.g. a manual run older than what serves); "refused at load" (the
    load refused it under the deploy lease, nothing loaded, so no rollback); "" for anything else."""
    if states["promote"] == "success" and states["rollback"] == "skipped":
        return "promoted"
    if states["rollback"] == "success" and "failed" in (states["load"], states["smoke"], states["promote"]):
        return "rolled back"
    if states["resolve"] == "failed" and states["sync"] == "upstream_failed" and states["rollback"] == "skipped":
        return "refused"
    if states["load"] == "failed" and states["smoke"] == "upstream_failed" and states["rollback"] == "skipped":
        return "refused at load"
    return ""


def _lease_holds(log: list[Any], runs: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Each run's hold on the model (its first take, its last release or refusal), from the lease log."""
    holds: dict[str, tuple[float, float]] = {}
    for event in log:
        if event.run_id not in runs:
            continue
        start, end = holds.get(event.run_id, (event.at, event.at))
        if event.action == "taken":
            start = min(start, event.at)
        if event.action in ("released", "refused"):
            end = max(end, event.at)
        if event.action in ("taken", "released", "refused"):
            holds[event.run_id] = (start, end)
    return holds


def _run_window(af: RunningAirflow, run_id: str) -> tuple[str, str]:
    """When the run's first task started and its last ended (ISO times, comparable as strings)."""
    tis = af.client.request("GET", f"/dags/{DEPLOY_LLM}/dagRuns/{quote(run_id, safe='')}/taskInstances")
    starts = [t["start_date"] for t in tis["task_instances"] if t.get("start_date")]
    ends = [t["end_date"] for t in tis["task_instances"] if t.get("end_date")]
    return min(starts), max(ends)


def test_no_secret_survives_the_faults_in_any_log_page_xcom_or_manifest(chaos_airflow: RunningAirflow) -> None:
    """Last in this file, after its kills, retries, rollbacks and refusals (error paths are where credentials
    leak into messages): the S3 secret key, the JWT secret and the database password appear in no task log,
    component log, pod log, XCom, API or UI page or rendered manifest (tests.helpers.scan_for_secrets)."""
    row = LEDGER.row("Secrets", "credentials in logs, pages, XComs and manifests after the faults",
                     injected_how="3 recognizable secrets (S3 key, JWT secret, DB password) in use through every "
                                  "kill, retry, rollback and refusal above",
                     behaviour="none appears in a task, component or pod log, API/UI page, XCom or manifest")
    scan = scan_for_secrets(chaos_airflow, [])
    with LEDGER.lock:
        row.runs += 1
        row.injected += scan.secrets
        row.survived += scan.secrets - len({what for what, _, _ in scan.leaks})
        row.note(scan.describe())
    assert scan.task_logs and scan.pod_logs, "the faults above should have written task and pod logs"
    assert scan.leaks == [], scan.leaks[:5]
