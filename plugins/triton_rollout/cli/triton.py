"""Subcommands ``load``, ``smoke``, ``promote``, ``rollback``, ``deploy`` and ``status``: PVC <-> Triton."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from triton_rollout.cli.output import emit_result
from triton_rollout.errors import ConfigError
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.steps import (
    DeployRequest,
    LoadRequest,
    PromoteRequest,
    ReconcileRequest,
    RollbackRequest,
    SmokeRequest,
    StatusRequest,
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


def _need(args: argparse.Namespace) -> tuple[PvcLayout, TritonControl]:
    if not args.pvc:
        raise ConfigError("no PVC directory: pass --pvc or set PVC_DIR")
    if not args.triton_url:
        raise ConfigError("no Triton URL: pass --triton-url or set TRITON_URL")
    return PvcLayout.at(args.pvc, create=False), TritonControl(args.triton_url, timeout=args.timeout)


def _models(args: argparse.Namespace) -> list[str] | None:
    return [m.strip() for m in args.triton_models.split(",") if m.strip()] if args.triton_models else None


def _release(args: argparse.Namespace, layout: PvcLayout, version: int) -> Any:
    return prepare_release(layout, args.model, version, triton_models=_models(args),
                           triton_repository=args.triton_repository)


def _load(args: argparse.Namespace) -> int:
    layout, control = _need(args)
    with control:
        release = _release(args, layout, args.version)
        result = load_candidate(control, layout, release, deadline_s=args.deadline, live_deadline_s=args.live_deadline)
    emit_result(result.to_dict(), args.result_file)
    return 0


def _smoke(args: argparse.Namespace) -> int:
    layout, control = _need(args)
    with control:
        control.wait_live(args.live_deadline)
        release = _release(args, layout, args.version)
        report = smoke_release(control, layout, args.model, args.version, release.entries,
                               budget_s=args.latency_budget)
    emit_result(report.to_dict(), args.result_file)
    return 0


def _promote(args: argparse.Namespace) -> int:
    layout, control = _need(args)
    with control:
        release = _release(args, layout, args.version)
        result = promote(layout, release, run_id=args.run_id, control=None if args.no_ready_check else control)
    emit_result(result.to_dict(), args.result_file)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    layout, control = _need(args)
    with control:
        result = rollback(control, layout, args.model, failed_version=args.failed_version,
                          to_version=args.to_version, reason=args.reason, run_id=args.run_id, deadline_s=args.deadline,
                          live_deadline_s=args.live_deadline, triton_models=_models(args),
                          triton_repository=args.triton_repository)
    emit_result(result.to_dict(), args.result_file)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    layout, control = _need(args)
    with control:
        # A rolled-back deploy re-raises the smoke-test failure, so its outcome is printed through report.
        deploy(control, layout, args.model, args.version, triton_models=_models(args),
               triton_repository=args.triton_repository, run_id=args.run_id, deadline_s=args.deadline,
               live_deadline_s=args.live_deadline, budget_s=args.latency_budget,
               report=lambda outcome: emit_result(outcome.to_dict(), args.result_file))
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from triton_rollout.triton.reconcile import reconcile_model, require_in_sync

    layout, control = _need(args)
    with control:
        control.wait_live(args.live_deadline)
        report = reconcile_model(layout, control, args.model, release_prefix=args.release_prefix,
                                 engine_prefix=args.engine_prefix, full=args.full, repair=not args.no_repair,
                                 triton_repository=args.triton_repository, deadline_s=args.deadline)
    emit_result(report.to_dict(), args.result_file)
    require_in_sync(report)
    return 0


def _status(args: argparse.Namespace) -> int:
    if not args.pvc:
        raise ConfigError("no PVC directory: pass --pvc or set PVC_DIR")
    layout = PvcLayout.at(args.pvc, create=False)
    control = TritonControl(args.triton_url, timeout=args.timeout) if args.triton_url else None
    try:
        status = collect_status(layout, control, model=args.model)
    finally:
        if control is not None:
            control.close()
    if args.as_json:
        emit_result(status.to_dict(), args.result_file)
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
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(status.to_dict()) + "\n")
    return 0
