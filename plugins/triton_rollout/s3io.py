"""S3 addressing and the one place that talks to S3 for metadata (URIs, client, errors, listings).

The endpoint and credentials come from the standard AWS environment (AWS_ENDPOINT_URL included), so
the same code reaches AWS, SeaweedFS or any S3-compatible store without flags.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ManifestError, ReleaseIncomplete, ReleaseNotFound, RolloutError, S3AccessDenied
from .manifest import MANIFEST_NAME, Manifest, parse_manifest, parse_version, validate_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # pragma: no cover
else:
    S3Client = Any

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "403"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            raise ConfigError(f"not an S3 URI (expected s3://BUCKET/KEY): {uri!r}")
        bucket, _, key = uri[5:].partition("/")
        if not _BUCKET.match(bucket):
            raise ConfigError(f"invalid bucket name {bucket!r} in {uri!r}")
        key = key.rstrip("/")
        segments = key.split("/") if key else []
        if any(s in ("", ".", "..") for s in segments):
            raise ConfigError(f"S3 key {key!r} in {uri!r} has '..', '.' or empty segments (path traversal)")
        return cls(bucket, key)

    def child(self, rel: str) -> str:
        return f"{self.key}/{rel}" if self.key else rel

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ReleaseUri:
    """``s3://BUCKET/PREFIX/MODEL/VERSION``: one immutable release."""

    bucket: str
    prefix: str
    model: str
    version: int

    @classmethod
    def parse(cls, uri: str) -> ReleaseUri:
        s3 = S3Uri.parse(uri)
        segments = s3.key.split("/") if s3.key else []
        if len(segments) < 2:
            raise ConfigError(f"release URI must be s3://BUCKET/[PREFIX/]MODEL/VERSION, got {uri!r}")
        try:
            version = parse_version(segments[-1], field_name="release URI version")
            model = validate_name(segments[-2], field_name="release URI model")
        except ManifestError as exc:
            raise ConfigError(f"{exc.message} (in {uri!r})") from exc
        return cls(s3.bucket, "/".join(segments[:-2]), model, version)

    @property
    def key(self) -> str:
        return "/".join(p for p in (self.prefix, self.model, str(self.version)) if p)

    @property
    def model_key(self) -> str:
        return "/".join(p for p in (self.prefix, self.model) if p)

    def file_key(self, rel: str) -> str:
        return f"{self.key}/{rel}"

    @property
    def manifest_key(self) -> str:
        return self.file_key(MANIFEST_NAME)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def make_client(max_pool_connections: int = 16, read_timeout: float = 60.0) -> S3Client:
    """A boto3 S3 client from the standard AWS environment, with retries on throttling and 5xx."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    # Custom endpoints (SeaweedFS, MinIO, on-prem) rarely serve virtual-hosted buckets.
    style = os.environ.get("TRITON_ROLLOUT_S3_ADDRESSING", "path" if endpoint else "auto")
    config = Config(
        retries={"mode": "standard", "max_attempts": 8},
        max_pool_connections=max_pool_connections,
        connect_timeout=10,
        read_timeout=read_timeout,
        s3={"addressing_style": style},
        # Newer botocore adds CRC checksums to every PUT; not every S3-compatible store accepts them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint, config=config)


def translate_error(exc: Exception, bucket: str, key: str) -> RolloutError | None:
    """Map a botocore error to one that names the bucket and key, or None if it is not ours to name."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return S3AccessDenied(f"no AWS credentials found while reading s3://{bucket}/{key}")
    if not isinstance(exc, ClientError):
        return None
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _DENIED or status == 403:
        return S3AccessDenied(f"access denied ({code or status}) reading s3://{bucket}/{key}")
    if code == "NoSuchBucket":
        return ReleaseNotFound(f"bucket {bucket!r} does not exist (while reading s3://{bucket}/{key})")
    if code in _MISSING or status == 404:
        return ReleaseNotFound(f"s3://{bucket}/{key} does not exist")
    return None


def raise_translated(exc: Exception, bucket: str, key: str) -> None:
    mapped = translate_error(exc, bucket, key)
    if mapped is not None:
        raise mapped from exc


def fetch_manifest(client: S3Client, release: ReleaseUri) -> Manifest:
    """Read and validate a release's manifest; tell an absent release from an unfinished one."""
    try:
        body = client.get_object(Bucket=release.bucket, Key=release.manifest_key)["Body"].read()
    except Exception as exc:
        mapped = translate_error(exc, release.bucket, release.manifest_key)
        if isinstance(mapped, ReleaseNotFound) and "bucket" not in mapped.message:
            listed = client.list_objects_v2(Bucket=release.bucket, Prefix=release.key + "/", MaxKeys=1)
            if listed.get("KeyCount", 0):
                raise ReleaseIncomplete(
                    f"release {release} has files but no manifest.json: the upload is still running or failed"
                ) from exc
            raise ReleaseNotFound(f"release {release} not found (no s3://{release.bucket}/{release.manifest_key})")
        if mapped is not None:
            raise mapped from exc
        raise
    manifest = parse_manifest(body)
    if manifest.model != release.model or manifest.version != release.version:
        raise ManifestError(
            f"describes {manifest.model} v{manifest.version} but sits at {release}",
            field="model/version",
            hint="the manifest must match its location; re-publish to the right prefix",
        )
    return manifest


def list_release_versions(client: S3Client, bucket: str, model_key: str) -> list[int]:
    """Version numbers under ``model_key/`` (complete or not), ascending; non-numeric names ignored."""
    versions: list[int] = []
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=model_key.rstrip("/") + "/", Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                name = cp["Prefix"].rstrip("/").rsplit("/", 1)[-1]
                if name.isdigit() and not name.startswith("0"):
                    versions.append(int(name))
    except Exception as exc:
        raise_translated(exc, bucket, model_key + "/")
        raise
    return sorted(versions)
