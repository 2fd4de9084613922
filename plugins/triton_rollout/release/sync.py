"""Sync one S3 release into the PVC: download to staging, verify, fsync, rename into repository/.

Guarantees (each has a test):
- repository/ only ever gains a version directory whole and verified: it is renamed in from staging
  (same filesystem) after every file's sha256 matched and its bytes are on disk (a multi-part file's own
  fsync, one syncfs(2) for the small files: transfer.py). A kill at any point leaves repository/ as it
  was; a re-run resumes from the files and parts already verified in staging (small files re-hashed).
- re-syncing a version that is published and intact transfers nothing; one whose files changed
  since publishing is reported (CorruptVersion) and only replaced, whole, with ``repair=True``.
- one writer per model (PvcLock); retention never prunes the promoted or rollback version.
- with trusted keys configured, a release whose manifest is not signed by one of them is refused
  (SignatureError) before the PVC is opened (signing.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triton_rollout.errors import CorruptVersion, DiskFull, IntegrityError
from triton_rollout.pvc.layout import PvcLayout, fsync_dir, refuse_links, remove_tree, safe_join
from triton_rollout.pvc.lock import PvcLock
from triton_rollout.pvc.records import FileStat, PublishRecord
from triton_rollout.release.compat import check_compat
from triton_rollout.release.manifest import FileEntry, Manifest, hash_file
from triton_rollout.release.progress import Progress, TransferCounters, human_bytes
from triton_rollout.release.s3 import ObjectReader, ReleaseUri, fetch_manifest
from triton_rollout.release.signing import PublicKey

if TYPE_CHECKING:
    from triton_rollout.release.transfer import FileTask

log = logging.getLogger(__name__)

DEFAULT_KEEP = 3


@dataclass
class SyncOptions:
    concurrency: int = 8
    large_streams: int = 4
    write_mode: str = "mmap"  # or "pwrite", for filesystems where shared mappings misbehave
    request_size: int = 64 * 1024 * 1024
    repair: bool = False
    verify: str = "stat"  # "stat": size/mtime/inode against the publish record; "full": re-hash
    keep: int = DEFAULT_KEEP
    lock_timeout: float = 600.0
    progress_interval: float = 5.0
    prune: bool = True
    # The compatibility gate (compat.py): None = not checked.
    expect_trtllm_version: str | None = None
    expect_compute_capability: str | None = None
    # The signature gate (signing.py): empty = unsigned releases are accepted.
    trusted_keys: tuple[PublicKey, ...] = ()
    # Seconds without a byte from S3 before a GET counts as stalled and is retried (a server that stops
    # mid-body without closing the connection: downloads elsewhere hang forever on it, kserve#5611).
    stall_timeout: float = 30.0


@dataclass
class SyncResult(TransferCounters):
    release: str
    model: str
    version: int
    status: str  # published | unchanged | repaired | adopted
    triton_models: list[str]
    published_paths: list[str]
    files_total: int
    bytes_total: int
    seconds: float = 0.0
    pruned: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        rate = self.bytes_transferred / self.seconds if self.seconds > 0 else 0
        return (
            f"{self.status}: {self.model} v{self.version} -> {', '.join(self.published_paths)}; "
            f"transferred {self.files_transferred} files / {human_bytes(self.bytes_transferred)}, "
            f"skipped {self.files_skipped} files / {human_bytes(self.bytes_skipped)}, "
            f"{self.seconds:.2f}s ({human_bytes(rate)}/s)"
        )


# -- checking a published version against its publish record -----------------------------------------


def _repo_path(layout: PvcLayout, manifest: Manifest, entry: FileEntry) -> Path:
    return safe_join(layout.version_dir(entry.triton_model, manifest.version), entry.path_in_model)


def _recorded_stat(record: PublishRecord | None, entry: FileEntry) -> FileStat | None:
    return record.files.get(entry.path) if record else None


def check_published(layout: PvcLayout, manifest: Manifest, record: PublishRecord | None, *, full: bool = False,
                    triton_models: Collection[str] | None = None) -> list[str]:
    """Problems with a published version: files missing, resized, rewritten or (full) wrong content.

    ``record``: the version's publish record (its stats spare re-hashing untouched files);
    ``triton_models``: check only the files of these Triton models (default: every file).
    """
    problems = []
    recorded = record.files if record else {}
    bases: dict[str, str] = {}
    for entry in manifest.files:
        triton_model, _, in_model = entry.path.partition("/")
        if triton_models is not None and triton_model not in triton_models:
            continue
        base = bases.get(triton_model)
        if base is None:
            base = bases[triton_model] = os.fspath(layout.version_dir(triton_model, manifest.version))
        # A string join, not safe_join: every manifest path was validated when it was parsed (no '..',
        # no absolute or empty segments), and pathlib per file is most of a 50,000-file no-op's time.
        path = f"{base}/{in_model}"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            problems.append(f"{entry.path}: missing")
            continue
        if st.st_size != entry.size:
            problems.append(f"{entry.path}: size {st.st_size} != manifest {entry.size}")
            continue
        # A stat identical to the publish record means untouched since it was verified; else re-hash.
        now = FileStat(size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino)
        if (full or recorded.get(entry.path) != now) and not _content_matches(Path(path), entry):
            problems.append(f"{entry.path}: content differs from the manifest's sha256")
    return problems


def _content_matches(path: Path, entry: FileEntry) -> bool:
    whole, parts = hash_file(path, entry.size, entry.part_size or max(entry.size, 1))
    if entry.part_sha256:
        return parts == entry.part_sha256
    return whole == entry.sha256


# -- the sync ------------------------------------------------------------------------------------------


def sync_release(
    release_uri: str | ReleaseUri,
    pvc: str | os.PathLike[str],
    *,
    options: SyncOptions | None = None,
    **overrides: Any,
) -> SyncResult:
    opts = options or SyncOptions()
    for key, value in overrides.items():
        if not hasattr(opts, key):
            raise TypeError(f"unknown sync option {key!r}")
        setattr(opts, key, value)
    release = release_uri if isinstance(release_uri, ReleaseUri) else ReleaseUri.parse(release_uri)
    started = time.monotonic()
    # With trusted keys, the signature is checked over the manifest bytes this one read returns: before
    # anything below (even staging) touches the PVC.
    manifest = fetch_manifest(release, ObjectReader(release.bucket, timeout=opts.stall_timeout),
                              trusted_keys=opts.trusted_keys)
    manifest.require_servable()
    # Before the PVC is even opened: a mismatched engine must not cost a byte of it.
    check_compat(manifest, trtllm_version=opts.expect_trtllm_version,
                 compute_capability=opts.expect_compute_capability)
    layout = PvcLayout.at(pvc)
    lock = PvcLock(layout.lock_file(manifest.model), purpose=f"sync {release}", timeout=opts.lock_timeout)
    with lock:
        result = _sync_locked(release, manifest, layout, opts, lock)
        if opts.prune:
            result.pruned = prune(layout, manifest.model, keep=opts.keep, also_keep={manifest.version})
    result.seconds = round(time.monotonic() - started, 3)
    log.info(result.summary())
    return result


def _new_result(release: ReleaseUri, manifest: Manifest, layout: PvcLayout, status: str) -> SyncResult:
    return SyncResult(
        release=str(release),
        model=manifest.model,
        version=manifest.version,
        status=status,
        triton_models=manifest.triton_models,
        published_paths=[str(layout.version_dir(t, manifest.version)) for t in manifest.triton_models],
        files_total=len(manifest.files),
        bytes_total=manifest.total_size,
    )


def _sync_locked(
    release: ReleaseUri, manifest: Manifest, layout: PvcLayout, opts: SyncOptions, lock: PvcLock
) -> SyncResult:
    record = layout.publish_record(manifest.model, manifest.version, manifest)
    present = [t for t in manifest.triton_models if layout.version_dir(t, manifest.version).exists()]
    status = "published"
    if present:
        # The Triton models not renamed in yet are downloaded below whatever their staging holds.
        problems = check_published(layout, manifest, record, full=opts.verify == "full", triton_models=present)
        if not problems and len(present) == len(manifest.triton_models):
            result = _new_result(release, manifest, layout, "unchanged")
            result.files_skipped, result.bytes_skipped = len(manifest.files), manifest.total_size
            if not record or record.status != "published":
                # Renamed in by a sync that died before writing its record: adopt it.
                layout.write_publish_record(PublishRecord("published", manifest, _stats(layout, manifest)))
                result.status = "adopted"
            log.info("%s v%d is already published and intact (%s check)", manifest.model, manifest.version, opts.verify)
            return result
        if problems and not opts.repair:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            shown = "; ".join(problems[:5]) + more
            raise CorruptVersion(
                f"{manifest.model} v{manifest.version} is on the PVC but does not match its manifest: {shown}"
            )
        if problems:
            log.warning("repairing %s v%d: %s", manifest.model, manifest.version, "; ".join(problems[:5]))
            status = "repaired"

    # Imported here: the no-op path above must stay cheap to start (pods re-run it on every reconcile).
    from triton_rollout.release.transfer import Downloader, FileTask

    staging = layout.staging_release(manifest.model, manifest.version)
    # Before a byte is written: a symlink in staging or on the way to repository/<model>/ would lead outside.
    refuse_links(layout.root, staging)
    for triton_model in manifest.triton_models:
        refuse_links(layout.root, layout.model_dir(triton_model), below=False)
    tasks = []
    kept_files = kept_bytes = 0
    for entry in manifest.files:
        dest = safe_join(staging, entry.path)
        if entry.triton_model in present:
            if status != "repaired":
                # Published whole and verified by an earlier run that died before the next rename.
                kept_files, kept_bytes = kept_files + 1, kept_bytes + entry.size
                continue
            if not dest.exists():
                # Intact files of a version being repaired are hard-linked, not downloaded again.
                _link_if_intact(_repo_path(layout, manifest, entry), entry, dest, record)
        tasks.append(FileTask(entry, release.file_key(entry.path), dest))

    _check_space(layout, tasks)
    progress = Progress(
        f"sync {manifest.model} v{manifest.version}", manifest.total_size, len(tasks), interval=opts.progress_interval
    ).start()
    downloader = Downloader(
        release.bucket,
        concurrency=opts.concurrency,
        large_streams=opts.large_streams,
        write_mode=opts.write_mode,
        request_size=opts.request_size,
        progress=progress,
        timeout=opts.stall_timeout,
    )
    try:
        stats = downloader.run(tasks)
    except (DiskFull, IntegrityError):
        # Full disk: free what staging took. Integrity: S3 differs from the manifest, a fix is a new release.
        _remove_staging(staging)
        raise
    finally:
        progress.stop()
    log.info(progress.line())

    _publish(layout, manifest, staging, lock, replace=status == "repaired")
    result = _new_result(release, manifest, layout, status)
    for counter in fields(TransferCounters):
        setattr(result, counter.name, getattr(stats, counter.name))
    result.files_skipped += kept_files
    result.bytes_skipped += kept_bytes
    return result


def _link_if_intact(repo_file: Path, entry: FileEntry, dest: Path, record: PublishRecord | None) -> None:
    try:
        now = FileStat.of(repo_file)
    except FileNotFoundError:
        return
    intact = now.size == entry.size and (now == _recorded_stat(record, entry) or _content_matches(repo_file, entry))
    if intact:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(repo_file, dest)


def _remove_staging(staging: Path) -> None:
    remove_tree(staging)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()  # the model's staging folder, when no other version is in flight


def _check_space(layout: PvcLayout, tasks: list[FileTask]) -> None:
    from triton_rollout.release.transfer import PARTIAL_SUFFIX

    need = 0
    for t in tasks:
        if t.dest.exists() and t.dest.stat().st_size == t.entry.size:
            continue
        need += t.entry.size
        # A .partial left by an interrupted sync holds blocks this file reuses or frees before it writes.
        with contextlib.suppress(FileNotFoundError):
            need -= min(t.entry.size, os.stat(f"{t.dest}{PARTIAL_SUFFIX}").st_blocks * 512)
    free = shutil.disk_usage(layout.root).free
    if need > free:
        raise DiskFull(
            f"the PVC at {layout.root} has {human_bytes(free)} free but the release needs {human_bytes(need)} more"
        )


def _stats(layout: PvcLayout, manifest: Manifest) -> dict[str, FileStat]:
    return {e.path: FileStat.of(_repo_path(layout, manifest, e)) for e in manifest.files}


def _publish(layout: PvcLayout, manifest: Manifest, staging: Path, lock: PvcLock, *, replace: bool) -> None:
    """Rename each verified Triton model directory from staging into repository/<model>/<version>/."""
    for root, dirs, _files in os.walk(staging, topdown=False):
        for d in dirs:
            fsync_dir(Path(root) / d)
    fsync_dir(staging)
    if not lock.still_held():
        raise IntegrityError(
            f"lost the PVC lock for {manifest.model} before publishing (another sync took it over); "
            "nothing was published",
            hint="re-run the sync; if this repeats, raise the lock's stale timeout",
        )
    # Stat records survive the rename (same inode), so they can be taken before it.
    staged_stats = {e.path: FileStat.of(safe_join(staging, e.path)) for e in manifest.files}
    layout.write_publish_record(PublishRecord("publishing", manifest, staged_stats))
    for triton_model in manifest.triton_models:
        target = layout.version_dir(triton_model, manifest.version)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if replace:
                # The damaged copy leaves repository/ in one rename; the verified one enters in another.
                layout.move_to_trash(target, f"{triton_model}-{manifest.version}-damaged")
            else:
                continue  # published by an earlier, interrupted run and verified above
        os.rename(staging / triton_model, target)
        fsync_dir(target.parent)
    layout.write_publish_record(PublishRecord("published", manifest, staged_stats))
    _remove_staging(staging)
    layout.empty_trash()


# -- retention -----------------------------------------------------------------------------------------


def prune(layout: PvcLayout, model: str, *, keep: int, also_keep: set[int] | None = None) -> list[int]:
    """Keep the promoted, the previous and the ``keep`` newest versions; move the rest out, then delete.

    Must run under the model's lock. A version leaves repository/ by rename (atomic for Triton), and
    its record is removed last, so an interrupted prune is finished by the next one.
    """
    versions = layout.published_versions(model)
    protected = (layout.deployment(model).protected | set(also_keep or ())
                 | set(sorted(versions)[-keep:] if keep > 0 else []))
    pruned = []
    for version in versions:
        if version in protected:
            continue
        record = layout.publish_record(model, version)
        if record is None:
            continue  # gone since it was listed
        layout.write_publish_record(replace(record, status="pruning"))
        for triton_model in record.triton_models:
            path = layout.version_dir(triton_model, version)
            if path.exists():
                layout.move_to_trash(path, f"{triton_model}-{version}-pruned")
        layout.remove_publish_record(model, version)
        pruned.append(version)
        log.info("pruned %s v%d (%s)", model, version, ", ".join(record.triton_models))
    layout.empty_trash()
    return pruned
