"""Subcommands ``load``, ``smoke``, ``promote``, ``rollback``, ``deploy`` and ``status``: PVC <-> Triton."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from triton_rollout.cli.output import emit_result
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.steps import (
    DeployRequest,
    LoadRequest,
    PromoteRequest,
    ReconcileRequest,
    RollbackRequest,
    SmokeRequest,
    StatusRequest,
    TritonStepRequest,
)
from triton_rollout.triton.control import TritonControl
from triton_rollout.triton.promote import load_candidate, prepare_release, promote, rollback
from triton_rollout.triton.rollout import collect_status, deploy
from triton_rollout.triton.smoke import smoke_release


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for request, func in ((LoadRequest, _load), (SmokeRequest, _smoke), (PromoteRequest, _promote),
                          (RollbackRequest, _rollback), (DeployRequest, _deploy), (ReconcileRequest, _reconcile),
                          (StatusRequest, _status)):
        request.add_parser(sub).set_defaults(func=func)


def _open(req: TritonStepRequest) -> tuple[PvcLayout, TritonControl]:
    return PvcLayout.at(req.pvc, create=False), TritonControl(req.triton_url, timeout=req.timeout)


def _release(req: LoadRequest | SmokeRequest | PromoteRequest, layout: PvcLayout) -> Any:
    return prepare_release(layout, req.model, req.version, triton_models=list(req.triton_models) or None,
                           triton_repository=req.triton_repository)


def _load(args: argparse.Namespace) -> int:
    req = LoadRequest.from_args(args)
    layout, control = _open(req)
    with control:
        result = load_candidate(control, layout, _release(req, layout), deadline_s=req.deadline,
                                live_deadline_s=req.live_deadline, candidate=req.candidate)
    emit_result(result.to_dict(), req.result_file)
    return 0


def _smoke(args: argparse.Namespace) -> int:
    req = SmokeRequest.from_args(args)
    layout, control = _open(req)
    with control:
        control.wait_live(req.live_deadline)
        release = _release(req, layout)
        report = smoke_release(control, layout, req.model, req.version, release.entries,
                               budget_s=req.latency_budget)
    emit_result(report.to_dict(), req.result_file)
    return 0


def _promote(args: argparse.Namespace) -> int:
    req = PromoteRequest.from_args(args)
    layout, control = _open(req)
    with control:
        result = promote(layout, _release(req, layout), run_id=req.run_id,
                         control=None if req.no_ready_check else control)
    emit_result(result.to_dict(), req.result_file)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    req = RollbackRequest.from_args(args)
    layout, control = _open(req)
    with control:
        result = rollback(control, layout, req.model, failed_version=req.failed_version,
                          to_version=req.to_version, reason=req.reason, run_id=req.run_id, deadline_s=req.deadline,
                          live_deadline_s=req.live_deadline, triton_models=list(req.triton_models) or None,
                          triton_repository=req.triton_repository)
    emit_result(result.to_dict(), req.result_file)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    req = DeployRequest.from_args(args)
    layout, control = _open(req)
    with control:
        # A rolled-back deploy re-raises the smoke-test failure, so its outcome is printed through report.
        deploy(control, layout, req.model, req.version, triton_models=list(req.triton_models) or None,
               triton_repository=req.triton_repository, run_id=req.run_id, deadline_s=req.deadline,
               live_deadline_s=req.live_deadline, budget_s=req.latency_budget, candidate=req.candidate,
               report=lambda outcome: emit_result(outcome.to_dict(), req.result_file))
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from triton_rollout.triton.reconcile import reconcile_model, require_in_sync

    req = ReconcileRequest.from_args(args)
    layout, control = _open(req)
    with control:
        control.wait_live(req.live_deadline)
        report = reconcile_model(layout, control, req.model, release_prefix=req.release_prefix,
                                 engine_prefix=req.engine_prefix, full=req.full, repair=not req.no_repair,
                                 triton_repository=req.triton_repository, deadline_s=req.deadline,
                                 trusted_keys=req.public_keys)
    emit_result(report.to_dict(), req.result_file)
    require_in_sync(report)
    return 0


def _status(args: argparse.Namespace) -> int:
    req = StatusRequest.from_args(args)
    layout = PvcLayout.at(req.pvc, create=False)
    control = TritonControl(req.triton_url, timeout=req.timeout) if req.triton_url else None
    try:
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
    t = status.triton
    print(f"Triton {t.url or '(no --triton-url)'}: {'live' if t.live else 'NOT REACHABLE'}")
    for m in t.loaded:
        print(f"  {m.name} v{m.version}: {m.state}{' (' + m.reason + ')' if m.reason else ''}")
    print("endpoints answering now")
    for url in status.endpoints:
        print(f"  {url}")
    if req.result_file:
        Path(req.result_file).write_text(json.dumps(status.to_dict()) + "\n")
    return 0
