"""Publish a release to S3 the one correct way: every file first, manifest.json last.

Consumers treat a release as complete only once manifest.json exists, so a producer that dies
half-way leaves an incomplete prefix that nothing deploys. Releases are immutable: publishing over an
existing manifest is refused. With a signing key, manifest.json.sig (signing.py) is written just before
the manifest, so a complete release is always a signed one.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from triton_rollout.errors import ConfigError
from triton_rollout.release.manifest import DEFAULT_PART_SIZE, Compat, Manifest, build_manifest
from triton_rollout.release.progress import Progress
from triton_rollout.release.s3 import ReleaseUri, make_client, raise_translated
from triton_rollout.release.signing import SIGNATURE_NAME, SigningKey

log = logging.getLogger(__name__)


def publish_release(
    src: str | os.PathLike[str],
    release_uri: str | ReleaseUri,
    *,
    kind: str = "engine",
    source: str = "",
    created_at: datetime | None = None,
    compat: Compat | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    extra: dict[str, Any] | None = None,
    client: Any = None,
    concurrency: int = 8,
    overwrite: bool = False,
    signing_key: SigningKey | None = None,
) -> Manifest:
    """``signing_key``: sign manifest.json with it (signing.py); the signature is written before the
    manifest, so a release that is complete is signed."""
    release = release_uri if isinstance(release_uri, ReleaseUri) else ReleaseUri.parse(release_uri)
    src_path = Path(src)
    if not src_path.is_dir():
        raise ConfigError(f"release source {src_path} is not a directory")
    if (src_path / SIGNATURE_NAME).exists():
        raise ConfigError(f"{src_path / SIGNATURE_NAME}: a release's {SIGNATURE_NAME} is written by publish itself",
                          hint="remove it from the source directory (sign with --signing-key instead)")
    manifest = build_manifest(
        src_path, model=release.model, version=release.version, kind=kind, source=source or str(src_path),
        created_at=created_at, compat=compat, part_size=part_size, extra=extra,
    )
    if kind == "engine":
        manifest.require_servable()
    client = client or make_client(max_pool_connections=concurrency + 2)
    if not overwrite and _exists(client, release.bucket, release.manifest_key):
        raise ConfigError(
            f"release {release} already exists (manifest.json present); releases are immutable",
            hint="publish a new version number instead",
        )
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024,
                            max_concurrency=4, use_threads=True)
    progress = Progress(f"publish {release}", manifest.total_size, len(manifest.files)).start()

    def upload(entry_path: str) -> None:
        key = release.file_key(entry_path)
        try:
            client.upload_file(str(src_path / entry_path), release.bucket, key, Config=config,
                               Callback=progress.add)
        except Exception as exc:
            raise_translated(exc, release.bucket, key)
            raise
        progress.file_done()

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(upload, [f.path for f in manifest.files]))
    finally:
        progress.stop()
    body = manifest.to_json()
    if signing_key is not None:
        # Before the manifest: once the release is complete, its signature is there too. It signs these
        # exact bytes, the ones uploaded next.
        _put(client, release.bucket, release.signature_key, signing_key.signature_document(body))
    elif overwrite:
        # An unsigned re-publish must not leave a stale signature of the old manifest behind.
        _delete(client, release.bucket, release.signature_key)
    # Last: its presence is what makes the release complete.
    _put(client, release.bucket, release.manifest_key, body)
    signed = f", signed by key {signing_key.public_key.key_id}" if signing_key else ", unsigned"
    log.info("published %s: %d files, %d bytes, manifest written last%s", release, len(manifest.files),
             manifest.total_size, signed)
    return manifest


def _put(client: Any, bucket: str, key: str, body: bytes) -> None:
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    except Exception as exc:
        raise_translated(exc, bucket, key)
        raise


def _delete(client: Any, bucket: str, key: str) -> None:
    try:
        client.delete_object(Bucket=bucket, Key=key)  # S3 answers 204 for an absent key too
    except Exception as exc:
        raise_translated(exc, bucket, key)
        raise


def _exists(client: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if isinstance(exc, ClientError) and exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return False
        raise_translated(exc, bucket, key)  # an unreachable endpoint included
        raise
    return True
