"""The records kept under the PVC's state/: what was published, and what is deployed.

- ``PublishRecord``: one per published version, written by the sync around the rename into repository/
  and read to verify the version (each file's stat) and to know its Triton models (the manifest).
- ``DeploymentState``: one per release model: the promoted version, the rollback target and a bounded
  history. Retention reads it so it never prunes either version; promote and rollback write it.
- ``LeaseRecord``: one per release model: which deploy run holds the model between its load and its promote
  or rollback (``DeployLease``), and a bounded log of who took, waited for, released or took over the lease.

``to_dict`` gives exactly the JSON documents on existing PVCs, ``from_dict`` reads them back; only
``PvcLayout`` (layout.py) reads and writes the files.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from triton_rollout.release.manifest import Manifest, format_time, parse_manifest

HISTORY_LIMIT = 50

# publishing: renames into repository/ under way; published: every Triton model renamed in and verified;
# pruning: leaving repository/ (the record goes last, so the next prune finishes an interrupted one).
PublishStatus = Literal["publishing", "published", "pruning"]


def _now() -> str:
    return format_time(datetime.now(UTC))


@dataclass(frozen=True)
class FileStat:
    """Identity of a published file: a rename keeps it, any rewrite or replacement changes it."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, path: Path) -> FileStat:
        st = os.stat(path)
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino)

    def to_dict(self) -> dict[str, int]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "ino": self.ino}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileStat:
        return cls(size=data["size"], mtime_ns=data["mtime_ns"], ino=data["ino"])


@dataclass(frozen=True)
class PublishRecord:
    """A published version as it was when renamed in: its manifest and the stat of every file."""

    status: PublishStatus
    manifest: Manifest
    files: dict[str, FileStat]  # manifest path -> stat
    at: str = field(default_factory=_now)

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def triton_models(self) -> list[str]:
        return self.manifest.triton_models

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "manifest": self.manifest.to_dict(),
                "files": {path: st.to_dict() for path, st in self.files.items()}, "at": self.at}

    @classmethod
    def from_dict(cls, data: dict[str, Any], manifest: Manifest | None = None) -> PublishRecord:
        """``manifest``: one the caller already holds; reused when the record's copy is the same document,
        which spares parsing (and validating) it twice: that was half of a no-op sync's time."""
        same = manifest is not None and data["manifest"] == manifest.to_dict()
        return cls(status=data["status"], manifest=manifest if same else parse_manifest(data["manifest"]),
                   files={path: FileStat.from_dict(st) for path, st in data["files"].items()}, at=data["at"])


@dataclass(frozen=True)
class HistoryEntry:
    """One promote or rollback. ``details`` holds the event's own keys (run_id, previous, triton_models
    for a promote; run_id, reason, from_version, candidate_failed for a rollback), kept as written."""

    event: str  # promote | rollback
    version: int | None
    at: str
    by: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def triton_models(self) -> list[str]:
        """The Triton models a promote served (empty for a rollback)."""
        return list(self.details.get("triton_models") or [])

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "version": self.version, "at": self.at, "by": self.by, **self.details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistoryEntry:
        common = ("event", "version", "at", "by")
        return cls(event=data["event"], version=data["version"], at=data["at"], by=data["by"],
                   details={k: v for k, v in data.items() if k not in common})


@dataclass
class DeploymentState:
    model: str
    promoted: int | None = None
    previous: int | None = None
    updated_at: str | None = None
    history: list[HistoryEntry] = field(default_factory=list)

    @property
    def protected(self) -> set[int]:
        """Versions retention must keep: the one serving and the one a rollback returns to."""
        return {v for v in (self.promoted, self.previous) if v is not None}

    @property
    def last(self) -> HistoryEntry | None:
        return self.history[-1] if self.history else None

    def record(self, event: str, version: int | None, **details: Any) -> None:
        entry = HistoryEntry(event=event, version=version, at=_now(), by=_actor(), details=details)
        self.updated_at = entry.at
        self.history.append(entry)
        del self.history[:-HISTORY_LIMIT]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "promoted": self.promoted, "previous": self.previous,
                "updated_at": self.updated_at, "history": [h.to_dict() for h in self.history]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeploymentState:
        return cls(model=data["model"], promoted=data.get("promoted"), previous=data.get("previous"),
                   updated_at=data.get("updated_at"),
                   history=[HistoryEntry.from_dict(h) for h in data.get("history", [])])


def _actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class SmokedReplica:
    """A replica as it was when the candidate passed its smoke test there: the same pod (uid) and the same
    Triton process (restart count), else what it serves now was loaded since and is untested."""

    pod: str
    uid: str
    restarts: int

    def to_dict(self) -> dict[str, Any]:
        return {"pod": self.pod, "uid": self.uid, "restarts": self.restarts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmokedReplica:
        return cls(pod=str(data["pod"]), uid=str(data["uid"]), restarts=int(data["restarts"]))


@dataclass(frozen=True)
class FleetSmokeRecord:
    """state/fleet/<model>.json: where a fleet rollout's smoke step passed (triton/fleet.py), for its promote step
    (another pod) to tell a smoke-tested replica from one that restarted or was replaced since."""

    model: str
    version: int
    replicas: tuple[SmokedReplica, ...]
    at: str = field(default_factory=lambda: format_time(datetime.now(UTC)))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "at": self.at,
                "replicas": [r.to_dict() for r in self.replicas]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FleetSmokeRecord:
        return cls(model=str(data["model"]), version=int(data["version"]), at=str(data["at"]),
                   replicas=tuple(SmokedReplica.from_dict(r) for r in data["replicas"]))


LEASE_LOG_LIMIT = 100

# taken: a load (or a rollback, a deploy) got the lease; waiting: it found another run's; released: a promote or
# rollback ended the run's hold; expired: a waiting run took over a lease its holder had stopped renewing;
# refused: the holder gave it back at once (e.g. the run would downgrade what is promoted).
LeaseAction = Literal["taken", "waiting", "released", "expired", "refused"]


def holder_text(run_id: str) -> str:
    """A lease holder in messages."""
    return f"run {run_id}" if run_id else "a run without --run-id"


@dataclass(frozen=True)
class DeployLease:
    """A deploy run's hold on its model between load and promote or rollback (pvc/lease.py). Times are epoch
    seconds: compared across pods and nodes, which share the PVC but not a monotonic clock."""

    model: str
    run_id: str  # "" for a step run by hand without --run-id
    version: int | None  # None: a rollback to the previous version
    step: str  # the step that last took or renewed it
    taken_at: float
    renewed_at: float
    ttl_s: float

    @property
    def expires_at(self) -> float:
        return self.renewed_at + self.ttl_s

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    @property
    def holder(self) -> str:
        return holder_text(self.run_id)

    def describe(self, now: float) -> str:
        what = f"v{self.version}" if self.version is not None else "a rollback"
        return (f"{self.holder} ({what}, last renewed by its {self.step} step {now - self.renewed_at:.0f}s "
                f"ago, expires in {max(self.expires_at - now, 0):.0f}s)")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "run_id": self.run_id, "version": self.version, "step": self.step,
                "taken_at": self.taken_at, "renewed_at": self.renewed_at, "ttl_s": self.ttl_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployLease:
        version = data.get("version")
        return cls(model=str(data["model"]), run_id=str(data["run_id"]),
                   version=None if version is None else int(version), step=str(data["step"]),
                   taken_at=float(data["taken_at"]), renewed_at=float(data["renewed_at"]),
                   ttl_s=float(data["ttl_s"]))


@dataclass(frozen=True)
class LeaseEvent:
    """One line of the lease log: what a run did with the lease, and who held it then (``other``)."""

    action: LeaseAction
    run_id: str
    version: int | None
    step: str
    at: float
    other: str = ""  # the run id that held it (waiting, expired)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "run_id": self.run_id, "version": self.version, "step": self.step,
                "at": self.at, "other": self.other, "note": self.note}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LeaseEvent:
        return cls(action=data["action"], run_id=str(data["run_id"]), version=data.get("version"),
                   step=str(data["step"]), at=float(data["at"]), other=str(data.get("other", "")),
                   note=str(data.get("note", "")))


@dataclass
class LeaseRecord:
    """state/leases/<model>.json: the lease now held (None: the model is free) and the log."""

    model: str
    current: DeployLease | None = None
    log: list[LeaseEvent] = field(default_factory=list)

    def standing(self, now: float) -> DeployLease | None:
        """The lease in force at ``now`` (None: free, or its holder stopped renewing it past its TTL)."""
        return self.current if self.current is not None and not self.current.expired(now) else None

    def append(self, event: LeaseEvent) -> None:
        self.log.append(event)
        del self.log[:-LEASE_LOG_LIMIT]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "current": self.current.to_dict() if self.current else None,
                "log": [e.to_dict() for e in self.log]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LeaseRecord:
        current = data.get("current")
        return cls(model=str(data["model"]), current=DeployLease.from_dict(current) if current else None,
                   log=[LeaseEvent.from_dict(e) for e in data.get("log", [])])
