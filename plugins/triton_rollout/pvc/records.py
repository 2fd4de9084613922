"""The records kept under the PVC's state/: what was published, and what is deployed.

- ``PublishRecord``: one per published version, written by the sync around the rename into repository/
  and read to verify the version (each file's stat) and to know its Triton models (the manifest).
- ``DeploymentState``: one per release model: the promoted version, the rollback target and a bounded
  history. Retention reads it so it never prunes either version; promote and rollback write it.

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
