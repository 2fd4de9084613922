"""The Triton models view's records (triton_rollout.airflow.ui.fleet) and page (ui.view), against the real
SeaweedFS S3, a real tritonserver and the session's Airflow database; its auth with the real auth manager.

The browser test of the view inside the running Airflow's UI is tests/test_airflow_ui_view.py."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.encoders import jsonable_encoder
from triton_rollout.airflow.ui import fleet as fleet_module
from triton_rollout.airflow.ui import view
from triton_rollout.airflow.ui.fleet import (
    DeployHistory,
    DeployRun,
    Fleet,
    ModelView,
    Note,
    Problem,
    ReleaseList,
    ReleaseRow,
    TritonSnapshot,
    TritonVersion,
    gather_fleet,
    read_history,
    serving_of,
    ui_path,
)
from triton_rollout.config import ModelDeployment
from triton_rollout.release.progress import human_bytes
from triton_rollout.release.s3 import S3Access

from devstack import demo_models
from devstack.procs import free_ports
from devstack.triton import TritonServer
from tests.helpers import post

TENSOR = demo_models.TENSOR_MODEL


class Elements(HTMLParser):
    """The page's elements that carry a data-testid: their attributes and their text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: dict[str, list[tuple[dict[str, str], str]]] = {}
        self._open: list[tuple[str, dict[str, str], list[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag not in ("meta", "br", "img", "link"):
            self._open.append((tag, values, []))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            name, attrs, text = self._open.pop()
            joined = " ".join("".join(text).split())
            if self._open:
                self._open[-1][2].append(joined + " ")
            if "data-testid" in attrs:
                self.found.setdefault(attrs["data-testid"], []).append((attrs, joined))
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][2].append(data)

    def texts(self, testid: str) -> list[str]:
        return [text for _, text in self.found.get(testid, [])]

    def attrs(self, testid: str) -> list[dict[str, str]]:
        return [attrs for attrs, _ in self.found.get(testid, [])]


def render(fleet: Fleet) -> str:
    return view._renderer()(fleet=fleet, viewer="tester", nonce="n0nce")


def tensor_model(bucket: str, triton_url: str) -> ModelDeployment:
    # aws_conn_id None: the S3 hook takes the standard AWS environment (the s3_server fixture's), no DB lookup.
    return ModelDeployment(name=TENSOR, release_prefix=f"s3://{bucket}/releases", triton_url=triton_url,
                           aws_conn_id=None)


def no_history(dag_id: str) -> DeployHistory:
    return DeployHistory(dag_id, ui_path(dag_id))


def source_bytes(work: Path, version: int) -> tuple[int, int]:
    """(bytes, files) of the release folder devstack.demo_models.publish_version wrote and published."""
    files = [p for p in (work / TENSOR / f"{version}-good").rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung S3 or Triton)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_releases_what_triton_serves_and_its_endpoints(s3_server: Any, s3_client: Any, bucket: str, pvc: Path,
                                                       triton: TritonServer, tmp_path: Path) -> None:
    from triton_rollout.pvc.layout import PvcLayout
    from triton_rollout.release.sync import sync_release
    from triton_rollout.triton.control import TritonControl
    from triton_rollout.triton.rollout import deploy

    work = tmp_path / "src"
    uris = {v: demo_models.publish_version(bucket, work, TENSOR, v) for v in (1, 2)}
    # v3: files but no manifest.json yet (an upload under way); "10" is not a version (leading zero: "010").
    s3_client.put_object(Bucket=bucket, Key=f"releases/{TENSOR}/3/demo_tensor/config.pbtxt", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key=f"releases/{TENSOR}/010/x", Body=b"x")
    sync_release(uris[1], pvc, prune=False)
    with TritonControl(triton.url, timeout=10) as control:
        deploy(control, PvcLayout.at(pvc), TENSOR, 1, deadline_s=60)

    model = tensor_model(bucket, triton.http_url)
    fleet = gather_fleet([model], history=no_history)
    (m,) = fleet.models
    assert (m.name, m.dag_id) == (TENSOR, f"deploy_{TENSOR}")

    releases = m.releases
    assert releases.problem is None and releases.location == f"s3://{bucket}/releases/{TENSOR}/"
    assert [r.version for r in releases.rows] == [3, 2, 1]
    assert not releases.rows[0].complete and "no manifest.json" in releases.rows[0].note
    for row in releases.rows[1:]:
        assert row.release is not None
        assert (row.release.bytes, row.release.files) == source_bytes(work, row.version)
        assert row.release.kind == "engine" and row.release.triton_models == ["demo_tensor"]
        assert abs(datetime.fromisoformat(row.release.created_at).timestamp() - time.time()) < 300

    # What Triton serves, as a client sees it: the unversioned endpoint answers with model_version 1.
    answer = post(f"{triton.http_url}/v2/models/demo_tensor/infer",
                  {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    serving = m.serving
    assert serving.problem is None and serving.live
    assert serving.version == int(answer["model_version"]) == 1 and serving.ready
    # No deploy recorded: the Triton models come from the newest complete release's manifest.
    assert serving.triton_models == ("demo_tensor",) and serving.models_from == "release v2"
    assert [(e.url, e.serving) for e in serving.endpoints] == [
        (f"{triton.http_url}/v2/models/demo_tensor/versions/1/infer", True)]
    assert post(serving.endpoints[0].url, {"inputs": [
        {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})["model_version"] == "1"
    assert Note("info", f"v2 is the newest complete release and is not served yet: the next scheduled run "
                        f"deploys it, or trigger deploy_{TENSOR}") in m.notes

    page = Elements(render(fleet))
    assert page.texts("serving-version") == ["v1"] and page.attrs("ready")[0]["data-ready"] == "true"
    assert page.texts("newest-release") == ["v2"] and page.texts("promoted") == ["\N{EN DASH}"]
    assert [a["data-version"] for a in page.attrs("release")] == ["3", "2", "1"]
    size = source_bytes(work, 2)[0]
    assert page.attrs("size")[0]["data-bytes"] == str(size) and page.texts("size")[0] == human_bytes(size)
    assert page.texts("endpoint") == [f"POST {triton.http_url}/v2/models/demo_tensor/versions/1/infer"]
    assert page.texts("problem") == []


def test_triton_down_and_a_missing_bucket_are_shown_with_what_to_do(s3_server: Any, bucket: str) -> None:
    (closed,) = free_ports(1)
    model = ModelDeployment(name=TENSOR, release_prefix="s3://no-such-bucket-for-the-view/releases",
                            triton_url=f"http://127.0.0.1:{closed}", aws_conn_id=None)
    t0 = time.monotonic()
    fleet = gather_fleet([model], history=no_history)
    assert time.monotonic() - t0 < 15
    (m,) = fleet.models
    assert m.releases.problem is not None and m.releases.problem.source == "S3"
    assert "no-such-bucket-for-the-view" in m.releases.problem.message and "bucket" in m.releases.problem.hint
    assert m.serving.problem == Problem(
        "Triton", f"Triton at http://127.0.0.1:{closed} does not answer /v2/health/live",
        "check that Triton runs (kubectl -n triton get pods) and that the model's triton_url / triton_conn_id "
        "points at its HTTP port")
    assert m.serving.version is None and m.serving.endpoints == ()

    page = Elements(render(fleet))  # the page still renders, each failed part in its place
    problems = page.found["problem"]
    assert sorted(a["data-source"] for a, _ in problems) == ["S3", "Triton"]
    assert all("What to do:" in text for _, text in problems), problems
    assert page.texts("serving-version") == ["unknown"] and page.attrs("ready")[0]["data-ready"] == "unknown"
    assert "deploys" not in page.found  # no runs: the history part says so instead of a table


def test_a_hung_s3_and_triton_cost_the_deadline_not_the_page(silent_port: int) -> None:
    import boto3
    from botocore.config import Config

    hung = f"http://127.0.0.1:{silent_port}"
    access = S3Access(endpoint_url=hung, region="us-east-1", credentials=("key", "secret", None))
    # One attempt with a short read timeout, so the abandoned thread ends soon after the test.
    client = boto3.client("s3", endpoint_url=hung, region_name="us-east-1", aws_access_key_id="key",
                          aws_secret_access_key="secret",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=4))
    model = ModelDeployment(name=TENSOR, release_prefix="s3://models/releases", triton_url=hung, aws_conn_id=None)
    t0 = time.monotonic()
    fleet = gather_fleet([model], history=no_history, s3_for=lambda m: (client, access), deadline_s=2.0)
    took = time.monotonic() - t0
    assert 2.0 <= took < 4.0, took
    (m,) = fleet.models
    assert m.releases.problem is not None and m.serving.problem is not None
    assert m.releases.problem.message == "no answer within 2 s listing s3://models/releases/demo-tensor/"
    assert m.serving.problem.message == f"no answer within 2 s from Triton at {hung}"


def test_a_connection_that_cannot_be_read_is_a_triton_problem_of_that_model(s3_server: Any, bucket: str) -> None:
    def broken(model: ModelDeployment) -> str:
        raise RuntimeError("The conn_id `triton_prod` isn't defined")

    model = tensor_model(bucket, "http://127.0.0.1:1")
    (m,) = gather_fleet([model], history=no_history, triton_url_for=broken).models
    assert m.serving.problem is not None and "triton_prod" in m.serving.problem.message
    assert m.releases.problem is None  # S3 answered: an empty model folder


# -- the deploy history, from runs of a DAG with the deploy DAG's task ids and XComs ----------------------

FAKE_DAG_ID = "deploy_ui-fleet-fake"
FAKE_DEPLOY = f'''
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowFailException

# The deploy DAG's task ids and XComs (plugins/triton_rollout/airflow/operators.py, tasks.py), without pods.
with DAG("{FAKE_DAG_ID}", schedule=None, params={{"version": 1, "previous": None, "fail": False}}):
    @task(task_id="resolve")
    def resolve(**ctx):
        return {{"model": "m", "version": ctx["params"]["version"], "kind": "engine",
                 "triton_models": ["ensemble", "preprocessing"]}}

    @task(task_id="load")
    def load(**ctx):
        ctx["ti"].xcom_push(key="result", value={{"entries": ["ensemble"], "version": ctx["params"]["version"]}})

    @task(task_id="smoke")
    def smoke(**ctx):
        if ctx["params"]["fail"]:
            raise AirflowFailException("smoke test failed")

    @task(task_id="promote")
    def promote(**ctx):
        p = ctx["params"]
        ctx["ti"].xcom_push(key="result", value={{"model": "m", "promoted": p["version"], "previous": p["previous"]}})

    @task(task_id="rollback", trigger_rule="one_failed")
    def rollback(**ctx):
        ctx["ti"].xcom_push(key="result", value={{"model": "m", "promoted": 2, "previous": 1}})

    steps = [load(), smoke(), promote()]
    resolve() >> steps[0] >> steps[1] >> steps[2]
    steps >> rollback()
'''


def test_deploy_history_from_the_runs_airflow_recorded(airflow_dags: Path) -> None:
    from airflow.models import DagBag

    path = airflow_dags / "ui_fleet_fake_deploy.py"
    path.write_text(FAKE_DEPLOY)
    bag = DagBag(dag_folder=str(path))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[FAKE_DAG_ID]
    first = dag.test(run_conf={"version": 1})
    second = dag.test(run_conf={"version": 2, "previous": 1})
    failed = dag.test(run_conf={"version": 3, "fail": True})

    history = read_history(FAKE_DAG_ID)
    assert history.problem is None and history.path == f"dags/{FAKE_DAG_ID}"
    # The promoted version as the rollback recorded it last; the Triton models of the last promoted run.
    assert (history.promoted, history.previous, history.promoted_by) == (2, 1, failed.run_id)
    assert history.triton_models == ("ensemble", "preprocessing") and history.entries == ("ensemble",)
    assert [r.run_id for r in history.runs] == [failed.run_id, second.run_id, first.run_id]
    assert [(r.version, r.outcome) for r in history.runs] == [
        (3, "rolled back, v2 serves (failed: smoke)"), (2, "promoted v2 (previous v1)"), (1, "promoted v1")]
    newest = history.runs[0]
    assert newest.failed_tasks == ("smoke",) and newest.run_type == "manual"
    assert newest.start is not None and newest.seconds is not None and newest.seconds >= 0
    # Run ids hold ':' and '+': the UI path encodes them.
    assert newest.path == f"dags/{FAKE_DAG_ID}/runs/" + failed.run_id.replace(":", "%3A").replace("+", "%2B")
    assert read_history(FAKE_DAG_ID, limit=1).runs == history.runs[:1]

    # A promoted version that differs from what Triton serves is called out.
    snapshot = TritonSnapshot("http://t:8000", live=True, index=(
        TritonVersion("ensemble", "1", "READY", ready=True), TritonVersion("preprocessing", "1", "READY", ready=True),
        TritonVersion("preprocessing", "2", "READY", ready=True)))
    serving = serving_of(snapshot, history.triton_models, history.entries, "run x")
    assert (serving.version, serving.ready) == (1, True)
    assert [e.url for e in serving.endpoints] == ["http://t:8000/v2/models/ensemble/versions/1/infer"]
    notes = fleet_module._notes(tensor_model("b-u-c", "http://t:8000"), ReleaseList("s3://b-u-c/x/"), serving, history)
    assert [n.level for n in notes] == ["warning"]


# -- the page: auth and escaping ----------------------------------------------------------------------------


@pytest.fixture()
def auth_manager(airflow_dags: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The real auth manager of the session's Airflow config (SimpleAuthManager), as the api-server builds it."""
    import secrets

    from airflow.api_fastapi.app import init_auth_manager, purge_cached_app

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(64))
    try:
        yield init_auth_manager()
    finally:
        purge_cached_app()


def test_the_page_needs_a_signed_in_user_and_shows_the_models_they_may_read(
        auth_manager: Any, s3_server: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    (closed,) = free_ports(1)
    monkeypatch.setattr(fleet_module, "configured_models", lambda: [tensor_model(bucket, f"http://127.0.0.1:{closed}")])
    app = view.create_app()
    api_server = FastAPI()  # as the api-server mounts plugin apps (api_fastapi/app.py init_plugins)
    api_server.mount(view.URL_PREFIX, app)
    client = TestClient(api_server)
    token = auth_manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))

    anonymous = client.get("/triton-models/?x=1", follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/auth/login?next=%2Ftriton-models%2F%3Fx%3D1"
    assert client.get("/triton-models/fleet.json").status_code == 401
    forged = TestClient(api_server, cookies={"_token": "not.a.jwt"}).get("/triton-models/", follow_redirects=False)
    assert forged.status_code == 303 and forged.headers["location"].startswith("/auth/login")
    assert client.get("/triton-models/icon.svg").headers["content-type"] == "image/svg+xml"

    page = TestClient(api_server, cookies={"_token": token}).get("/triton-models/")  # as the UI's iframe asks
    assert page.status_code == 200, page.text
    csp = page.headers["content-security-policy"]
    nonce = csp.split("script-src 'nonce-", 1)[1].split("'", 1)[0]
    assert f'<script nonce="{nonce}">' in page.text and "frame-ancestors 'self'" in csp
    elements = Elements(page.text)
    assert [a["data-model"] for a in elements.attrs("model")] == [TENSOR]
    assert sorted(a["data-source"] for a in elements.attrs("problem")) == ["Triton"]  # S3 answered: no release
    data = client.get("/triton-models/fleet.json", headers={"Authorization": f"Bearer {token}"}).json()
    assert [m["name"] for m in data["models"]] == [TENSOR] and data["hidden"] == 0
    assert data["models"][0]["serving"]["problem"]["source"] == "Triton"

    # A user who may not read the deploy DAG sees the model counted, not shown.
    app.dependency_overrides[view.current_viewer] = lambda: view.Viewer("outsider", lambda dag_id: False)
    hidden = client.get("/triton-models/")
    assert "model" not in Elements(hidden.text).found
    assert "you may not read the deploy DAG of any of the 1 configured models" in hidden.text


def test_every_value_on_the_page_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    run_id = 'manual__2026-01-01T00:00:00+00:00 "><img src=x onerror=alert(1)>'
    when = datetime(2026, 1, 1, tzinfo=UTC)
    snapshot = TritonSnapshot("http://t:8000", live=True, index=(
        TritonVersion(evil, "1", "READY", reason=evil, ready=True),))
    model = ModelView(
        name=evil, dag_id=evil,
        releases=ReleaseList(f"s3://b/{evil}/", (ReleaseRow(2, note=evil),),
                             problem=Problem("S3", evil, evil)),
        serving=serving_of(snapshot, [evil], (), evil),
        history=DeployHistory(evil, ui_path(evil), runs=(DeployRun(
            run_id, evil, evil, when, when, 1, evil, (evil,), ui_path(evil, run_id)),)),
        notes=(Note("warning", evil),))
    html = render(Fleet((model,), problem=Problem(evil, evil, evil)))
    assert html.count("<script") == 1 and "<img" not in html  # only the page's own script
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    page = Elements(html)
    assert page.texts("outcome") == [evil] and page.texts("note") == [evil]  # shown as text, whole
    (link,) = [a for a in page.found.get("deploy", [])]
    assert link[0]["data-run-id"] == run_id
    assert ui_path(evil, run_id) in html  # the run page's href: percent-encoded, quotes and brackets included
    assert '"><img' not in ui_path(evil, run_id) and "%22%3E%3Cimg" in ui_path(evil, run_id)
    json.dumps(jsonable_encoder(model))  # the JSON route's encoding of the same records
