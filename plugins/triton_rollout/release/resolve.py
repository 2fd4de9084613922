"""Which release to deploy: the explicit version, or the newest complete one (as of a date / newer than X).

Plain library code used by the deploy DAG's sensor (in the triggerer) and its resolve task (on the
worker); both only need S3 (and, for "newer than what serves", Triton over HTTP), never the PVC.

"As of" a date: the newest complete release whose manifest ``created_at`` is at or before that date.
This is what lets a backfill re-deploy, for each past date, the version that was current then.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from triton_rollout.config import ModelDeployment
from triton_rollout.errors import ManifestError, ReleaseNotFound
from triton_rollout.release.manifest import Manifest, format_time
from triton_rollout.release.s3 import (
    ObjectReader,
    ObjectSigner,
    ReleaseUri,
    S3Access,
    fetch_manifest,
    list_release_versions,
    make_client,
)
from triton_rollout.release.signing import PublicKey

if TYPE_CHECKING:
    from triton_rollout.triton.control import ModelState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedRelease:
    """A complete release chosen for deployment: its address (``uri``) and, for a checkpoint, where the
    engine built from it is served from (``serve_uri``; the release itself for an engine)."""

    model: str
    version: int
    uri: ReleaseUri
    kind: str
    created_at: str
    files: int
    bytes: int
    triton_models: list[str]
    serve_uri: ReleaseUri

    @property
    def needs_build(self) -> bool:
        return self.kind == "checkpoint"

    def to_dict(self) -> dict[str, Any]:
        """For XCom: the addresses as s3:// strings (``release`` / ``serve_release``)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("uri", "serve_uri")}
        return {**out, "release": str(self.uri), "serve_release": str(self.serve_uri)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResolvedRelease:
        fields = {k: data[k] for k in ("model", "version", "kind", "created_at", "files", "bytes", "triton_models")}
        return cls(**fields, uri=ReleaseUri.parse(data["release"]), serve_uri=ReleaseUri.parse(data["serve_release"]))


def resolved(model: ModelDeployment, manifest: Manifest) -> ResolvedRelease:
    return ResolvedRelease(model=model.name, version=manifest.version, uri=model.release(manifest.version),
                           kind=manifest.kind, created_at=format_time(manifest.created_at), files=len(manifest.files),
                           bytes=manifest.total_size, triton_models=manifest.triton_models,
                           serve_uri=model.servable_release(manifest.version, kind=manifest.kind))


def find_release(model: ModelDeployment, *, version: int | None = None, as_of: datetime | None = None,
                 newer_than: int | None = None, client: Any = None, access: S3Access | None = None,
                 trusted_keys: Sequence[PublicKey] = ()) -> ResolvedRelease | None:
    """The release to deploy, or None when there is none (yet).

    ``version``: exactly that release, once its manifest exists (``as_of`` / ``newer_than`` ignored).
    Otherwise the newest complete release with ``created_at <= as_of`` (any, if None) and a version
    above ``newer_than``. Incomplete releases (no manifest.json yet) are passed over; a malformed
    manifest is logged and passed over, so one bad upload does not block the releases before it.
    ``client`` lists (a boto3 S3 client); ``access`` signs the manifest reads (both: the AWS environment
    when not given).

    ``trusted_keys`` (the resolve task passes the model's): the release chosen must be signed by one of them,
    else SignatureError. Its manifest decides what the run does (build or sync, and for a backfill which
    version was current at a date, from ``created_at``), so it is verified before a field of it is read. An
    untrusted newest release fails the run rather than being passed over: falling back to an older one would
    hide it. The release sensor calls without keys: it only notices a release; resolve decides whether it is
    trusted (and the sync checks again).
    """
    if version is not None:
        uri = model.release(version)
        try:
            return resolved(model, fetch_manifest(uri, ObjectReader(uri.bucket, signer=ObjectSigner(access)),
                                                  trusted_keys=trusted_keys))
        except ReleaseNotFound as exc:  # ReleaseIncomplete included: not complete yet
            log.info("%s", exc.message)
            return None
    client = client or make_client(access=access)
    bucket, model_key = model.releases_location()
    reader = ObjectReader(bucket, signer=ObjectSigner(access))
    for candidate in sorted(list_release_versions(client, bucket, model_key), reverse=True):
        if newer_than is not None and candidate <= newer_than:
            break
        uri = model.release(candidate)
        try:
            manifest = fetch_manifest(uri, reader, trusted_keys=trusted_keys)
        except ReleaseNotFound as exc:
            log.info("skipping %s: %s", uri, exc.message)
            continue
        except ManifestError as exc:
            log.warning("skipping %s: %s", uri, exc)
            continue
        if as_of is not None and manifest.created_at > as_of:
            continue
        return resolved(model, manifest)
    return None


def serving_version(triton_url: str, triton_models: list[str], *, timeout: float = 10.0) -> int | None:
    """The newest version every one of ``triton_models`` serves READY right now; None if none (or unreachable).

    Used to tell whether a release is *new*; an unreachable Triton counts as serving nothing, so the
    deploy goes ahead and its load step reports the outage.
    """
    from triton_rollout.triton.control import TritonControl

    with TritonControl(triton_url, timeout=timeout) as control:
        if not control.is_live():
            log.warning("Triton at %s is not reachable: treating it as serving nothing", triton_url)
            return None
        index = control.repository_index()
    return common_ready_version(index, triton_models)


def common_ready_version(index: Iterable[ModelState], triton_models: Iterable[str]) -> int | None:
    """The newest version that every one of ``triton_models`` has READY in Triton's repository ``index``."""
    entries = list(index)
    common: set[int] | None = None
    for name in triton_models:
        ready = {int(m.version) for m in entries if m.name == name and m.state == "READY" and m.version.isdigit()}
        common = ready if common is None else common & ready
    return max(common) if common else None


def describe(r: ResolvedRelease | None) -> str:
    if r is None:
        return "no release"
    built = f", engine built to {r.serve_uri}" if r.needs_build else ""
    return f"{r.model} v{r.version} ({r.kind}, created {r.created_at}, {r.files} files, {r.bytes} bytes{built})"
