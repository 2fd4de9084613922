"""The PVC layout and the filesystem primitives that make publishing atomic.

    <pvc>/repository/<triton_model>/<version>/   published, immutable (Triton mounts only repository/)
    <pvc>/staging/<model>/<version>/<triton_model>/...   in-progress syncs, same filesystem
    <pvc>/staging/.trash/                         versions moved out of repository/ before deletion
    <pvc>/state/published/<model>/<version>.json  what was published, with each file's stat (PublishRecord)
    <pvc>/state/deployments/<model>.json          promoted / previous version (DeploymentState)
    <pvc>/state/fleet/<model>.json                the replicas a fleet rollout smoke-tested (FleetSmokeRecord)
    <pvc>/state/leases/<model>.json               the deploy run holding the model, and its log (lease.py)
    <pvc>/state/locks/<model>.lock                one writer per model (lock.py)

The records under state/ are read and written only through ``PvcLayout`` (their types: records.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triton_rollout.errors import ConfigError, IntegrityError
from triton_rollout.pvc.records import DeploymentState, FleetSmokeRecord, LeaseRecord, PublishRecord
from triton_rollout.release.manifest import Manifest, validate_relpath


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-to-temp, fsync, rename: readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def safe_join(root: Path, rel: str) -> Path:
    """Join a manifest path under root, refusing anything that could land outside it.

    The check is lexical (no '..', no absolute paths, no empty segments): directories under the PVC
    are created by this code, and a realpath() per file costs more than the rest of a small-file sync.
    """
    validate_relpath(rel)
    return root.joinpath(*rel.split("/"))


def refuse_links(root: Path, path: Path, *, below: bool = True) -> None:
    """Fail if a directory between ``root`` and ``path``, ``path`` itself or (``below``) anything under it is a
    symlink. safe_join's check is lexical: a symlink left in staging (by hand, or by a tool other than the
    sync, which creates none) would make the sync write, or publish, outside the PVC. One scandir pass."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            raise _planted(current)
    if not below or not current.is_dir():
        return
    pending = [str(current)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    raise _planted(Path(entry.path))
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)


def _planted(link: Path) -> IntegrityError:
    return IntegrityError(
        f"{link} is a symlink (to {os.readlink(link)!r}); the sync never creates one, so it refuses to write "
        "through it; nothing was written",
        hint=f"remove {link} (or the whole staging folder) and re-run the sync",
    )


@dataclass(frozen=True)
class PvcLayout:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str], *, create: bool = True) -> PvcLayout:
        path = Path(root).absolute()
        if not path.exists() and not create:
            raise ConfigError(f"PVC directory {path} does not exist")
        layout = cls(path)
        if create:
            for d in (layout.repository, layout.staging, layout.state, layout.trash, layout.locks):
                d.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            raise ConfigError(f"PVC path {path} is not a directory")
        return layout

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def trash(self) -> Path:
        return self.staging / ".trash"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def locks(self) -> Path:
        return self.state / "locks"

    def staging_release(self, model: str, version: int) -> Path:
        return self.staging / model / str(version)

    def version_dir(self, triton_model: str, version: int) -> Path:
        return self.repository / triton_model / str(version)

    def model_dir(self, triton_model: str) -> Path:
        return self.repository / triton_model

    def lock_file(self, model: str) -> Path:
        return self.locks / f"{model}.lock"

    def fleet_lock_file(self, model: str) -> Path:
        """Held while a rollout drains, switches or restores a model's replicas (triton/fleet.py), and by the
        reconcile while it repairs them; apart from lock_file, which each load / promote inside takes."""
        return self.locks / f"{model}.fleet.lock"

    def lease_lock_file(self, model: str) -> Path:
        """Held for the moment a deploy lease is read and rewritten (lease.py); apart from lock_file, which a sync
        holds for minutes."""
        return self.locks / f"{model}.lease.lock"

    # -- publish records: state/published/<model>/<version>.json ------------------------------------

    def _published_dir(self, model: str) -> Path:
        return self.state / "published" / model

    def publish_record_path(self, model: str, version: int) -> Path:
        """Where the record lives (for messages; read and write it with the methods below)."""
        return self._published_dir(model) / f"{version}.json"

    def publish_record(self, model: str, version: int, manifest: Manifest | None = None) -> PublishRecord | None:
        """``manifest``: the version's manifest when the caller has it (see PublishRecord.from_dict)."""
        data = read_json(self.publish_record_path(model, version))
        return PublishRecord.from_dict(data, manifest) if data else None

    def write_publish_record(self, record: PublishRecord) -> None:
        atomic_write_json(self.publish_record_path(record.model, record.version), record.to_dict())

    def remove_publish_record(self, model: str, version: int) -> None:
        self.publish_record_path(model, version).unlink()

    def published_versions(self, model: str) -> list[int]:
        folder = self._published_dir(model)
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())

    # -- deployment state: state/deployments/<model>.json -------------------------------------------

    @property
    def _deployments_dir(self) -> Path:
        return self.state / "deployments"

    def deployment_path(self, model: str) -> Path:
        """Where the state lives (for messages; read and write it with the methods below)."""
        return self._deployments_dir / f"{model}.json"

    def deployment(self, model: str) -> DeploymentState:
        """The model's deployment state; nothing promoted yet when it has none."""
        data = read_json(self.deployment_path(model))
        return DeploymentState.from_dict({"model": model, **data}) if data else DeploymentState(model=model)

    def save_deployment(self, state: DeploymentState) -> None:
        atomic_write_json(self.deployment_path(state.model), state.to_dict())

    # -- deploy lease: state/leases/<model>.json ----------------------------------------------------

    def lease_path(self, model: str) -> Path:
        return self.state / "leases" / f"{model}.json"

    def deploy_lease(self, model: str) -> LeaseRecord:
        """The model's lease record (read and written under lease_lock_file by pvc/lease.py)."""
        data = read_json(self.lease_path(model))
        return LeaseRecord.from_dict({"model": model, **data}) if data else LeaseRecord(model=model)

    def save_deploy_lease(self, record: LeaseRecord) -> None:
        atomic_write_json(self.lease_path(record.model), record.to_dict())

    def fleet_smoke_path(self, model: str) -> Path:
        return self.state / "fleet" / f"{model}.json"

    def fleet_smoke(self, model: str) -> FleetSmokeRecord | None:
        data = read_json(self.fleet_smoke_path(model))
        return FleetSmokeRecord.from_dict(data) if data else None

    def save_fleet_smoke(self, record: FleetSmokeRecord) -> None:
        atomic_write_json(self.fleet_smoke_path(record.model), record.to_dict())

    def deployed_models(self) -> list[str]:
        """Release models with a deployment state (promoted at least once)."""
        return sorted(p.stem for p in self._deployments_dir.glob("*.json"))

    # -- taking versions out of repository/ ----------------------------------------------------------

    def move_to_trash(self, path: Path, label: str) -> Path:
        """Atomically take a directory out of repository/ (a rename), to delete it afterwards."""
        self.trash.mkdir(parents=True, exist_ok=True)
        dest = self.trash / f"{label}.{uuid.uuid4().hex[:8]}"
        os.rename(path, dest)
        fsync_dir(path.parent)
        return dest

    def empty_trash(self) -> None:
        if self.trash.is_dir():
            for child in self.trash.iterdir():
                shutil.rmtree(child, ignore_errors=True)


def remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
