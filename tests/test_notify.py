"""Failure and rollback notifications (triton_rollout.airflow.notify): the message composed from a task's
context, sent by the http provider's HttpNotifier through a real Airflow HTTP connection to a real local
receiver (devstack.receiver), and called by Airflow's own task runner (dag.test()) after real tasks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from triton_rollout.config import ModelDeployment
from triton_rollout.config.model import NotifySettings

from devstack.receiver import Received, Receiver

MODEL = "demo-llm"
DAG_ID = "deploy_demo-llm"
RUN_ID = "manual__2026-01-02T03:04:05+00:00"
BASE = "http://airflow.example:8080/"
CONN_ID = "rollout_notify_test"


@dataclass
class StubTI:
    """What the notifier reads from a RuntimeTaskInstance: ids, try number, XCom and sibling task states."""

    task_id: str
    xcoms: dict[tuple[str, str], Any] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    dag_id: str = DAG_ID
    run_id: str = RUN_ID
    try_number: int = 1

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))

    def get_task_states(self, dag_id: str, task_ids: list[str], run_ids: list[str]) -> dict[str, dict[str, str]]:
        return {self.run_id: {t: s for t, s in self.states.items() if t in task_ids}}


def step_failure_message(step: str = "smoke", code: int = 12) -> str:
    """The message a step operator fails with, made by the operator's own code (so the format stays in sync)."""
    from triton_rollout.airflow.operators import SmokeOperator
    from triton_rollout.steps import StepFailure

    op = SmokeOperator(task_id=step, model=ModelDeployment(name=MODEL, release_prefix="s3://models/releases"))
    op._failure = StepFailure(error="demo-llm v7 answered 'xyz', expected 'the quick'",
                              hint="fix the release and publish a new version")
    op._pod_name = "demo-llm-smoke-abc"
    return op._failure_message(code)


def failed_smoke_context(version: int | None = 7) -> dict[str, Any]:
    from triton_rollout.airflow.operators import StepFailed

    xcoms = {("resolve", "return_value"): {"version": version, "kind": "engine"}} if version else {}
    return {"ti": StubTI("smoke", xcoms), "run_id": RUN_ID, "params": {"version": None},
            "exception": StepFailed(step_failure_message())}


# -- composing -------------------------------------------------------------------------------------------


def test_a_failed_step_names_model_version_step_error_and_what_to_do() -> None:
    from triton_rollout.airflow.notify import notice_from_context

    notice = notice_from_context("failure", MODEL, failed_smoke_context(), base_url=BASE)
    assert (notice.event, notice.model, notice.version, notice.step) == ("failure", MODEL, 7, "smoke")
    assert notice.error is not None and notice.error.startswith("smoke of demo-llm failed (exit code 12): demo-llm v7")
    assert "what to do" not in notice.error
    assert notice.what_to_do.startswith("fix the release and publish a new version; pod demo-llm-smoke-abc is kept")
    assert "kubectl -n triton logs demo-llm-smoke-abc" in notice.what_to_do
    # Run ids hold '+' and ':': quoted, so the link opens the run.
    assert notice.run_url == "http://airflow.example:8080/dags/deploy_demo-llm/runs/manual__2026-01-02T03%3A04%3A05%2B00%3A00"
    assert notice.log_url == notice.run_url + "/tasks/smoke?try_number=1"
    body = notice.to_json()
    assert body["source"] == "triton-rollout" and body["dag_id"] == DAG_ID and body["run_id"] == RUN_ID
    assert datetime.fromisoformat(body["sent_at"]) <= datetime.now(UTC)
    assert body["text"].startswith("[triton-rollout] demo-llm v7: smoke failed: smoke of demo-llm failed (exit code")
    assert "\nWhat to do: fix the release" in body["text"] and body["text"].endswith(notice.run_url)


def test_a_permanent_failure_keeps_its_no_retry_line_in_the_error() -> None:
    from triton_rollout.airflow.notify import split_what_to_do

    message = step_failure_message(code=3) + "\n  a retry cannot change that, so the task is not retried"
    error, hint = split_what_to_do(message)
    assert error.startswith("smoke of demo-llm failed (exit code 3 (ManifestError)):")
    assert error.endswith("a retry cannot change that, so the task is not retried")
    assert hint is not None and hint.startswith("fix the release and publish a new version;")


def test_an_error_without_a_hint_gets_the_steps_default_and_no_version_before_resolve() -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from triton_rollout.airflow.notify import STEP_HINTS, notice_from_context

    context = {"ti": StubTI("resolve"), "params": {"version": 9},
               "exception": AirflowFailException("no complete release of demo-llm matches v9 under s3://m/r/demo-llm/")}
    notice = notice_from_context("failure", MODEL, context, base_url=BASE)
    assert notice.version == 9  # the requested version: resolve pushed nothing
    assert notice.what_to_do == STEP_HINTS["resolve"]
    assert notice.error == "no complete release of demo-llm matches v9 under s3://m/r/demo-llm/"

    # A project error (errors.RolloutError) prints its own hint, e.g. the sensor's refusal of a conf key.
    from triton_rollout.errors import ConfigError

    bare = {"ti": StubTI("wait_for_release"), "params": {}, "exception": ConfigError("unknown conf key(s) 'versoin'")}
    notice = notice_from_context("failure", MODEL, bare, base_url=BASE)
    assert notice.version is None and notice.error == "unknown conf key(s) 'versoin'"
    assert notice.what_to_do == "fix the value named above and run again"
    assert notice_from_context("failure", MODEL, {**bare, "exception": TimeoutError()}, base_url=BASE).error == \
        "TimeoutError"


def test_a_rollback_says_which_version_serves_again() -> None:
    from triton_rollout.airflow.notify import notice_from_context

    ti = StubTI("rollback", {("resolve", "return_value"): {"version": 7}, ("rollback", "result"): {"promoted": 6}},
                states={"load": "success", "smoke": "failed", "promote": "upstream_failed"})
    notice = notice_from_context("rollback", MODEL, {"ti": ti, "run_id": RUN_ID}, base_url=BASE)
    assert (notice.event, notice.version, notice.serving_version, notice.failed_step) == ("rollback", 7, 6, "smoke")
    assert notice.text.startswith("[triton-rollout] demo-llm v7 was rolled back after smoke failed: v6 serves again.")
    assert notice.log_url.endswith("/tasks/smoke")  # the log worth reading
    assert "v7 stays on the PVC but is not served" in notice.what_to_do

    # A first deploy that failed: nothing was promoted before, the candidate is only unloaded.
    ti = StubTI("rollback", {("resolve", "return_value"): {"version": 1}, ("rollback", "result"): {"promoted": None}})
    notice = notice_from_context("rollback", MODEL, {"ti": ti}, base_url=BASE)
    assert notice.serving_version is None and notice.failed_step is None
    assert "no version was promoted before" in notice.text


# -- config -> callbacks ---------------------------------------------------------------------------------


def _model(**notify: Any) -> ModelDeployment:
    return ModelDeployment(name=MODEL, release_prefix="s3://models/releases", notify=NotifySettings(**notify))


def test_callbacks_follow_the_notify_config() -> None:
    from triton_rollout.airflow.factory import deploy_dag
    from triton_rollout.airflow.notify import RolloutNotifier, failure_callbacks, rollback_callbacks

    off = _model()
    assert failure_callbacks(off) == {} and rollback_callbacks(off) == {}
    dag = deploy_dag(off)
    assert all(not t.on_failure_callback and not t.on_success_callback for t in dag.tasks)

    dag = deploy_dag(_model(http_conn_id=CONN_ID, endpoint="/hooks/x"))
    for task in dag.tasks:  # every task's failure; a skip calls on_skipped_callback, never these
        assert [type(c) for c in task.on_failure_callback] == [RolloutNotifier], task.task_id
        assert task.on_failure_callback[0].event == "failure"
    assert [c.event for c in dag.get_task("rollback").on_success_callback] == ["rollback"]
    assert all(not t.on_success_callback for t in dag.tasks if t.task_id != "rollback")

    only_rollback = deploy_dag(_model(http_conn_id=CONN_ID, when=["rollback"]))
    assert all(not t.on_failure_callback for t in only_rollback.tasks)
    assert only_rollback.get_task("rollback").on_success_callback


# -- sending: the real HttpNotifier, a real connection, a real receiver ---------------------------------


@pytest.fixture()
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    with Receiver() as r:
        # Airflow looks a connection up in the environment first: AIRFLOW_CONN_<ID> holds its URI.
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", r.url)
        yield r


def test_the_http_notifier_posts_the_json_through_an_airflow_connection(receiver: Receiver) -> None:
    from triton_rollout.airflow.notify import RolloutNotifier

    notifier = RolloutNotifier(event="failure", model=MODEL, http_conn_id=CONN_ID, endpoint="/hooks/rollout")
    notifier(failed_smoke_context())
    [message] = receiver.wait_for(1, timeout=10)
    assert message.path == "/hooks/rollout"
    assert message.headers["content-type"] == "application/json"
    body = message.body
    assert (body["event"], body["model"], body["version"], body["step"]) == ("failure", MODEL, 7, "smoke")
    assert "kubectl -n triton logs" in body["what_to_do"]
    assert body["error"].startswith("smoke of demo-llm failed (exit code 12)")


def test_a_broken_or_missing_webhook_is_a_warning_never_an_error(
        receiver: Receiver, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from triton_rollout.airflow.notify import RolloutNotifier

    from devstack.procs import free_ports
    from tests.helpers import output

    notifier = RolloutNotifier(event="failure", model=MODEL, http_conn_id=CONN_ID, endpoint="/hooks/rollout")
    receiver.status = 500
    notifier(failed_smoke_context())  # does not raise
    assert len(receiver.wait_for(1, timeout=10)) == 1
    out = output(capfd, caplog)  # Airflow's structlog writes to stdout
    assert "[warning  ] could not send the failure notification of demo-llm" in out
    assert "AirflowException: 500:Internal Server Error; the task's outcome is unchanged" in out

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", f"http://127.0.0.1:{free_ports(1)[0]}")  # nobody there
    RolloutNotifier(event="failure", model=MODEL, http_conn_id=CONN_ID)(failed_smoke_context())
    assert "ConnectionError" in output(capfd, caplog)
    RolloutNotifier(event="failure", model=MODEL, http_conn_id="no_such_conn")(failed_smoke_context())
    assert "could not send the failure notification of demo-llm to connection 'no_such_conn'" in output(capfd, caplog)


# -- called by Airflow's task runner after real tasks (dag.test()) ---------------------------------------


# dag.test() runs DAGs from the dags folder: this one has the deploy DAG's callbacks on look-alike tasks.
CALLBACKS_DAG = '''
from typing import Any

import pendulum
from airflow.sdk import DAG, TriggerRule, task
from airflow.sdk.exceptions import AirflowSkipException
from triton_rollout.airflow.notify import failure_callbacks, rollback_callbacks
from triton_rollout.airflow.operators import StepFailed

from tests.test_notify import _model, step_failure_message

model = _model(http_conn_id="{conn_id}", endpoint="/hooks/rollout")
with DAG("{dag_id}", schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False,
         default_args=failure_callbacks(model)):

    @task(task_id="resolve")
    def resolve() -> dict[str, Any]:
        return {{"version": 7}}

    @task(task_id="smoke")
    def smoke() -> None:
        raise StepFailed(step_failure_message())

    @task(task_id="build_engine")
    def build() -> None:
        raise AirflowSkipException("an engine release: nothing to build")

    @task(task_id="rollback", trigger_rule=TriggerRule.ONE_FAILED, **rollback_callbacks(model))
    def rollback(**context: Any) -> None:
        context["ti"].xcom_push(key="result", value={{"promoted": 6}})

    resolved = resolve()
    resolved >> build()
    resolved >> smoke() >> rollback()
'''


def test_airflow_calls_them_after_a_failure_and_a_rollback_not_after_a_skip(airflow_dags: Path,
                                                                            receiver: Receiver) -> None:
    from airflow.models import DagBag

    dag_id = f"notify_{uuid.uuid4().hex[:10]}"
    path = airflow_dags / f"{dag_id}.py"
    path.write_text(CALLBACKS_DAG.format(dag_id=dag_id, conn_id=CONN_ID))
    bag = DagBag(dag_folder=str(path))
    assert not bag.import_errors, bag.import_errors
    dr = bag.get_dag(dag_id).test()
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    assert states == {"resolve": "success", "smoke": "failed", "build_engine": "skipped", "rollback": "success"}
    messages = receiver.wait_for(2, timeout=20)
    failure, rolled_back = sorted((m.body for m in messages), key=lambda b: b["event"])
    assert (failure["event"], failure["step"], failure["version"]) == ("failure", "smoke", 7)
    assert failure["dag_id"] == dag_id and failure["run_id"] == dr.run_id
    assert failure["what_to_do"].startswith("fix the release and publish a new version")
    assert (rolled_back["event"], rolled_back["version"], rolled_back["serving_version"]) == ("rollback", 7, 6)
    assert rolled_back["failed_step"] == "smoke"
    assert not [m for m in receiver.messages if _about(m, "build_engine")]  # a skip is not a failure


def _about(message: Received, step: str) -> bool:
    return isinstance(message.body, dict) and message.body.get("step") == step
