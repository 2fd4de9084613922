"""Subcommands ``load``, ``smoke``, ``promote``, ``rollback``, ``deploy`` and ``status``: PVC <-> Triton."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from triton_rollout.cli.output import emit_result
from triton_rollout.errors import DowngradeRefused, SmokeTestFailed
from triton_rollout.kube.fleet_api import FleetApi
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.pvc.lease import DeployLeases
from triton_rollout.pvc.lock import PvcLock
from triton_rollout.steps import (
    DeployRequest,
    LeasedStepRequest,
    LoadRequest,
    PromoteRequest,
    ReconcileRequest,
    RollbackRequest,
    ServingGateRequest,
    SmokeRequest,
    StatusRequest,
    TritonStepRequest,
)
from triton_rollout.triton.control import TritonControl
from triton_rollout.triton.fleet import (
    FleetOptions,
    admit_when_ready,
    fleet_load,
    fleet_lock,
    fleet_promote,
    fleet_rollback,
    fleet_smoke,
    readmit,
    replica_controls,
)
from triton_rollout.triton.promote import load_candidate, plan_rollback, prepare_release, promote, rollback
from triton_rollout.triton.rollout import collect_status, deploy
from triton_rollout.triton.smoke import smoke_release

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for request, func in ((LoadRequest, _load), (SmokeRequest, _smoke), (PromoteRequest, _promote),
                          (RollbackRequest, _rollback), (DeployRequest, _deploy), (ReconcileRequest, _reconcile),
                          (StatusRequest, _status), (ServingGateRequest, _serving_gate)):
        request.add_parser(sub).set_defaults(func=func)


def _open(req: TritonStepRequest) -> tuple[PvcLayout, TritonControl]:
    return PvcLayout.at(req.pvc, create=False), TritonControl(req.triton_url, timeout=req.timeout)


def _fleet(req: TritonStepRequest, *, candidate: str = "shadow", deadline: float | None = None,
           budget: float | None = None) -> tuple[FleetApi, FleetOptions]:
    """With --triton-service: the Service's replicas, and how each one is cycled (triton/fleet.py)."""
    assert req.triton_service is not None
    options = FleetOptions(candidate=candidate, live_deadline_s=req.live_deadline, timeout_s=req.timeout,
                           quiet_s=req.drain_quiet, drain_deadline_s=req.drain_deadline,
                           **({"deadline_s": deadline} if deadline is not None else {}),
                           **({"budget_s": budget} if budget is not None else {}))
    return FleetApi.for_service(req.triton_service), options


def _release(req: LoadRequest | SmokeRequest | PromoteRequest, layout: PvcLayout) -> Any:
    return prepare_release(layout, req.model, req.version, triton_models=list(req.triton_models) or None,
                           triton_repository=req.triton_repository)


def _with_seconds(result: dict[str, Any], t0: float) -> dict[str, Any]:
    """The step's own seconds in its result (what the deploy benchmark splits from its pod's), unless it has them."""
    return {"seconds": round(time.monotonic() - t0, 3), **result}


def _lease(req: LeasedStepRequest, layout: PvcLayout, wait_s: float = 0.0) -> DeployLeases:
    return DeployLeases(layout, req.model, req.run_id, req.lease_options(wait_s))


def _load(args: argparse.Namespace) -> int:
    req = LoadRequest.from_args(args)
    layout = PvcLayout.at(req.pvc, create=False)
    lease = _lease(req, layout, req.lease_wait)
    lease.take(req.version, "load")
    promoted = layout.deployment(req.model).promoted
    if req.refuse_downgrade and promoted is not None and promoted > req.version:
        lease.release("load", action="refused", note=f"v{promoted} promoted by then")
        raise DowngradeRefused(f"refusing to replace {req.model} v{promoted} (promoted by the time this run held the "
                               f"model's deploy lease) with the older v{req.version}")
    try:
        with lease.kept("load"):
            if req.triton_service:
                api, options = _fleet(req, candidate=req.candidate, deadline=req.deadline)
                result: Any = fleet_load(api, layout, _release(req, layout), options)
            else:
                with TritonControl(req.triton_url, timeout=req.timeout) as control:
                    result = load_candidate(control, layout, _release(req, layout), deadline_s=req.deadline,
                                            live_deadline_s=req.live_deadline, candidate=req.candidate)
    except Exception as exc:
        # A failed load puts back what it changed (shadow names discarded, in place the promoted version
        # reloaded, a fleet's replicas restored), so this run leaves nothing for another to trip over; the
        # rollback task takes the lease again for its own checks. A killed load keeps it until its TTL.
        lease.release("load", note=f"the load failed: {type(exc).__name__}")
        raise
    emit_result(result.to_dict(), req.result_file)
    return 0


def _smoke(args: argparse.Namespace) -> int:
    req = SmokeRequest.from_args(args)
    t0 = time.monotonic()
    layout = PvcLayout.at(req.pvc, create=False)
    lease = _lease(req, layout)
    lease.renew("smoke")
    with lease.kept("smoke"):
        if req.triton_service:
            api, options = _fleet(req, budget=req.latency_budget)
            report: Any = fleet_smoke(api, layout, _release(req, layout), options)
        else:
            with TritonControl(req.triton_url, timeout=req.timeout) as control:
                control.wait_live(req.live_deadline)
                release = _release(req, layout)
                report = smoke_release(control, layout, req.model, req.version, release.entries,
                                       budget_s=req.latency_budget)
    emit_result(_with_seconds(report.to_dict(), t0), req.result_file)
    return 0


def _promote(args: argparse.Namespace) -> int:
    req = PromoteRequest.from_args(args)
    t0 = time.monotonic()
    layout = PvcLayout.at(req.pvc, create=False)
    lease = _lease(req, layout)
    lease.renew("promote")
    with lease.kept("promote"):
        if req.triton_service and not req.no_ready_check:
            api, options = _fleet(req, candidate=req.candidate, deadline=req.deadline, budget=req.latency_budget)
            result: Any = fleet_promote(api, layout, _release(req, layout), options, run_id=req.run_id)
        else:
            with TritonControl(req.triton_url, timeout=req.timeout) as control:
                result = promote(layout, _release(req, layout), run_id=req.run_id,
                                 control=None if req.no_ready_check else control)
    lease.release("promote")  # a failed promote keeps it: the rollback step releases it
    emit_result(_with_seconds(result.to_dict(), t0), req.result_file)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    req = RollbackRequest.from_args(args)
    layout = PvcLayout.at(req.pvc, create=False)
    # Another run's candidate must not be rolled back under it: wait for its promote or rollback.
    with _lease(req, layout, req.lease_wait).held(req.pod_version, "rollback"):
        return _rollback_held(req, layout)


def _rollback_held(req: RollbackRequest, layout: PvcLayout) -> int:
    if req.triton_service:
        api, options = _fleet(req, deadline=req.deadline)
        with PvcLock(layout.lock_file(req.model), purpose=f"rollback {req.model}", timeout=600.0):
            plan = plan_rollback(layout, req.model, failed_version=req.failed_version, to_version=req.to_version,
                                 triton_models=list(req.triton_models) or None,
                                 triton_repository=req.triton_repository)
            result, replicas = fleet_rollback(api, layout, plan, options, reason=req.reason, run_id=req.run_id)
        emit_result({**result.to_dict(), "replicas": [r.to_dict() for r in replicas]}, req.result_file)
        return 0
    with TritonControl(req.triton_url, timeout=req.timeout) as control:
        result = rollback(control, layout, req.model, failed_version=req.failed_version,
                          to_version=req.to_version, reason=req.reason, run_id=req.run_id, deadline_s=req.deadline,
                          live_deadline_s=req.live_deadline, triton_models=list(req.triton_models) or None,
                          triton_repository=req.triton_repository)
    emit_result(result.to_dict(), req.result_file)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    req = DeployRequest.from_args(args)
    layout = PvcLayout.at(req.pvc, create=False)
    # Released however it ends: promoted or rolled back (a failed rollback too: the next deploy repairs it).
    with _lease(req, layout, req.lease_wait).held(req.version, "deploy"):
        return _deploy_held(req, layout)


def _deploy_held(req: DeployRequest, layout: PvcLayout) -> int:
    if req.triton_service:
        return _deploy_fleet(req, layout)
    with TritonControl(req.triton_url, timeout=req.timeout) as control:
        # A rolled-back deploy re-raises the smoke-test failure, so its outcome is printed through report.
        deploy(control, layout, req.model, req.version, triton_models=list(req.triton_models) or None,
               triton_repository=req.triton_repository, run_id=req.run_id, deadline_s=req.deadline,
               live_deadline_s=req.live_deadline, budget_s=req.latency_budget, candidate=req.candidate,
               report=lambda outcome: emit_result(outcome.to_dict(), req.result_file))
    return 0


def _deploy_fleet(req: DeployRequest, layout: PvcLayout) -> int:
    """deploy across the Service's replicas: the DAG's load -> smoke -> promote (or rollback) in one process."""
    api, options = _fleet(req, candidate=req.candidate, deadline=req.deadline, budget=req.latency_budget)
    release = _release(req, layout)
    loaded = fleet_load(api, layout, release, options)
    try:
        smoke = fleet_smoke(api, layout, release, options)
    except SmokeTestFailed as exc:
        plan = plan_rollback(layout, req.model, failed_version=req.version, triton_models=release.order,
                             triton_repository=release.triton_repository)
        back, replicas = fleet_rollback(api, layout, plan, options, reason=exc.message, run_id=req.run_id)
        emit_result({"model": req.model, "version": req.version, "outcome": "rolled_back", "promoted": back.promoted,
                     "error": exc.message, "replicas": [r.to_dict() for r in replicas]}, req.result_file)
        raise
    promoted = fleet_promote(api, layout, release, options, run_id=req.run_id)
    emit_result({"model": req.model, "version": req.version, "outcome": "promoted", **promoted.to_dict(),
                 "load": loaded.to_dict(), "smoke": smoke.to_dict()}, req.result_file)
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from triton_rollout.triton.reconcile import reconcile_model, require_in_sync

    req = ReconcileRequest.from_args(args)
    layout, control = _open(req)
    deploying = layout.deploy_lease(req.model).standing(time.time())
    if deploying is not None:
        # Between a deploy's load and its promote the candidate is the deploy's to test and switch: a repair
        # (reloading the promoted version, readmitting drained replicas) would act under it.
        why = f"a deploy holds the model: {deploying.describe(time.time())}"
        log.warning("reconcile of %s skipped: %s; the next reconcile checks it", req.model, why)
        emit_result({"model": req.model, "promoted": layout.deployment(req.model).promoted, "skipped": why},
                    req.result_file)
        return 0
    readmitted: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(control)
        replicas = None
        if req.triton_service:
            api, options = _fleet(req, deadline=req.deadline)
            stack.enter_context(fleet_lock(layout, req.model, f"reconcile {req.model}"))
            pairs = stack.enter_context(replica_controls(api, options))
            # A drained replica belongs to a rollout between its steps (its candidate untested): left alone, and
            # readmitted below once it serves the promoted version.
            replicas = {r.pod: c for r, c in pairs if r.gate is not False}
        else:
            control.wait_live(req.live_deadline)
        report = reconcile_model(layout, control, req.model, release_prefix=req.release_prefix,
                                 engine_prefix=req.engine_prefix, full=req.full, repair=not req.no_repair,
                                 triton_repository=req.triton_repository, deadline_s=req.deadline,
                                 trusted_keys=req.public_keys, replicas=replicas)
        if req.triton_service and not req.no_repair and not report.errors:
            # A replica left out of the Service (a rollout that died mid-way) or never let in, now serving the
            # promoted version: back into the Service.
            readmitted = readmit(api, pairs, layout, req.model, options)
            if readmitted:
                log.warning("put back into the Service: %s", ", ".join(readmitted))
    emit_result({**report.to_dict(), **({"readmitted": readmitted} if req.triton_service else {})},
                req.result_file)
    require_in_sync(report)
    return 0


def _status(args: argparse.Namespace) -> int:
    req = StatusRequest.from_args(args)
    layout = PvcLayout.at(req.pvc, create=False)
    control = TritonControl(req.triton_url, timeout=req.timeout) if req.triton_url else None
    try:
        if req.triton_service:
            with replica_controls(FleetApi.for_service(req.triton_service), FleetOptions(timeout_s=req.timeout)) as rs:
                status = collect_status(layout, control, model=req.model, replicas=rs)
        else:
            status = collect_status(layout, control, model=req.model)
    finally:
        if control is not None:
            control.close()
    if req.as_json:
        emit_result(status.to_dict(), req.result_file)
        return 0
    print(f"PVC {status.pvc_root}")
    for name, info in status.pvc_models.items():
        print(f"  {name}: versions {info.versions}, config.pbtxt pins {info.promoted_config_versions}")
    print("deployments")
    for name, d in status.deployments.items():
        promoted, previous = (f"v{v}" if v is not None else "-" for v in (d.promoted, d.previous))
        print(f"  {name}: promoted {promoted}, previous {previous}, updated {d.updated_at}")
        held = layout.deploy_lease(name).standing(time.time())
        if held is not None:
            print(f"    deploy lease held by {held.describe(time.time())}")
    t = status.triton
    print(f"Triton {t.url or '(no --triton-url)'}: {'live' if t.live else 'NOT REACHABLE'}")
    for m in t.loaded:
        print(f"  {m.name} v{m.version}: {m.state}{' (' + m.reason + ')' if m.reason else ''}")
    for r in status.replicas:
        serving = ", ".join(f"{m.name} v{m.version}" for m in r.triton.loaded if m.state == "READY") or "nothing"
        print(f"  replica {r.pod} ({r.triton.url}): {'in service' if r.in_service else 'OUT of service'}, "
              f"gate {r.gate}, restarts {r.restarts}, serves {serving}")
    print("endpoints answering now")
    for url in status.endpoints:
        print(f"  {url}")
    if req.result_file:
        Path(req.result_file).write_text(json.dumps(status.to_dict()) + "\n")
    return 0


def _serving_gate(args: argparse.Namespace) -> int:
    req = ServingGateRequest.from_args(args)
    api = FleetApi(req.namespace, service="")
    with TritonControl(req.triton_url, timeout=10.0) as control:
        admit_when_ready(api, req.pod, control, interval_s=req.interval)
    while True:  # a sidecar: it stays until the pod stops (SIGTERM ends it)
        time.sleep(3600)
