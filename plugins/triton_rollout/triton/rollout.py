"""Deploy and status: what ``python -m triton_rollout deploy`` and ``status`` do, as library calls.

``deploy`` is the deploy DAG's graph in one call (load the candidate -> smoke-test it -> promote it, or
roll it back when the smoke test fails), for people and scripts; the DAG runs the same steps as pods.
``collect_status`` reports what is on the PVC, what is promoted, what Triton has loaded and which
endpoints answer ready right now. Each result's ``to_dict`` is the JSON the CLI prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from triton_rollout.errors import SmokeTestFailed
from triton_rollout.kube.fleet_api import Replica
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.pvc.records import DeploymentState, HistoryEntry
from triton_rollout.steps import DEFAULT_LATENCY_BUDGET, DEFAULT_READY_DEADLINE
from triton_rollout.triton.config import list_models, pinned_versions
from triton_rollout.triton.control import ModelState, TritonControl
from triton_rollout.triton.promote import (
    LoadResult,
    load_candidate,
    prepare_release,
    promote,
    rollback,
)
from triton_rollout.triton.smoke import SmokeReport, smoke_release

# -- deploy -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeployOutcome:
    """The candidate was promoted, or rolled back after its smoke test failed."""

    model: str
    version: int  # the candidate
    outcome: Literal["promoted", "rolled_back"]
    promoted: int | None  # the version serving now
    previous: int | None = None  # promoted: the rollback target
    load: LoadResult | None = None  # promoted: the candidate's load
    smoke: SmokeReport | None = None  # promoted: the checks it passed
    error: str = ""  # rolled_back: why the smoke test failed

    def to_dict(self) -> dict[str, Any]:
        head = {"model": self.model, "version": self.version, "outcome": self.outcome, "promoted": self.promoted}
        if self.outcome == "rolled_back":
            return {**head, "error": self.error}
        return {**head, "load": self.load.to_dict() if self.load else None,
                "smoke": self.smoke.to_dict() if self.smoke else None, "previous": self.previous}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployOutcome:
        if data["outcome"] == "rolled_back":
            return cls(model=data["model"], version=data["version"], outcome="rolled_back",
                       promoted=data["promoted"], error=data["error"])
        return cls(model=data["model"], version=data["version"], outcome="promoted", promoted=data["promoted"],
                   previous=data["previous"], load=LoadResult.from_dict(data["load"]),
                   smoke=SmokeReport.from_dict(data["smoke"]))


def deploy(control: TritonControl, layout: PvcLayout, model: str, version: int, *,
           triton_models: list[str] | None = None, triton_repository: str | None = None, run_id: str = "",
           deadline_s: float = DEFAULT_READY_DEADLINE, live_deadline_s: float = 30.0,
           budget_s: float = DEFAULT_LATENCY_BUDGET, candidate: str = "shadow",
           report: Callable[[DeployOutcome], None] | None = None) -> DeployOutcome:
    """Load ``version`` as the candidate, smoke-test it and promote it; roll it back if the smoke test fails.

    A failed smoke test is re-raised once the rollback is done (the deploy failed), so ``report`` is how
    a caller learns that outcome: it receives the outcome, promoted or rolled back, before deploy returns
    or raises. A failed load raises from ``load_candidate``, which has put the promoted version back.
    ``triton_models``: as given by the operator (None: each version's own, from its publish record).
    ``candidate``: "shadow" or "in_place" (load_candidate).
    """
    release = prepare_release(layout, model, version, triton_models=triton_models,
                              triton_repository=triton_repository)
    loaded = load_candidate(control, layout, release, deadline_s=deadline_s, live_deadline_s=live_deadline_s,
                            candidate=candidate)
    try:
        smoke = smoke_release(control, layout, model, version, release.entries, budget_s=budget_s)
    except SmokeTestFailed as exc:
        back = rollback(control, layout, model, failed_version=version, reason=exc.message, run_id=run_id,
                        deadline_s=deadline_s, triton_models=triton_models, triton_repository=triton_repository)
        if report is not None:
            report(DeployOutcome(model=model, version=version, outcome="rolled_back", promoted=back.promoted,
                                 error=exc.message))
        raise
    promoted = promote(layout, release, run_id=run_id, control=control)
    outcome = DeployOutcome(model=model, version=version, outcome="promoted", promoted=promoted.promoted,
                            previous=promoted.previous, load=loaded, smoke=smoke)
    if report is not None:
        report(outcome)
    return outcome


# -- status -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PvcModelStatus:
    versions: list[int]  # version directories under repository/<triton_model>/
    promoted_config_versions: list[int]  # what its model-level config.pbtxt pins

    def to_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "promoted_config_versions": self.promoted_config_versions}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PvcModelStatus:
        return cls(versions=list(data["versions"]), promoted_config_versions=list(data["promoted_config_versions"]))


@dataclass(frozen=True)
class DeploymentStatus:
    """A release model's deployment state, with its latest history entry only."""

    promoted: int | None
    previous: int | None
    updated_at: str | None
    last: HistoryEntry | None

    @classmethod
    def of(cls, state: DeploymentState) -> DeploymentStatus:
        return cls(promoted=state.promoted, previous=state.previous, updated_at=state.updated_at, last=state.last)

    def to_dict(self) -> dict[str, Any]:
        return {"promoted": self.promoted, "previous": self.previous, "updated_at": self.updated_at,
                "last": self.last.to_dict() if self.last else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentStatus:
        last = data["last"]
        return cls(promoted=data["promoted"], previous=data["previous"], updated_at=data["updated_at"],
                   last=HistoryEntry.from_dict(last) if last else None)


@dataclass(frozen=True)
class TritonStatus:
    url: str | None = None  # None: no Triton URL was given
    live: bool = False
    loaded: list[ModelState] = field(default_factory=list)  # Triton's repository index

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "live": self.live,
                "loaded": [{"name": m.name, "version": m.version, "state": m.state,
                            **({"reason": m.reason} if m.reason else {})} for m in self.loaded]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TritonStatus:
        return cls(url=data["url"], live=data["live"], loaded=[
            ModelState(name=m["name"], version=m["version"], state=m["state"], reason=m.get("reason", ""))
            for m in data["loaded"]])


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica of a fleet (--triton-service): where it is, whether the Service routes to it, what it serves."""

    pod: str
    in_service: bool
    gate: bool | None  # the triton-rollout/serving condition (None: not set yet)
    restarts: int
    triton: TritonStatus

    def to_dict(self) -> dict[str, Any]:
        return {"pod": self.pod, "in_service": self.in_service, "gate": self.gate, "restarts": self.restarts,
                "triton": self.triton.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplicaStatus:
        return cls(pod=data["pod"], in_service=data["in_service"], gate=data["gate"], restarts=data["restarts"],
                   triton=TritonStatus.from_dict(data["triton"]))


@dataclass(frozen=True)
class StatusReport:
    pvc_root: str
    pvc_models: dict[str, PvcModelStatus]  # by Triton model
    deployments: dict[str, DeploymentStatus]  # by release model
    triton: TritonStatus
    endpoints: list[str]  # infer URLs of the versions that answered ready just now
    replicas: list[ReplicaStatus] = field(default_factory=list)  # with a fleet: each replica (triton: the Service)

    def to_dict(self) -> dict[str, Any]:
        return {"pvc": {"root": self.pvc_root, "models": {n: m.to_dict() for n, m in self.pvc_models.items()}},
                "deployments": {n: d.to_dict() for n, d in self.deployments.items()},
                "triton": self.triton.to_dict(), "endpoints": self.endpoints,
                "replicas": [r.to_dict() for r in self.replicas]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatusReport:
        return cls(pvc_root=data["pvc"]["root"],
                   pvc_models={n: PvcModelStatus.from_dict(m) for n, m in data["pvc"]["models"].items()},
                   deployments={n: DeploymentStatus.from_dict(d) for n, d in data["deployments"].items()},
                   triton=TritonStatus.from_dict(data["triton"]), endpoints=list(data["endpoints"]),
                   replicas=[ReplicaStatus.from_dict(r) for r in data.get("replicas", [])])


def _triton_status(control: TritonControl) -> TritonStatus:
    live = control.is_live()
    return TritonStatus(url=control.base_url, live=live, loaded=control.repository_index() if live else [])


def collect_status(layout: PvcLayout, control: TritonControl | None, *, model: str | None = None,
                   live_deadline_s: float = 0.0,
                   replicas: list[tuple[Replica, TritonControl]] | None = None) -> StatusReport:
    """PVC contents, deployment state, Triton's index, and the endpoints that answer ready right now.

    ``model``: only this release model's deployment state (default: every deployed model's).
    ``live_deadline_s``: how long to wait for a Triton that is not live yet (0: ask once).
    ``replicas``: a fleet's replicas (triton/fleet.py replica_controls), each reported with what it serves.
    """
    pvc_models = {
        name: PvcModelStatus(versions=info.versions, promoted_config_versions=pinned_versions(info.promoted_config)
                             if info.promoted_config else [])
        for name, info in list_models(layout.repository).items()
    }
    names = [model] if model else layout.deployed_models()
    deployments = {name: DeploymentStatus.of(layout.deployment(name)) for name in names}
    triton = TritonStatus()
    endpoints: list[str] = []
    if control is not None:
        if live_deadline_s:
            with contextlib.suppress(Exception):
                control.wait_live(live_deadline_s)
        triton = _triton_status(control)
        # Checked, not guessed: each READY entry is asked again for its own version's readiness.
        endpoints = [f"{control.base_url}/v2/models/{m.name}/versions/{m.version}/infer" for m in triton.loaded
                     if m.state == "READY" and m.version and control.is_version_ready(m.name, m.version)]
    fleet = [ReplicaStatus(pod=r.pod, in_service=r.in_service, gate=r.gate, restarts=r.restarts,
                           triton=_triton_status(c)) for r, c in replicas or []]
    return StatusReport(pvc_root=str(layout.root), pvc_models=pvc_models, deployments=deployments, triton=triton,
                        endpoints=endpoints, replicas=fleet)
