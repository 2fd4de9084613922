"""What the Triton models view shows, per configured model, as typed records (no FastAPI, no HTML here).

Three sources, each read on its own and each allowed to fail on its own (the record then carries a
``Problem`` saying what failed and what to do, and the page still renders the rest):

- S3, through the model's Airflow connection (``aws_conn_id``): the releases, newest first, each with its
  manifest's kind, created_at, size and file count (``release.s3`` / ``release.resolve`` do the reading);
- Triton (``triton_url``, or the ``triton_conn_id`` connection): its repository index, which versions
  answer ready (asked per version, not guessed from the index), the version that serves (the newest one
  every Triton model of the release has READY: ``resolve.common_ready_version``) and its infer endpoints;
- with a fleet (``kubernetes.triton_service``), the Kubernetes API as the model's ``kubernetes.api`` says (the
  EndpointSlices and pods: kube/fleet_api.py) and then each replica at its pod IP, read like the Service;
- Airflow's own database (the view runs inside the api-server): the deploy DAG's last runs, and from the
  XComs its tasks push, each run's version (``resolve`` returns the resolved release), the promoted and
  previous version (``promote`` / ``rollback`` push ``result``: model, promoted, previous) and the Triton
  models and entry points of the promoted release (``resolve``'s ``triton_models``, ``load``'s ``entries``).

S3 and Triton are asked in threads with one deadline, so a store or server that hangs costs the page that
deadline, not the sum of every client's retries and timeouts; a thread the page stopped waiting for ends
when its client gives up (the connection's botocore timeouts and retries, TRITON_TIMEOUT_S).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from triton_rollout.config import ModelDeployment
from triton_rollout.errors import ManifestError, ReleaseIncomplete, ReleaseNotFound, RolloutError
from triton_rollout.release.resolve import ResolvedRelease

log = logging.getLogger(__name__)

# How long S3 and Triton may take together before the page is rendered without them.
SOURCE_DEADLINE_S = 20.0
TRITON_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 10.0
RELEASES_SHOWN = 20  # newest first; one manifest GET each
RUNS_SHOWN = 10
# The XComs the deploy DAG's tasks push that the view reads ((task_id, key); airflow/operators.py, tasks.py).
RESOLVED = ("resolve", "return_value")
PROMOTED = ("promote", "result")
ROLLED_BACK = ("rollback", "result")
LOADED = ("load", "result")
_READ_XCOMS = (RESOLVED, PROMOTED, ROLLED_BACK, LOADED)


def deploy_dag_id(model: ModelDeployment) -> str:
    """The deploy DAG of ``model`` (airflow/factory.py ``deploy_dag``)."""
    return f"deploy_{model.name}"


def ui_path(dag_id: str, run_id: str | None = None) -> str:
    """A DAG's (or one run's) page in the Airflow UI, relative to the UI's base URL. Run ids hold ``+`` and
    ``:``, so both parts are percent-encoded."""
    path = f"dags/{quote(dag_id, safe='')}"
    return f"{path}/runs/{quote(run_id, safe='')}" if run_id is not None else path


@dataclass(frozen=True)
class Problem:
    """A source that could not be read: what failed (``message``) and what to do (``hint``)."""

    source: str  # "S3", "Triton", "Airflow", "models config"
    message: str
    hint: str

    @classmethod
    def of(cls, source: str, exc: BaseException, hint: str) -> Problem:
        """The library's own errors carry their message and hint; anything else is named by its type."""
        if isinstance(exc, RolloutError):
            return cls(source, exc.message, exc.hint or hint)
        return cls(source, f"{type(exc).__name__}: {exc}", hint)


@dataclass(frozen=True)
class Note:
    level: str  # "warning" (something is off) or "info"
    text: str


# -- S3 ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseRow:
    """One version folder in S3: complete (``release`` from its manifest) or not (``note`` says why)."""

    version: int
    release: ResolvedRelease | None = None
    note: str = ""

    @property
    def complete(self) -> bool:
        return self.release is not None


@dataclass(frozen=True)
class ReleaseList:
    location: str  # s3://bucket/prefix/model/
    rows: tuple[ReleaseRow, ...] = ()  # newest first
    older: int = 0  # versions beyond the ones shown
    problem: Problem | None = None

    @property
    def newest_complete(self) -> ResolvedRelease | None:
        return next((r.release for r in self.rows if r.release is not None), None)


def read_releases(model: ModelDeployment, client: Any, access: Any, *, limit: int = RELEASES_SHOWN,
                  timeout: float = S3_READ_TIMEOUT_S) -> ReleaseList:
    """The newest ``limit`` version folders of ``model`` with their manifests (``client`` lists, ``access``
    signs the manifest reads, as ``resolve.find_release`` does)."""
    from triton_rollout.release.resolve import resolved
    from triton_rollout.release.s3 import ObjectReader, ObjectSigner, fetch_manifest, list_release_versions

    bucket, model_key = model.releases_location()
    location = f"s3://{bucket}/{model_key}/"
    hint = (f"check that S3 is reachable from the api-server and that the Airflow connection "
            f"{model.aws_conn_id!r} (endpoint_url, keys, region) can list {location}")
    rows: list[ReleaseRow] = []
    try:
        versions = sorted(list_release_versions(client, bucket, model_key), reverse=True)
        reader = ObjectReader(bucket, signer=ObjectSigner(access), timeout=timeout)
        try:
            for version in versions[:limit]:
                try:
                    manifest = fetch_manifest(model.release(version), reader)
                except ReleaseIncomplete:
                    rows.append(ReleaseRow(version, note="no manifest.json yet: the upload is running or failed"))
                    continue
                except ReleaseNotFound as exc:  # deleted between the listing and the read
                    rows.append(ReleaseRow(version, note=exc.message))
                    continue
                except ManifestError as exc:  # one bad upload does not hide the others
                    rows.append(ReleaseRow(version, note=f"unreadable: {exc.message}"))
                    continue
                rows.append(ReleaseRow(version, release=resolved(model, manifest)))
        finally:
            reader.drop()
    except Exception as exc:
        log.warning("Triton models view: releases of %s: %s", model.name, exc)
        return ReleaseList(location, tuple(rows), problem=Problem.of("S3", exc, hint))
    return ReleaseList(location, tuple(rows), older=max(0, len(versions) - limit))


# -- Triton -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TritonVersion:
    """One entry of Triton's repository index, and whether that version answered ready just now."""

    model: str
    version: str
    state: str
    reason: str = ""
    ready: bool = False


@dataclass(frozen=True)
class TritonSnapshot:
    """One Triton server as read once for the whole page (models sharing a server share the read)."""

    url: str
    live: bool = False
    index: tuple[TritonVersion, ...] = ()
    problem: Problem | None = None


def read_triton(url: str, *, timeout: float = TRITON_TIMEOUT_S) -> TritonSnapshot:
    """Triton's index, each READY entry asked again for its own readiness (checked, not guessed)."""
    from triton_rollout.triton.control import TritonControl

    hint = ("check that Triton runs (kubectl -n triton get pods) and that the model's triton_url / "
            "triton_conn_id points at its HTTP port")
    try:
        with TritonControl(url, timeout=timeout) as control:
            base = control.base_url
            if not control.is_live():
                return TritonSnapshot(base, problem=Problem("Triton", f"Triton at {base} does not answer "
                                                                      "/v2/health/live", hint))
            index = tuple(
                TritonVersion(m.name, m.version, m.state, m.reason,
                              ready=m.state == "READY" and m.version.isdigit()
                              and control.is_version_ready(m.name, m.version))
                for m in control.repository_index())
    except Exception as exc:
        log.warning("Triton models view: Triton at %s: %s", url, exc)
        return TritonSnapshot(url, problem=Problem.of("Triton", exc, hint))
    return TritonSnapshot(base, live=True, index=index)


@dataclass(frozen=True)
class Endpoint:
    url: str
    model: str
    version: int
    serving: bool  # the version that serves the whole release (not a candidate or a leftover)


@dataclass(frozen=True)
class Serving:
    """What Triton serves of one configured model."""

    url: str
    live: bool = False
    triton_models: tuple[str, ...] = ()  # the release's Triton models
    models_from: str = ""  # where that list comes from (the promoted run, or the newest release)
    version: int | None = None  # the newest version every Triton model of the release has READY
    ready: bool = False  # every Triton model of ``version`` answered ready just now
    index: tuple[TritonVersion, ...] = ()  # the index entries of the release's Triton models
    endpoints: tuple[Endpoint, ...] = ()  # infer URLs of the entry models' ready versions
    problem: Problem | None = None


def serving_of(snapshot: TritonSnapshot, triton_models: Sequence[str], entries: Sequence[str] = (),
               models_from: str = "") -> Serving:
    """What ``snapshot`` serves of a release made of ``triton_models`` (``entries``: the ones clients call;
    empty: all of them)."""
    from triton_rollout.release.resolve import common_ready_version
    from triton_rollout.triton.control import ModelState, infer_url

    if snapshot.problem is not None:
        return Serving(snapshot.url, problem=snapshot.problem)
    if not triton_models:  # nothing deployed and no readable release: nothing to look for (not a failure)
        return Serving(snapshot.url, live=snapshot.live)
    mine = tuple(e for e in snapshot.index if e.model in triton_models)
    version = common_ready_version((ModelState(e.model, e.version, e.state) for e in mine if e.ready),
                                   triton_models)
    ready = {(e.model, e.version) for e in mine if e.ready}
    callable_models = [n for n in (entries or triton_models) if n in triton_models] or list(triton_models)
    endpoints = tuple(Endpoint(infer_url(snapshot.url, e.model, e.version), e.model, int(e.version),
                               serving=e.version == str(version))
                      for name in callable_models for e in mine if e.model == name and e.ready)
    return Serving(snapshot.url, live=True, triton_models=tuple(triton_models), models_from=models_from,
                   version=version,
                   ready=version is not None and all((n, str(version)) in ready for n in triton_models),
                   index=mine, endpoints=endpoints)


@dataclass(frozen=True)
class ReplicaSnapshot:
    """One replica of a fleet as the API lists it, with its own Triton read."""

    pod: str
    in_service: bool  # the Service routes new connections to it
    gate: bool | None  # triton-rollout/serving: None until its sidecar set it
    restarts: int
    triton: TritonSnapshot


@dataclass(frozen=True)
class FleetReplicas:
    """The replicas behind a model's Triton Service, read once (models sharing a Service share the read)."""

    service: str  # namespace/name
    replicas: tuple[ReplicaSnapshot, ...] = ()
    problem: Problem | None = None


def _kube_api_client(model: ModelDeployment) -> Any:
    """A Kubernetes client the way the model's pods are launched (kubernetes.api: in-cluster, kubeconfig or a
    connection), so the view needs no credentials of its own."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    api = model.kubernetes.api
    return KubernetesHook(conn_id=api.conn_id, in_cluster=api.in_cluster, config_file=api.config_file,
                          cluster_context=api.context).api_client


def read_replicas(model: ModelDeployment, *, timeout: float = TRITON_TIMEOUT_S,
                  api_client_for: Callable[[ModelDeployment], Any] = _kube_api_client) -> FleetReplicas:
    """Every replica of the model's Triton Service, and what each one serves."""
    from triton_rollout.kube.fleet_api import FleetApi

    kube = model.kubernetes
    service = f"{kube.namespace}/{kube.triton_service}"
    try:
        api = FleetApi(kube.namespace, str(kube.triton_service), api_client_for(model))
        try:
            listed = api.replicas()
        finally:
            api.close()
    except Exception as exc:
        log.warning("Triton models view: replicas of %s: %s", service, exc)
        return FleetReplicas(service, problem=Problem.of(
            "Kubernetes", exc, f"the api-server's Kubernetes identity needs services get, endpointslices list and "
                               f"pods list in {kube.namespace} (k8s/rbac.yaml, Role airflow-fleet-reader)"))
    return FleetReplicas(service, tuple(
        ReplicaSnapshot(r.pod, r.in_service, r.gate, r.restarts, read_triton(r.url, timeout=timeout))
        for r in listed))


@dataclass(frozen=True)
class ReplicaServing:
    pod: str
    in_service: bool
    gate: bool | None
    restarts: int
    serving: Serving


@dataclass(frozen=True)
class ReplicasView:
    service: str
    replicas: tuple[ReplicaServing, ...] = ()
    problem: Problem | None = None


# -- Airflow ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployRun:
    run_id: str
    run_type: str
    state: str
    start: datetime | None
    end: datetime | None
    version: int | None  # the release its resolve task chose
    outcome: str
    failed_tasks: tuple[str, ...]
    path: str  # the run's page, relative to the Airflow UI's base URL

    @property
    def seconds(self) -> float | None:
        return (self.end - self.start).total_seconds() if self.start and self.end else None


@dataclass(frozen=True)
class DeployHistory:
    dag_id: str
    path: str  # the DAG's page, relative to the UI's base URL
    promoted: int | None = None  # as the last promote / rollback recorded it
    previous: int | None = None
    promoted_by: str | None = None  # the run that recorded it
    triton_models: tuple[str, ...] = ()  # of the last promoted release (its resolve task)
    entries: tuple[str, ...] = ()  # the Triton models clients call (its load task)
    runs: tuple[DeployRun, ...] = ()  # newest first
    problem: Problem | None = None


def read_history(dag_id: str, *, limit: int = RUNS_SHOWN) -> DeployHistory:
    """The deploy DAG's last ``limit`` runs and what its tasks recorded, from Airflow's database."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    def xcoms(session: Any, *where: Any) -> dict[tuple[str, str, str], Any]:
        """{(run_id, task_id, key): value} of the XComs the view reads."""
        rows = session.execute(select(XComModel.run_id, XComModel.task_id, XComModel.key, XComModel.value).where(
            XComModel.dag_id == dag_id, XComModel.map_index == -1,
            XComModel.task_id.in_({t for t, _ in _READ_XCOMS}), XComModel.key.in_({k for _, k in _READ_XCOMS}),
            *where)).all()
        return {(r.run_id, r.task_id, r.key): XComModel.deserialize_value(r) for r in rows
                if (r.task_id, r.key) in _READ_XCOMS}

    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id)
                               .order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(limit)).all()
        run_ids = [r.run_id for r in runs]
        states: dict[str, list[tuple[str, str]]] = {}
        for ti in session.execute(select(TaskInstance.run_id, TaskInstance.task_id, TaskInstance.state)
                                  .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id.in_(run_ids))
                                  .order_by(TaskInstance.start_date)).all():
            states.setdefault(ti.run_id, []).append((ti.task_id, _text(ti.state)))
        values = xcoms(session, XComModel.run_id.in_(run_ids))
        # The last promote or rollback may be older than the runs shown: asked for on its own.
        last = session.execute(
            select(XComModel.run_id, XComModel.task_id, XComModel.value)
            .where(XComModel.dag_id == dag_id, XComModel.key == "result",
                   XComModel.task_id.in_((PROMOTED[0], ROLLED_BACK[0])))
            .order_by(XComModel.timestamp.desc()).limit(1)).first()
        last_promote = session.execute(
            select(XComModel.run_id).where(XComModel.dag_id == dag_id, XComModel.task_id == PROMOTED[0],
                                           XComModel.key == PROMOTED[1])
            .order_by(XComModel.timestamp.desc()).limit(1)).scalar()
        promoted_run = xcoms(session, XComModel.run_id == last_promote) if last_promote else {}
        rows = tuple(_deploy_run(dag_id, r, states.get(r.run_id, []), values) for r in runs)
    recorded = _mapping(XComModel.deserialize_value(last)) if last is not None else {}
    resolved = _mapping(promoted_run.get((last_promote or "", *RESOLVED)))
    loaded = _mapping(promoted_run.get((last_promote or "", *LOADED)))
    return DeployHistory(dag_id, ui_path(dag_id), promoted=_int(recorded.get("promoted")),
                         previous=_int(recorded.get("previous")), promoted_by=last.run_id if last else None,
                         triton_models=tuple(resolved.get("triton_models") or ()),
                         entries=tuple(loaded.get("entries") or ()), runs=rows)


def _deploy_run(dag_id: str, run: Any, tasks: list[tuple[str, str]], values: dict[tuple[str, str, str], Any]
                ) -> DeployRun:
    rid = run.run_id
    failed = tuple(t for t, s in tasks if s == "failed")

    def value(task_key: tuple[str, str]) -> dict[str, Any]:
        return _mapping(values.get((rid, *task_key)))

    return DeployRun(run_id=rid, run_type=_text(run.run_type), state=_text(run.state), start=run.start_date,
                     end=run.end_date, version=_int(value(RESOLVED).get("version")),
                     outcome=_outcome(_text(run.state), dict(tasks), failed, value(PROMOTED), value(ROLLED_BACK)),
                     failed_tasks=failed, path=ui_path(dag_id, rid))


def _outcome(state: str, tasks: dict[str, str], failed: tuple[str, ...], promoted: dict[str, Any],
             rolled_back: dict[str, Any]) -> str:
    if rolled_back:
        serving = rolled_back.get("promoted")
        return (f"rolled back, v{serving} serves" if serving is not None else "rolled back") + (
            f" (failed: {', '.join(t for t in failed if t != ROLLED_BACK[0])})" if failed else "")
    if promoted and tasks.get(PROMOTED[0]) == "success":
        previous = promoted.get("previous")
        return f"promoted v{promoted.get('promoted')}" + (f" (previous v{previous})" if previous is not None else "")
    if failed:
        return f"failed at {', '.join(failed)}"
    if state == "success" and tasks.get("wait_for_release") == "skipped":
        return "nothing new (skipped)"
    return state


def _text(value: Any) -> str:
    """An enum's value (DagRunState, DagRunType, TaskInstanceState), or the string itself."""
    return str(getattr(value, "value", value) or "")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


# -- the page ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelView:
    name: str
    dag_id: str
    releases: ReleaseList
    serving: Serving
    history: DeployHistory
    notes: tuple[Note, ...] = ()
    replicas: ReplicasView | None = None  # None: no fleet configured (kubernetes.triton_service)


@dataclass(frozen=True)
class Fleet:
    models: tuple[ModelView, ...] = ()
    gathered_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0
    hidden: int = 0  # configured models whose deploy DAG the user may not read
    problem: Problem | None = None  # the models config itself could not be read


def configured_models() -> list[ModelDeployment]:
    """The models of the DAG factory's config file (``$TRITON_ROLLOUT_MODELS``, else models.yaml in the
    dags folder), as the dag-processor reads it."""
    from airflow.configuration import conf

    from triton_rollout.airflow.factory import load_config

    return list(load_config(conf.get("core", "dags_folder")).models)


def _s3_of_connection(model: ModelDeployment) -> tuple[Any, Any]:
    from triton_rollout.airflow.connections import s3_from_connection

    s3 = s3_from_connection(model.aws_conn_id)
    return s3.client, s3.access


def _triton_url_of(model: ModelDeployment) -> str:
    from triton_rollout.airflow.connections import runtime_model

    return runtime_model(model).triton_url


def gather_fleet(models: Sequence[ModelDeployment], *,
                 history: Callable[[str], DeployHistory] = read_history,
                 s3_for: Callable[[ModelDeployment], tuple[Any, Any]] = _s3_of_connection,
                 triton_url_for: Callable[[ModelDeployment], str] = _triton_url_of,
                 replicas_for: Callable[[ModelDeployment], FleetReplicas] = read_replicas,
                 deadline_s: float = SOURCE_DEADLINE_S, hidden: int = 0) -> Fleet:
    """Every model's releases, serving state and deploy history; S3 and Triton in threads (one read per
    Triton server), the database here; whatever has not answered by ``deadline_s`` is a Problem."""
    t0 = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=max(1, min(8, 2 * len(models))), thread_name_prefix="triton-models-view")
    try:
        releases = {m.name: pool.submit(_releases, m, s3_for) for m in models}
        urls: dict[str, str | Problem] = {}
        for m in models:
            try:
                urls[m.name] = triton_url_for(m)
            except Exception as exc:
                urls[m.name] = Problem.of("Triton", exc, f"check the Airflow connection {m.triton_conn_id!r} "
                                                         "(its host and port name Triton's HTTP endpoint)")
        servers = {url: pool.submit(read_triton, url) for url in set(urls.values()) if isinstance(url, str)}
        services = {_service_of(m): pool.submit(replicas_for, m) for m in models if m.kubernetes.triton_service}
        histories = {m.name: _history(deploy_dag_id(m), history) for m in models}
        wait_for([*releases.values(), *servers.values(), *services.values()],
                 timeout=max(0.0, deadline_s - (time.monotonic() - t0)))
        views = tuple(_model_view(m, releases[m.name], urls[m.name], servers, histories[m.name], deadline_s,
                                  services.get(_service_of(m)))
                      for m in models)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung client must not hold the page
    return Fleet(views, seconds=time.monotonic() - t0, hidden=hidden)


def _releases(model: ModelDeployment, s3_for: Callable[[ModelDeployment], tuple[Any, Any]]) -> ReleaseList:
    try:
        client, access = s3_for(model)
    except Exception as exc:
        bucket, key = model.releases_location()
        return ReleaseList(f"s3://{bucket}/{key}/", problem=Problem.of(
            "S3", exc, f"check the Airflow connection {model.aws_conn_id!r}"))
    return read_releases(model, client, access)


def _history(dag_id: str, history: Callable[[str], DeployHistory]) -> DeployHistory:
    try:
        return history(dag_id)
    except Exception as exc:
        log.warning("Triton models view: runs of %s: %s", dag_id, exc)
        return DeployHistory(dag_id, ui_path(dag_id), problem=Problem.of(
            "Airflow", exc, "the api-server could not read its database: see the api-server log"))


def _service_of(model: ModelDeployment) -> str:
    return f"{model.kubernetes.namespace}/{model.kubernetes.triton_service}"


def _replicas_view(job: Future[FleetReplicas] | None, service: str, late: str, triton_models: Sequence[str],
                   entries: Sequence[str], origin: str) -> ReplicasView | None:
    if job is None:
        return None
    if not job.done():
        return ReplicasView(service, problem=Problem("Kubernetes", f"{late} listing the replicas of {service}",
                                                     "check that the Kubernetes API is reachable from the api-server"))
    found = job.result()
    return ReplicasView(found.service, tuple(
        ReplicaServing(r.pod, r.in_service, r.gate, r.restarts, serving_of(r.triton, triton_models, entries, origin))
        for r in found.replicas), found.problem)


def _model_view(model: ModelDeployment, releases_job: Future[ReleaseList], url: str | Problem,
                servers: dict[str, Future[TritonSnapshot]], history: DeployHistory, deadline_s: float,
                replicas_job: Future[FleetReplicas] | None = None) -> ModelView:
    late = f"no answer within {deadline_s:.0f} s"
    if releases_job.done():
        releases = releases_job.result()
    else:
        bucket, key = model.releases_location()
        releases = ReleaseList(f"s3://{bucket}/{key}/", problem=Problem(
            "S3", f"{late} listing s3://{bucket}/{key}/", "check that S3 is reachable from the api-server"))
    if isinstance(url, Problem):
        snapshot = TritonSnapshot(model.triton_url, problem=url)
    elif servers[url].done():
        snapshot = servers[url].result()
    else:
        snapshot = TritonSnapshot(url, problem=Problem("Triton", f"{late} from Triton at {url}",
                                                       "check that Triton runs and is reachable from the api-server"))
    newest = releases.newest_complete
    if history.triton_models:
        triton_models, entries, origin = history.triton_models, history.entries, f"run {history.promoted_by}"
    elif newest is not None:
        triton_models, entries, origin = tuple(newest.triton_models), (), f"release v{newest.version}"
    else:
        triton_models, entries, origin = (), (), ""
    serving = serving_of(snapshot, triton_models, entries, origin)
    replicas = _replicas_view(replicas_job, _service_of(model), late, triton_models, entries, origin)
    return ModelView(model.name, deploy_dag_id(model), releases, serving, history,
                     notes=tuple(_notes(model, releases, serving, history, replicas)), replicas=replicas)


def _notes(model: ModelDeployment, releases: ReleaseList, serving: Serving, history: DeployHistory,
           replicas: ReplicasView | None = None) -> Iterable[Note]:
    promoted, now = history.promoted, serving.version
    for r in replicas.replicas if replicas is not None else ():
        if r.serving.problem is None and promoted is not None and r.serving.version != promoted:
            what = f"v{r.serving.version}" if r.serving.version is not None else "no version"
            yield Note("warning", f"replica {r.pod} serves {what} of {model.name}, not the promoted v{promoted}: a "
                                  "rollout is running, or the reconcile DAG (reconcile_triton_models) converges it")
        if not r.in_service:
            why = "drained by a rollout" if r.gate is False else "its serving gate is not set yet"
            yield Note("info", f"replica {r.pod} is out of the Service ({why})")
    reconcile = "the reconcile DAG (reconcile_triton_models) loads the promoted version again"
    if serving.problem is None and history.problem is None and promoted is not None:
        if now is None:
            yield Note("warning", f"Airflow recorded v{promoted} as promoted, but Triton serves no version of "
                                  f"{model.name} whole: {reconcile}")
        elif now != promoted:
            yield Note("warning", f"Airflow recorded v{promoted} as promoted, but Triton serves v{now}: {reconcile}")
    if serving.version is not None and not serving.ready:
        yield Note("warning", f"v{serving.version} is loaded but not every Triton model answered ready just now")
    newest = releases.newest_complete
    if newest is not None and now is not None and newest.version > now:
        yield Note("info", f"v{newest.version} is the newest complete release and is not served yet: the next "
                           f"scheduled run deploys it, or trigger {deploy_dag_id(model)}")
