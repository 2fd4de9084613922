"""Subcommands ``load``, ``smoke``, ``promote``, ``rollback``, ``deploy`` and ``status``: PVC <-> Triton."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from triton_rollout.cli.output import emit_result
from triton_rollout.errors import ConfigError, SmokeTestFailed
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.pvc.state import load_state
from triton_rollout.triton.config import list_models, pinned_versions
from triton_rollout.triton.control import TritonControl
from triton_rollout.triton.promote import load_candidate, prepare_release, promote, rollback
from triton_rollout.triton.smoke import DEFAULT_LATENCY_BUDGET, smoke_release

_ENV_NOTE = "Defaults come from PVC_DIR, TRITON_URL and TRITON_MODEL_REPOSITORY (what `make up` exports)."


def _common(p: argparse.ArgumentParser, *, model: bool = True, version: bool = True) -> None:
    p.add_argument("--pvc", default=os.environ.get("PVC_DIR"), help="the PVC mount (default $PVC_DIR)")
    p.add_argument("--triton-url", default=os.environ.get("TRITON_URL"),
                   help="Triton's HTTP endpoint, host:port or http://host:port (default $TRITON_URL)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for each Triton request (default 30)")
    p.add_argument("--live-deadline", type=float, default=30.0,
                   help="seconds to wait for an unreachable Triton before failing (default 30)")
    p.add_argument("--result-file", help="also write the JSON result here (e.g. /airflow/xcom/return.json)")
    if model:
        p.add_argument("--model", required=True, help="release model name (as in S3)")
    if version:
        p.add_argument("--version", type=int, required=True, help="release version")
    p.add_argument("--triton-models", help="comma-separated Triton models of the release "
                                            "(default: read from the sync's publish record)")
    p.add_argument("--triton-repository", default=os.environ.get("TRITON_MODEL_REPOSITORY"),
                   help="where Triton sees repository/ (its mount path; default: the PVC's own path)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("load", help="load a release version into Triton as the candidate",
                       description="Validate the release's config.pbtxt files, then load its models in dependency "
                                   "order with exact version pins and wait until each version is ready. The "
                                   "promoted version keeps serving while the candidate loads and if it fails. "
                                   + _ENV_NOTE)
    _common(p)
    p.add_argument("--deadline", type=float, default=600.0, help="seconds to wait for readiness (default 600)")
    p.set_defaults(func=_load)

    p = sub.add_parser("smoke", help="smoke-test a loaded version (generate or metadata-built infer + golden cases)")
    _common(p)
    p.add_argument("--latency-budget", type=float, default=DEFAULT_LATENCY_BUDGET,
                   help=f"seconds allowed per request (default {DEFAULT_LATENCY_BUDGET:g})")
    p.set_defaults(func=_smoke)

    p = sub.add_parser("promote", help="make a loaded, smoke-tested version the promoted one (config.pbtxt + state)")
    _common(p)
    p.add_argument("--run-id", default=os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", ""), help="recorded in state/")
    p.add_argument("--no-ready-check", action="store_true",
                   help="promote on the PVC without asking Triton (e.g. Triton is being restarted)")
    p.set_defaults(func=_promote)

    p = sub.add_parser("rollback", help="serve the previous version again and record it in state/")
    _common(p, version=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--failed-version", type=int, help="a loaded candidate that failed: reload the promoted version")
    g.add_argument("--to-version", type=int, help="roll the promoted version back to this one (default: previous)")
    p.add_argument("--reason", default="", help="recorded in state/")
    p.add_argument("--run-id", default=os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", ""))
    p.add_argument("--deadline", type=float, default=600.0)
    p.set_defaults(func=_rollback)

    p = sub.add_parser("deploy", help="load, smoke-test and promote a version; roll back if the smoke test fails")
    _common(p)
    p.add_argument("--deadline", type=float, default=600.0)
    p.add_argument("--latency-budget", type=float, default=DEFAULT_LATENCY_BUDGET)
    p.add_argument("--run-id", default=os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", ""))
    p.set_defaults(func=_deploy)

    p = sub.add_parser("reconcile", help="check the promoted version on the PVC and in Triton; repair drift",
                       description="Compare the promoted version's files with the publish record (stat) or their "
                                   "sha256 (--full), re-sync damaged or missing files through staging, and load "
                                   "the version again where Triton does not serve it. " + _ENV_NOTE)
    _common(p, version=False)
    p.add_argument("--release-prefix", required=True, help="s3://BUCKET/PREFIX the model's releases live under")
    p.add_argument("--engine-prefix", help="where engines built from checkpoints live (default PREFIX/engines)")
    p.add_argument("--full", action="store_true", help="re-hash every file instead of comparing stat records")
    p.add_argument("--no-repair", action="store_true", help="only report; exit non-zero on drift")
    p.add_argument("--deadline", type=float, default=600.0)
    p.set_defaults(func=_reconcile)

    p = sub.add_parser("status", help="what is on the PVC, promoted, loaded, and which endpoints answer now")
    _common(p, model=False, version=False)
    p.add_argument("--model", help="only this release model's deployment state")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_status)


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
        state = promote(layout, release, run_id=args.run_id, control=None if args.no_ready_check else control)
    emit_result({"model": state.model, "promoted": state.promoted, "previous": state.previous}, args.result_file)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    layout, control = _need(args)
    with control:
        state = rollback(control, layout, args.model, failed_version=args.failed_version, to_version=args.to_version,
                         reason=args.reason, run_id=args.run_id, deadline_s=args.deadline,
                         live_deadline_s=args.live_deadline, triton_models=_models(args),
                         triton_repository=args.triton_repository)
    emit_result({"model": state.model, "promoted": state.promoted, "previous": state.previous,
                 "last": state.history[-1]}, args.result_file)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    layout, control = _need(args)
    with control:
        release = _release(args, layout, args.version)
        loaded = load_candidate(control, layout, release, deadline_s=args.deadline,
                                live_deadline_s=args.live_deadline)
        try:
            report = smoke_release(control, layout, args.model, args.version, release.entries,
                                   budget_s=args.latency_budget)
        except SmokeTestFailed as exc:
            state = rollback(control, layout, args.model, failed_version=args.version, reason=exc.message,
                             run_id=args.run_id, deadline_s=args.deadline, triton_models=_models(args),
                             triton_repository=args.triton_repository)
            emit_result({"model": args.model, "version": args.version, "outcome": "rolled_back",
                         "promoted": state.promoted, "error": exc.message}, args.result_file)
            raise
        state = promote(layout, release, run_id=args.run_id, control=control)
    emit_result({"model": args.model, "version": args.version, "outcome": "promoted", "load": loaded.to_dict(),
                 "smoke": report.to_dict(), "promoted": state.promoted, "previous": state.previous},
                args.result_file)
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


def collect_status(layout: PvcLayout, control: TritonControl | None, *, model: str | None = None,
                   live_deadline_s: float = 0.0) -> dict[str, Any]:
    """PVC contents, deployment state, Triton's index, and the endpoints that answer ready right now."""
    pvc = {
        name: {"versions": info.versions,
               "promoted_config_versions": pinned_versions(info.promoted_config) if info.promoted_config else []}
        for name, info in list_models(layout.repository).items()
    }
    deployments_dir = layout.state / "deployments"
    names = [model] if model else sorted(p.stem for p in deployments_dir.glob("*.json"))
    deployments = {}
    for name in names:
        st = load_state(layout, name)
        deployments[name] = {"promoted": st.promoted, "previous": st.previous, "updated_at": st.updated_at,
                             "last": st.history[-1] if st.history else None}
    triton: dict[str, Any] = {"url": None, "live": False, "loaded": []}
    endpoints: list[str] = []
    if control is not None:
        triton["url"] = control.base_url
        if live_deadline_s:
            with contextlib.suppress(Exception):
                control.wait_live(live_deadline_s)
        triton["live"] = control.is_live()
        if triton["live"]:
            index = control.repository_index()
            triton["loaded"] = [{"name": m.name, "version": m.version, "state": m.state,
                                 **({"reason": m.reason} if m.reason else {})} for m in index]
            # Checked, not guessed: each READY entry is asked again for its own version's readiness.
            for m in index:
                if m.state == "READY" and m.version and control.is_version_ready(m.name, m.version):
                    endpoints.append(f"{control.base_url}/v2/models/{m.name}/versions/{m.version}/infer")
    return {"pvc": {"root": str(layout.root), "models": pvc}, "deployments": deployments, "triton": triton,
            "endpoints": endpoints}


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
    if args.json:
        emit_result(status, args.result_file)
        return 0
    print(f"PVC {status['pvc']['root']}")
    for name, info in status["pvc"]["models"].items():
        print(f"  {name}: versions {info['versions']}, config.pbtxt pins {info['promoted_config_versions']}")
    print("deployments")
    for name, d in status["deployments"].items():
        promoted, previous = (f"v{d[k]}" if d[k] is not None else "-" for k in ("promoted", "previous"))
        print(f"  {name}: promoted {promoted}, previous {previous}, updated {d['updated_at']}")
    t = status["triton"]
    print(f"Triton {t['url'] or '(no --triton-url)'}: {'live' if t['live'] else 'NOT REACHABLE'}")
    for m in t["loaded"]:
        print(f"  {m['name']} v{m['version']}: {m['state']}{' (' + m['reason'] + ')' if m.get('reason') else ''}")
    print("endpoints answering now")
    for url in status["endpoints"]:
        print(f"  {url}")
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(status) + "\n")
    return 0
