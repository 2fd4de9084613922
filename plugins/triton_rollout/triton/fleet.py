"""A rollout over every Triton replica behind a Service, one replica at a time.

Without a fleet (``--triton-url`` only) the steps talk to one Triton; behind a Service of N replicas that
would load the candidate on whichever replica a request reaches. Here each replica is addressed at its pod
IP (kube/fleet_api.py finds them) and goes through the same cycle, never more than one at a time:

- ``candidate: shadow`` (the model fits in GPU memory twice): load the candidate under shadow names, smoke-test
  it there, swap it in (triton/shadow.py). Clients of that replica keep the promoted version until the swap.
- ``candidate: in_place`` with two or more replicas: take the replica out of the Service (its readiness gate
  ``triton-rollout/serving`` False), wait until the EndpointSlice shows it out and until it is quiet (its
  request count still for ``quiet_s``: the Service balances connections, so a keep-alive client stays on a
  drained replica), load the candidate in place, smoke-test it, put the replica back. With one replica
  there is nobody to drain to: the in-place trade-off of triton/promote.py (the candidate answers clients
  during its smoke test), as the model's config chose.

The deploy DAG's steps split the cycle: ``load`` and ``smoke`` do it on the first replica (the canary),
``promote`` finishes the canary (swap, or back into the Service), then cycles each other replica, then writes
the model-level config.pbtxt and state/ (so a replica that restarts or is added from then on loads the
promoted version with ``--load-model=*``), then looks again: a replica that restarted or appeared meanwhile
is cycled too. Any failure puts the previous version back on every replica the rollout touched and every
drained replica back into the Service, then raises.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from triton_rollout.errors import ConfigError, FleetError, RolloutError, SmokeTestFailed
from triton_rollout.kube.fleet_api import SERVING_GATE, FleetApi, Replica
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.pvc.lock import PvcLock
from triton_rollout.pvc.records import FleetSmokeRecord, SmokedReplica
from triton_rollout.steps import DEFAULT_LATENCY_BUDGET, DEFAULT_READY_DEADLINE
from triton_rollout.triton import shadow
from triton_rollout.triton.control import TritonControl
from triton_rollout.triton.promote import (
    CANDIDATE_MODES,
    LoadResult,
    PromoteResult,
    Release,
    RollbackPlan,
    RollbackResult,
    apply_rollback,
    carries,
    finish_rollback,
    load_candidate,
    plan_rollback,
    promote,
    record_rollback,
    release_triton_models,
    swap_in_shadow,
)
from triton_rollout.triton.smoke import SmokeReport, smoke_release

log = logging.getLogger(__name__)

DEFAULT_QUIET_S = 2.0
DEFAULT_DRAIN_DEADLINE = 120.0
# How many times promote looks again for replicas that restarted or appeared while it worked.
_CONVERGE_PASSES = 3


@dataclass(frozen=True)
class FleetOptions:
    """How each replica is cycled: the step's flags."""

    candidate: str = "shadow"
    deadline_s: float = DEFAULT_READY_DEADLINE  # a load's readiness
    live_deadline_s: float = 30.0
    budget_s: float = DEFAULT_LATENCY_BUDGET  # each smoke request
    timeout_s: float = 30.0  # each Triton request
    quiet_s: float = DEFAULT_QUIET_S
    drain_deadline_s: float = DEFAULT_DRAIN_DEADLINE

    def __post_init__(self) -> None:
        if self.candidate not in CANDIDATE_MODES:
            raise ConfigError(f"candidate mode {self.candidate!r} is not one of {', '.join(CANDIDATE_MODES)}")


@dataclass
class ReplicaReport:
    """What the rollout did on one replica."""

    pod: str
    url: str
    action: str  # loaded | smoked | promoted | restored | unchanged
    drained: bool = False
    seconds: float = 0.0
    smoke: SmokeReport | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pod": self.pod, "url": self.url, "action": self.action, "drained": self.drained,
                               "seconds": self.seconds}
        if self.smoke is not None:
            out["smoke"] = self.smoke.to_dict()
        return out


def _control(replica: Replica, options: FleetOptions) -> TritonControl:
    return TritonControl(replica.url, timeout=options.timeout_s)


def _in_service(api: FleetApi) -> list[Replica]:
    replicas = api.replicas()
    if not any(r.in_service for r in replicas):
        raise FleetError(f"Service {api.namespace}/{api.service} has no replica in service "
                         f"({len(replicas)} listed): nothing to roll out to",
                         hint=f"kubectl -n {api.namespace} get pods -o wide; start Triton before deploying")
    return replicas


def _drains(options: FleetOptions, replicas: list[Replica]) -> bool:
    """in_place with a replica to fall back on: the one being switched leaves the Service first."""
    return options.candidate == "in_place" and len(replicas) >= 2


def drain(api: FleetApi, control: TritonControl, replica: Replica, options: FleetOptions, why: str) -> None:
    """Take ``replica`` out of the Service and wait until no client is sending to it any more. Never the last
    replica in service: that would be an outage, not a drain."""
    others = [r.pod for r in api.replicas() if r.in_service and r.pod != replica.pod]
    if not others:
        raise FleetError(f"not draining {replica.pod}: no other replica of Service {api.namespace}/{api.service} "
                         "is in service to take its clients",
                         hint=f"wait until the other replicas are Ready (kubectl -n {api.namespace} get pods) and run "
                              "the deploy again; nothing was changed")
    log.info("draining %s (%s): %s; %s keep serving", replica.pod, replica.url, why, ", ".join(others))
    api.set_gate(replica.pod, False, why)
    api.wait_in_service(replica.pod, False, options.drain_deadline_s)
    end = time.monotonic() + options.drain_deadline_s
    last, still_since = control.request_count(), time.monotonic()
    while time.monotonic() - still_since < options.quiet_s:
        if time.monotonic() >= end:
            raise FleetError(
                f"replica {replica.pod} ({replica.url}) is out of Service {api.namespace}/{api.service} but still "
                f"answered {control.request_count() - last} requests in the last {options.quiet_s:.0f}s, "
                f"{options.drain_deadline_s:.0f}s after it was drained: a client holds a keep-alive connection to it",
                hint="loading in place now would serve it the untested candidate: use candidate: shadow for this "
                     "model (it fits twice), or put a per-request balancer in front of Triton, or raise "
                     "--drain-deadline")
        time.sleep(0.2)
        count = control.request_count()
        if count != last:
            last, still_since = count, time.monotonic()
    log.info("%s is out of the Service and quiet for %.1fs", replica.pod, options.quiet_s)


def undrain(api: FleetApi, replica: Replica, options: FleetOptions, why: str) -> None:
    api.set_gate(replica.pod, True, why)
    api.wait_in_service(replica.pod, True, options.drain_deadline_s)
    log.info("%s is back in the Service", replica.pod)


def carries_candidate(control: TritonControl, layout: PvcLayout, release: Release) -> bool:
    """Whether this replica has the candidate loaded: under its shadow names, or in place."""
    if shadow.has_shadow(layout, release):
        return all(control.is_version_ready(shadow.shadow_name(n), release.version) for n in release.entries)
    return all(control.is_version_ready(n, release.version) for n in release.entries)


def _smoke(control: TritonControl, layout: PvcLayout, release: Release, options: FleetOptions) -> SmokeReport:
    return smoke_release(control, layout, release.model, release.version, release.entries, budget_s=options.budget_s)


# -- load: the canary ----------------------------------------------------------------------------------


@dataclass
class FleetLoad:
    load: LoadResult
    canary: ReplicaReport
    replicas: list[Replica] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.load.to_dict(), "canary": self.canary.to_dict(),
                "replicas": [r.to_dict() for r in self.replicas]}


def fleet_lock(layout: PvcLayout, model: str, purpose: str, timeout: float = 600.0) -> PvcLock:
    return PvcLock(layout.fleet_lock_file(model), purpose=purpose, timeout=timeout)


def fleet_load(api: FleetApi, layout: PvcLayout, release: Release, options: FleetOptions) -> FleetLoad:
    """Load the candidate on the first replica in service (drained first when in place with others to serve)."""
    with fleet_lock(layout, release.model, f"load {release.model} v{release.version} on the fleet"):
        return _fleet_load(api, layout, release, options)


def _fleet_load(api: FleetApi, layout: PvcLayout, release: Release, options: FleetOptions) -> FleetLoad:
    replicas = _in_service(api)
    canary = next(r for r in replicas if r.in_service)
    with _control(canary, options) as control:
        drained = _drains(options, replicas)
        try:
            if drained:
                drain(api, control, canary, options, f"loading {release.model} v{release.version} in place")
            loaded = load_candidate(control, layout, release, deadline_s=options.deadline_s,
                                    live_deadline_s=options.live_deadline_s, candidate=options.candidate)
        except RolloutError:
            if drained:  # it did not go quiet, or load_candidate put the promoted version back on it
                undrain(api, canary, options, f"{release.model} v{release.version} was not loaded")
            raise
    report = ReplicaReport(pod=canary.pod, url=canary.url, action="loaded", drained=drained, seconds=loaded.seconds)
    return FleetLoad(load=loaded, canary=report, replicas=replicas)


# -- smoke: wherever the candidate is loaded ----------------------------------------------------------


@dataclass
class FleetSmoke:
    model: str
    version: int
    replicas: list[ReplicaReport]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "ok": True,
                "replicas": [r.to_dict() for r in self.replicas]}


def fleet_smoke(api: FleetApi, layout: PvcLayout, release: Release, options: FleetOptions) -> FleetSmoke:
    reports: list[ReplicaReport] = []
    tested: list[SmokedReplica] = []
    for replica in api.replicas():
        with _control(replica, options) as control:
            if not carries_candidate(control, layout, release):
                continue
            t0 = time.monotonic()
            report = _smoke(control, layout, release, options)
            reports.append(ReplicaReport(pod=replica.pod, url=replica.url, action="smoked",
                                         drained=replica.gate is False, seconds=round(time.monotonic() - t0, 3),
                                         smoke=report))
            tested.append(SmokedReplica(pod=replica.pod, uid=replica.uid, restarts=replica.restarts))
    if not reports:
        raise SmokeTestFailed(f"{release.model} v{release.version} is loaded on no replica of Service "
                              f"{api.namespace}/{api.service}: nothing to smoke-test",
                              hint="run the load step first (a replica that restarted since lost the candidate)")
    layout.save_fleet_smoke(FleetSmokeRecord(model=release.model, version=release.version, replicas=tuple(tested)))
    return FleetSmoke(model=release.model, version=release.version, replicas=reports)


# -- promote: every replica ---------------------------------------------------------------------------


@dataclass
class FleetPromote:
    promote: PromoteResult
    replicas: list[ReplicaReport]
    changed_under: list[str]  # replicas that restarted or appeared while the rollout ran (cycled too)

    def to_dict(self) -> dict[str, Any]:
        return {**self.promote.to_dict(), "replicas": [r.to_dict() for r in self.replicas],
                "changed_under": self.changed_under}


def _cycle(api: FleetApi, control: TritonControl, replica: Replica, layout: PvcLayout, release: Release,
           options: FleetOptions, *, drains: bool) -> ReplicaReport:
    """Switch one replica that does not have the candidate yet: load, smoke-test, swap in / back in service."""
    t0 = time.monotonic()
    if drains:
        drain(api, control, replica, options, f"switching to {release.model} v{release.version}")
    load_candidate(control, layout, release, deadline_s=options.deadline_s, live_deadline_s=options.live_deadline_s,
                   candidate=options.candidate)
    report = _smoke(control, layout, release, options)
    if options.candidate == "shadow":
        swap_in_shadow(control, layout, release)
    if drains:
        undrain(api, replica, options, f"serving {release.model} v{release.version}, smoke-tested")
    return ReplicaReport(pod=replica.pod, url=replica.url, action="promoted", drained=drains,
                         seconds=round(time.monotonic() - t0, 3), smoke=report)


def _finish_canary(api: FleetApi, control: TritonControl, replica: Replica, layout: PvcLayout, release: Release,
                   options: FleetOptions) -> ReplicaReport:
    """A replica the load and smoke steps switched: swap the shadow in, or put it back into the Service."""
    t0 = time.monotonic()
    if shadow.has_shadow(layout, release):
        swap_in_shadow(control, layout, release)
    if replica.gate is False:
        undrain(api, replica, options, f"serving {release.model} v{release.version}, smoke-tested")
    return ReplicaReport(pod=replica.pod, url=replica.url, action="promoted", drained=replica.gate is False,
                         seconds=round(time.monotonic() - t0, 3))


def _serves(control: TritonControl, release: Release) -> bool:
    return all(control.is_version_ready(n, release.version) for n in release.order)


def fleet_promote(api: FleetApi, layout: PvcLayout, release: Release, options: FleetOptions, *,
                  run_id: str = "") -> FleetPromote:
    with fleet_lock(layout, release.model, f"promote {release.model} v{release.version} on the fleet"):
        return _fleet_promote(api, layout, release, options, run_id=run_id)


def _fleet_promote(api: FleetApi, layout: PvcLayout, release: Release, options: FleetOptions, *,
                   run_id: str) -> FleetPromote:
    replicas = _in_service(api)
    drains = _drains(options, replicas)
    reports: list[ReplicaReport] = []
    touched: list[Replica] = []
    record = layout.fleet_smoke(release.model)
    smoked = {SmokedReplica(r.pod, r.uid, r.restarts) for r in record.replicas} \
        if record is not None and record.version == release.version else set()
    try:
        # The replicas the smoke step tested first (the canary), then the others one at a time. A replica tested
        # but restarted since (a new process: a restart loads every model directory, shadows included) or
        # replaced is not trusted: it is cycled like the others.
        for replica in sorted(replicas, key=lambda r: SmokedReplica(r.pod, r.uid, r.restarts) not in smoked):
            touched.append(replica)
            with _control(replica, options) as control:
                if SmokedReplica(replica.pod, replica.uid, replica.restarts) in smoked and \
                        carries_candidate(control, layout, release):
                    reports.append(_finish_canary(api, control, replica, layout, release, options))
                else:
                    reports.append(_cycle(api, control, replica, layout, release, options, drains=drains))
        result = promote(layout, release, run_id=run_id)
    except (RolloutError, OSError) as exc:
        _restore_fleet(api, layout, release, touched, options)
        raise FleetError(f"promoting {release.model} v{release.version} across Service {api.namespace}/"
                         f"{api.service} failed: {exc}",
                         hint="every replica the rollout had switched serves the previous version again and is back "
                              "in the Service; state/ is unchanged; fix the cause above and run the deploy again",
                         ) from exc
    changed = _converge(api, layout, release, options, {r.pod: r for r in replicas}, reports, drains=drains)
    return FleetPromote(promote=result, replicas=reports, changed_under=changed)


def _converge(api: FleetApi, layout: PvcLayout, release: Release, options: FleetOptions, seen: dict[str, Replica],
              reports: list[ReplicaReport], *, drains: bool) -> list[str]:
    """After promote wrote config.pbtxt and state/, a restarted or added replica loads the promoted version from
    disk; one that restarted or appeared before that runs the previous version, or nothing. Look again, switch
    those, and name every replica that changed under the rollout."""
    changed: list[str] = []
    for _ in range(_CONVERGE_PASSES):
        stale = []
        for replica in api.replicas():
            before = seen.get(replica.pod)
            if before is not None and before.restarts == replica.restarts:
                continue
            seen[replica.pod] = replica
            changed.append(replica.pod)
            log.warning("replica %s %s during the rollout", replica.pod, "restarted" if before else "appeared")
            with _control(replica, options) as control:
                if not _serves(control, release) or replica.gate is False:
                    stale.append(replica)
        if not stale:
            break
        for replica in stale:
            try:
                with _control(replica, options) as control:
                    reports.append(_cycle(api, control, replica, layout, release, options,
                                          drains=drains and replica.in_service))
            except (RolloutError, OSError) as exc:
                raise FleetError(
                    f"{release.model} v{release.version} is promoted, but replica {replica.pod} ({replica.url}), "
                    f"which restarted or appeared during the rollout, did not take it: {exc}",
                    hint=f"it is out of the Service if it was drained; `kubectl -n {api.namespace} delete pod "
                         f"{replica.pod}` makes the Deployment start it again on the promoted version, or the "
                         "reconcile DAG converges it") from exc
    return sorted(set(changed))


def _restore_fleet(api: FleetApi, layout: PvcLayout, release: Release, touched: list[Replica],
                   options: FleetOptions) -> None:
    """After a failed promote: the promoted version (state/ was not changed) on every touched replica."""
    plan = plan_rollback(layout, release.model, failed_version=release.version,
                         triton_models=release.order, triton_repository=release.triton_repository)
    for replica in touched:
        with contextlib.suppress(RolloutError, OSError), _control(replica, options) as control:
            apply_rollback(control, layout, plan, options.deadline_s)
        with contextlib.suppress(RolloutError, OSError):
            undrain(api, replica, options, f"{release.model} v{release.version} was not promoted")
    if touched:
        with contextlib.suppress(RolloutError, OSError), _control(touched[0], options) as control:
            finish_rollback(control, layout, plan)


# -- rollback: every replica --------------------------------------------------------------------------


def fleet_rollback(api: FleetApi, layout: PvcLayout, plan: RollbackPlan, options: FleetOptions, *, reason: str,
                   run_id: str) -> tuple[RollbackResult, list[ReplicaReport]]:
    """``plan.target`` on every replica, every replica back in the Service, then one history entry."""
    with fleet_lock(layout, plan.model, f"rollback {plan.model} on the fleet"):
        return _fleet_rollback(api, layout, plan, options, reason=reason, run_id=run_id)


def _fleet_rollback(api: FleetApi, layout: PvcLayout, plan: RollbackPlan, options: FleetOptions, *, reason: str,
                    run_id: str) -> tuple[RollbackResult, list[ReplicaReport]]:
    reports: list[ReplicaReport] = []
    replicas = api.replicas()
    failures: list[str] = []
    for replica in replicas:
        t0 = time.monotonic()
        try:
            with _control(replica, options) as control:
                # A replica whose tritonserver just died (killed mid-step, OOM) refuses connections until the
                # kubelet restarts it (after its restart back-off); it comes back on the promoted version from disk.
                # Wait for it, as load does, instead of failing the rollback on a replica that is fine.
                control.wait_live(options.live_deadline_s)
                changed = plan.failed is None or carries(control, plan.failed) or any(
                    control.ready_versions(shadow.shadow_name(n)) for n in plan.failed.order)
                if changed:
                    apply_rollback(control, layout, plan, options.deadline_s)
            if replica.gate is not True:
                undrain(api, replica, options, f"rolled back to {plan.model} v{plan.target}")
        except (RolloutError, OSError) as exc:
            failures.append(f"{replica.pod}: {exc}")
            continue
        reports.append(ReplicaReport(pod=replica.pod, url=replica.url, action="restored" if changed else "unchanged",
                                     drained=replica.gate is False, seconds=round(time.monotonic() - t0, 3)))
    if replicas:
        with _control(replicas[0], options) as control:
            finish_rollback(control, layout, plan)
    if failures:
        raise FleetError(f"rolling {plan.model} back to v{plan.target} failed on {len(failures)} of {len(replicas)} "
                         f"replicas: {'; '.join(failures)}",
                         hint="the replicas named keep what they had; fix them (kubectl describe pod) and run the "
                              "rollback again")
    return record_rollback(layout, plan, reason=reason, run_id=run_id), reports


def admit_when_ready(api: FleetApi, pod: str, control: TritonControl, *, interval_s: float = 2.0) -> bool:
    """A new pod's first admission (the serving-gate sidecar): once Triton is ready with what it loaded from disk
    (the promoted versions), set the gate True, unless it is set already (a rollout owns it from then on).
    Returns whether it set the gate. Waits as long as Triton is not ready: a pod whose models fail to load
    stays out of the Service."""
    while True:
        gate = api.gate(pod)
        if gate is not None:
            log.info("pod %s already has %s=%s: left to the rollout", pod, SERVING_GATE, gate)
            return False
        if control.is_server_ready():
            api.set_gate(pod, True, "Triton is ready with the models it loaded at start")
            log.info("pod %s: Triton is ready; %s set True", pod, SERVING_GATE)
            return True
        time.sleep(interval_s)


def readmit(api: FleetApi, pairs: list[tuple[Replica, TritonControl]], layout: PvcLayout, model: str,
            options: FleetOptions) -> list[str]:
    """Put back into the Service every replica that is out of it (a rollout that died mid-way left it drained,
    or a new pod whose gate nobody set) and serves ``model``'s promoted version; returns their pods."""
    promoted = layout.deployment(model).promoted
    if promoted is None:
        return []
    names = release_triton_models(layout, model, promoted)
    out = []
    for replica, control in pairs:
        if replica.gate is not True and all(control.is_version_ready(n, promoted) for n in names):
            undrain(api, replica, options, f"serving the promoted {model} v{promoted} (reconcile)")
            out.append(replica.pod)
    return out


@contextlib.contextmanager
def replica_controls(api: FleetApi, options: FleetOptions) -> Iterator[list[tuple[Replica, TritonControl]]]:
    """Every replica with a client to it, closed afterwards (status, reconcile)."""
    pairs = [(r, _control(r, options)) for r in api.replicas()]
    try:
        yield pairs
    finally:
        for _, control in pairs:
            control.close()

