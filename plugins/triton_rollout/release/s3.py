"""S3 addressing and the one place that talks to S3 for metadata (URIs, client, errors, listings).

The endpoint and credentials come from the standard AWS environment (AWS_ENDPOINT_URL included), so
the same code reaches AWS, SeaweedFS or any S3-compatible store without flags.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from triton_rollout.errors import (
    BucketNotFound,
    ConfigError,
    IntegrityError,
    ManifestError,
    ReleaseIncomplete,
    ReleaseNotFound,
    RolloutError,
    S3AccessDenied,
    SignatureError,
    TransferError,
)
from triton_rollout.release.manifest import (
    MANIFEST_MAX_BYTES,
    MANIFEST_NAME,
    Manifest,
    parse_manifest,
    parse_version,
    validate_name,
)
from triton_rollout.release.signing import SIGNATURE_MAX_BYTES, SIGNATURE_NAME, PublicKey, verify_manifest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # pragma: no cover
else:
    S3Client = Any

log = logging.getLogger(__name__)

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
        if not _BUCKET.fullmatch(bucket):
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

    @classmethod
    def under(cls, prefix: str, model: str, version: int) -> ReleaseUri:
        """Release ``version`` of ``model`` under ``prefix`` (s3://BUCKET[/PREFIX]), validated like a parsed URI."""
        return cls.parse(f"{prefix.rstrip('/')}/{model}/{version}")

    @property
    def key(self) -> str:
        return "/".join(p for p in (self.prefix, self.model, str(self.version)) if p)

    @property
    def model_key(self) -> str:
        return "/".join(p for p in (self.prefix, self.model) if p)

    def file_key(self, rel: str) -> str:
        return f"{self.key}/{rel}"

    def engine_release(self, engine_prefix: str | None = None) -> ReleaseUri:
        """Where the engine built from this checkpoint release is published: same bucket, model and
        version under ``engine_prefix`` (default ``<prefix>/engines``), so the two never mix."""
        prefix = engine_prefix if engine_prefix is not None else "/".join(p for p in (self.prefix, "engines") if p)
        return ReleaseUri.parse(f"s3://{self.bucket}/{'/'.join(p for p in (prefix.strip('/'), self.model) if p)}"
                                f"/{self.version}")

    def servable(self, kind: str, engine_prefix: str | None = None) -> ReleaseUri:
        """Where this version's servable engine is: the release itself, or for a checkpoint (``kind``) the
        engine built from it."""
        return self.engine_release(engine_prefix) if kind == "checkpoint" else self

    @property
    def manifest_key(self) -> str:
        return self.file_key(MANIFEST_NAME)

    @property
    def signature_key(self) -> str:
        return self.file_key(SIGNATURE_NAME)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class S3Access:
    """Where S3 is and who signs for it. Each field left None comes from the standard AWS environment
    (pods: a Secret or IRSA); the Airflow side fills them from an Airflow connection (airflow/connections.py).
    ``credentials`` None means botocore's provider chain (profile, web identity / IRSA, instance role)."""

    endpoint_url: str | None = None
    region: str | None = None
    credentials: tuple[str, str, str | None] | None = None  # access key, secret key, session token
    addressing_style: str | None = None

    def __repr__(self) -> str:  # never the keys, wherever this is logged
        return (f"S3Access(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
                f"credentials={'static' if self.credentials else 'chain'}, addressing_style={self.addressing_style!r})")

    @property
    def endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    @property
    def style(self) -> str:
        # Custom endpoints (SeaweedFS, MinIO, on-prem) rarely serve virtual-hosted buckets.
        return (self.addressing_style or os.environ.get("TRITON_ROLLOUT_S3_ADDRESSING")
                or ("path" if self.endpoint else "auto"))

    @property
    def static_keys(self) -> tuple[str, str, str | None] | None:
        if self.credentials:
            return self.credentials
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        return (key, secret, os.environ.get("AWS_SESSION_TOKEN") or None) if key and secret else None

    @property
    def env_region(self) -> str | None:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def make_client(max_pool_connections: int = 16, read_timeout: float = 60.0, access: S3Access | None = None) -> S3Client:
    """A boto3 S3 client (``access``, else the standard AWS environment), with retries on throttling and 5xx."""
    import boto3
    from botocore.config import Config

    access = access or S3Access()
    config = Config(
        retries={"mode": "standard", "max_attempts": 8},
        max_pool_connections=max_pool_connections,
        connect_timeout=10,
        read_timeout=read_timeout,
        s3={"addressing_style": access.style},
        # Newer botocore adds CRC checksums to every PUT; not every S3-compatible store accepts them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    keys = access.credentials
    session = boto3.session.Session(
        aws_access_key_id=keys[0] if keys else None, aws_secret_access_key=keys[1] if keys else None,
        aws_session_token=keys[2] if keys else None, region_name=access.region)
    return session.client("s3", endpoint_url=access.endpoint, config=config)


def s3_error(code: str, status: int | None, bucket: str, key: str) -> RolloutError | None:
    """The error that names an S3 refusal (by error code or HTTP status), or None if it is not ours to name.
    One mapping for both ways the project talks to S3: boto3 calls and the presigned GETs."""
    where = f"s3://{bucket}/{key}"
    if code in _DENIED or status == 403:
        return S3AccessDenied(f"access denied ({code or status}) reading {where}")
    if code == "NoSuchBucket":
        return BucketNotFound(f"bucket {bucket!r} does not exist (while reading {where})")
    if code in _MISSING or status == 404:
        return ReleaseNotFound(f"{where} does not exist")
    return None


def translate_error(exc: Exception, bucket: str, key: str) -> RolloutError | None:
    """Map a botocore error to one that names the bucket and key, or None if it is not ours to name."""
    from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as EndpointUnreachable

    if isinstance(exc, NoCredentialsError):
        return S3AccessDenied(f"no AWS credentials found while reading s3://{bucket}/{key}")
    if isinstance(exc, EndpointUnreachable | HTTPClientError):  # after botocore's own retries
        return TransferError(f"S3 unreachable for s3://{bucket}/{key}: {exc}")
    if not isinstance(exc, ClientError):
        return None
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return s3_error(code, exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"), bucket, key)


def raise_translated(exc: Exception, bucket: str, key: str) -> None:
    mapped = translate_error(exc, bucket, key)
    if mapped is not None:
        raise mapped from exc


def fetch_manifest(release: ReleaseUri, reader: ObjectReader | None = None, *,
                   trusted_keys: Sequence[PublicKey] = ()) -> Manifest:
    """Read and validate a release's manifest; tell an absent release from an unfinished one.

    ``trusted_keys``: when given, the manifest must carry a valid signature by one of them (signing.py),
    checked over the very bytes that are then parsed and returned: one read, no gap between check and use.
    """
    reader = reader or ObjectReader(release.bucket)
    try:
        body = with_retries(f"reading {release}/manifest.json", lambda: reader.get_bytes(release.manifest_key))
    except BucketNotFound:
        raise
    except ReleaseNotFound as exc:
        if with_retries(f"listing {release}/", lambda: reader.key_count(release.key + "/")):
            raise ReleaseIncomplete(
                f"release {release} has files but no manifest.json: the upload is still running or failed"
            ) from exc
        raise ReleaseNotFound(f"release {release} not found (no s3://{release.bucket}/{release.manifest_key})") from exc
    if trusted_keys:
        # Verified before parsing: an untrusted manifest is not even interpreted.
        key_id = verify_manifest(f"release {release}", body, _signature_bytes(release, reader), trusted_keys)
        log.info("release %s: manifest.json signed by trusted key %s", release, key_id)
    manifest = parse_manifest(body)
    if manifest.model != release.model or manifest.version != release.version:
        raise ManifestError(
            f"describes {manifest.model} v{manifest.version} but sits at {release}",
            field="model/version",
            hint="the manifest must match its location; re-publish to the right prefix",
        )
    return manifest


def _signature_bytes(release: ReleaseUri, reader: ObjectReader) -> bytes | None:
    """The release's manifest.json.sig, or None when it has none."""
    try:
        return with_retries(f"reading {release}/{SIGNATURE_NAME}",  # type: ignore[no-any-return]
                            lambda: reader.get_bytes(release.signature_key, limit=SIGNATURE_MAX_BYTES))
    except BucketNotFound:
        raise
    except ReleaseNotFound:
        return None
    except ManifestError as exc:  # over the size limit: not a signature document
        raise SignatureError(f"release {release}: {SIGNATURE_NAME} is not a signature ({exc.message})") from exc


def complete_release(release: ReleaseUri, reader: ObjectReader | None = None) -> Manifest | None:
    """The manifest of ``release`` if it is complete, else None: absent, or files without a manifest (an
    upload, or a build that died mid-publish; both are published again). Used for "is this engine built"."""
    try:
        return fetch_manifest(release, reader)
    except ReleaseNotFound:  # ReleaseIncomplete included
        return None


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


# -- object reads over plain HTTP with presigned URLs ------------------------------------------------
# The sync's hot path. A boto3 client costs ~0.2 s to build and ~2 ms per call in Python; a SigV4
# query signature costs ~70 us, and http.client's readinto streams into our own buffer with no copy.
# Credentials still come from botocore's provider chain (env, profile, web identity / IRSA, IMDS).

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
_CODE_RE = re.compile(rb"<Code>([^<]+)</Code>")
_KEYCOUNT_RE = re.compile(rb"<KeyCount>(\d+)</KeyCount>")


class RetryableError(Exception):
    """A transient failure worth retrying: reset connection, short read, 5xx, throttling."""


def _hmac(key: bytes, msg: str) -> bytes:
    import hashlib
    import hmac

    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_presign(
    url: str, *, access_key: str, secret_key: str, region: str, session_token: str | None = None,
    expires: int = 3600, now: Any = None,
) -> str:
    """Presign a GET of ``url`` (path already URI-encoded) with AWS Signature Version 4, query form.

    Follows the published SigV4 algorithm for S3 (UNSIGNED-PAYLOAD, only ``host`` signed). Used when
    credentials are plain environment variables, which is also what botocore would pick first; it
    saves importing botocore (~0.1 s) on every pod start. Checked against botocore in the tests.
    """
    import hashlib
    from datetime import UTC, datetime
    from urllib.parse import quote, urlsplit

    t = now or datetime.now(UTC)
    amz_date = t.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    parts = urlsplit(url)
    params: list[tuple[str, str]] = []
    if parts.query:
        for item in parts.query.split("&"):
            name, _, value = item.partition("=")
            params.append((name, value))
    signed = [
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", quote(f"{access_key}/{scope}", safe="-_.~")),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if session_token:
        signed.append(("X-Amz-Security-Token", quote(session_token, safe="-_.~")))
    query = "&".join(f"{k}={v}" for k, v in sorted(params + signed))
    host = parts.netloc
    if (parts.scheme, parts.port) in (("http", 80), ("https", 443)):
        host = parts.hostname or host
    canonical = "\n".join(["GET", parts.path or "/", query, f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), day), region), "s3"), "aws4_request")
    import hmac

    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{query}&X-Amz-Signature={signature}"


class ObjectSigner:
    """Builds presigned GET URLs for objects, from ``access`` (else the standard AWS environment).

    Static keys (given, or in the environment) are signed here directly; any other source (profile, web identity /
    IRSA, instance role, SSO) goes through botocore's provider chain, which refreshes them.
    """

    def __init__(self, access: S3Access | None = None) -> None:
        access = access or S3Access()
        self._static = access.static_keys
        region = None
        if self._static is None:
            import botocore.session

            session = botocore.session.get_session()
            self._credentials = session.get_credentials()
            if self._credentials is None:
                raise S3AccessDenied(
                    "no AWS credentials found (environment, profile, web identity or instance role)"
                )
            region = session.get_config_variable("region")
        self.region = access.env_region or region or "us-east-1"
        endpoint = access.endpoint
        self.endpoint = (endpoint or f"https://s3.{self.region}.amazonaws.com").rstrip("/")
        self.virtual = access.style == "virtual" or (access.style == "auto" and not endpoint)

    def url(self, bucket: str, key: str = "", query: str = "") -> str:
        from urllib.parse import quote

        path = quote(key, safe="/-_.~")
        if self.virtual and "." not in bucket:
            scheme, _, host = self.endpoint.partition("://")
            base = f"{scheme}://{bucket}.{host}/{path}"
        else:
            base = f"{self.endpoint}/{bucket}/{path}" if key else f"{self.endpoint}/{bucket}"
        return base + (f"?{query}" if query else "")

    def presign(self, bucket: str, key: str = "", query: str = "", expires: int = 3600) -> str:
        url = self.url(bucket, key, query)
        if self._static is not None:
            access, secret, token = self._static
            return sigv4_presign(url, access_key=access, secret_key=secret, session_token=token,
                                 region=self.region, expires=expires)
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="GET", url=url)
        S3SigV4QueryAuth(self._credentials.get_frozen_credentials(), "s3", self.region, expires=expires).add_auth(
            request
        )
        return request.prepare().url


class ObjectReader:
    """GETs objects and byte ranges; one keep-alive connection per thread per host."""

    def __init__(self, bucket: str, *, signer: ObjectSigner | None = None, timeout: float = 60.0) -> None:
        import threading

        self.bucket = bucket
        self.signer = signer or ObjectSigner()
        self.timeout = timeout
        self._local = threading.local()

    def _conn(self, scheme: str, netloc: str) -> Any:
        import http.client

        conns: dict[tuple[str, str], Any] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get((scheme, netloc))
        if conn is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = cls(netloc, timeout=self.timeout)
            conns[(scheme, netloc)] = conn
        return conn

    def drop(self) -> None:
        """Close this thread's connections (after an error leaves one mid-response)."""
        self._local.__dict__.pop("last", None)
        for conn in self._local.__dict__.pop("conns", {}).values():
            conn.close()

    def plain_socket(self) -> Any:
        """The socket of this thread's last GET when it is plain HTTP (a body can then be spliced from it
        into a file by the kernel), else None (HTTPS, or no connection)."""
        import socket

        sock = getattr(self._local.__dict__.get("last"), "sock", None)
        return sock if type(sock) is socket.socket else None

    def _get(self, key: str, query: str = "", headers: dict[str, str] | None = None) -> Any:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(self.signer.presign(self.bucket, key, query))
        conn = self._conn(parts.scheme, parts.netloc)
        self._local.last = conn
        try:
            conn.request("GET", parts.path + "?" + parts.query, headers=headers or {})
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise RetryableError(f"GET s3://{self.bucket}/{key}: {exc}") from exc

    def _fail(self, resp: Any, key: str) -> RolloutError | RetryableError:
        body = resp.read()
        match = _CODE_RE.search(body)
        code = match.group(1).decode(errors="replace") if match else str(resp.status)
        where = f"s3://{self.bucket}/{key}"
        if resp.status in RETRYABLE_STATUS or code in ("SlowDown", "RequestTimeout", "InternalError"):
            return RetryableError(f"GET {where}: HTTP {resp.status} {code}")
        mapped = s3_error(code, resp.status, self.bucket, key)
        if mapped is not None:
            return mapped
        return TransferError(f"GET {where}: HTTP {resp.status} {code}")

    def open_range(self, key: str, start: int, end: int, size: int) -> Any:
        """A response streaming bytes [start, end) of a ``size``-byte object; read it to the end."""
        ranged = not (start == 0 and end == size)
        resp = self._get(key, headers={"Range": f"bytes={start}-{end - 1}"} if ranged else None)
        if resp.status in (200, 206):
            length = resp.getheader("Content-Length")
            problem = None
            if ranged and resp.status == 200:
                problem = TransferError(f"s3://{self.bucket}/{key}: the server ignored the Range header")
            elif length is not None and int(length) != end - start:
                problem = IntegrityError(
                    f"s3://{self.bucket}/{key} sent {length} bytes for a {end - start}-byte read: the object's "
                    f"size differs from the manifest's {size} bytes; nothing was published"
                )
            if problem is not None:
                resp.close()
                self.drop()
                raise problem
            return resp
        if resp.status == 416:
            raise IntegrityError(f"s3://{self.bucket}/{key} is shorter than the manifest's {size} bytes")
        err = self._fail(resp, key)
        if isinstance(err, ReleaseNotFound):
            raise ReleaseNotFound(
                f"{err.message} although the manifest lists it",
                hint="the release was changed or partly deleted after it was published; re-publish it",
            )
        raise err

    def get_bytes(self, key: str, limit: int = MANIFEST_MAX_BYTES) -> bytes:
        """The whole object, refused (ManifestError) when over ``limit`` bytes: by its Content-Length before a
        byte of the body is read, else (a chunked body) after reading at most one byte past the limit."""
        import http.client

        resp = self._get(key)
        if resp.status != 200:
            raise self._fail(resp, key)
        length = resp.getheader("Content-Length")
        if length is not None and int(length) > limit:
            resp.close()
            self.drop()
            raise ManifestError(f"s3://{self.bucket}/{key} is {length} bytes, over the {limit}-byte limit")
        try:
            body = resp.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:  # reset or cut mid-body
            self.drop()
            raise RetryableError(f"GET s3://{self.bucket}/{key}: {exc!r}") from exc
        if len(body) > limit:
            resp.close()
            self.drop()
            raise ManifestError(f"s3://{self.bucket}/{key} is over the {limit}-byte limit (no Content-Length sent)")
        if length is not None and len(body) != int(length):
            self.drop()
            raise RetryableError(f"GET s3://{self.bucket}/{key}: got {len(body)} of {length} bytes")
        return body

    def key_count(self, prefix: str) -> int:
        """How many keys start with prefix (0 or 1: enough to tell 'absent' from 'incomplete')."""
        from urllib.parse import quote

        resp = self._get("", query=f"list-type=2&max-keys=1&prefix={quote(prefix, safe='')}")
        if resp.status != 200:
            raise self._fail(resp, prefix)
        match = _KEYCOUNT_RE.search(resp.read())
        return int(match.group(1)) if match else 0


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry ``attempt``: exponential, capped at 8 s, jittered so that parallel
    workers throttled together do not come back together."""
    import random

    return min(8.0, 0.2 * 2**attempt) * (0.5 + random.random())


def with_retries(what: str, call: Any, attempts: int = 5) -> Any:
    """Run call() retrying RetryableError with jittered exponential backoff."""
    import time

    for attempt in range(1, attempts + 1):
        try:
            return call()
        except RetryableError as exc:
            if attempt == attempts:
                raise TransferError(f"{what}: giving up after {attempts} attempts: {exc}") from exc
            time.sleep(backoff_delay(attempt))
    raise AssertionError("unreachable")
