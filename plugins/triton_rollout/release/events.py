"""S3 event notifications, read: which objects were created, and which release versions they complete.

S3 sends a JSON document per notification (``Records[].s3.bucket.name``, ``Records[].s3.object.key``,
``eventName``, ``eventTime``); one SQS message carries one document, and one Airflow asset event carries a
batch of SQS messages. Keys arrive URL-encoded (a space as ``+``), as S3 documents for its event format.
Anything else on the queue (S3's ``s3:TestEvent`` when a notification is configured, a stray message) is
not a release event and is counted, never an error: the deploy run then checks S3 itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote_plus

from .manifest import MANIFEST_NAME


@dataclass(frozen=True)
class ObjectCreated:
    """One S3 notification record: an object created in a bucket."""

    bucket: str
    key: str
    event_name: str
    event_time: datetime | None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def release_version(self, bucket: str, model_key: str) -> int | None:
        """The version whose manifest.json this object is, for releases listed under ``model_key``
        (``<prefix>/<model>``) in ``bucket``; None for any other object."""
        head, _, version = self.key.removesuffix("/" + MANIFEST_NAME).rpartition("/")
        if self.bucket != bucket or not self.key.endswith("/" + MANIFEST_NAME) or head != model_key.strip("/"):
            return None
        return int(version) if version.isdigit() and int(version) > 0 else None


@dataclass(frozen=True)
class EventBatch:
    """What a batch of SQS message bodies held: the S3 records, and how many messages were something else."""

    records: tuple[ObjectCreated, ...]
    ignored: int

    def versions(self, bucket: str, model_key: str) -> list[int]:
        """The release versions these records complete, newest first, each once."""
        found = {v for r in self.records if (v := r.release_version(bucket, model_key)) is not None}
        return sorted(found, reverse=True)

    def describe(self, bucket: str, model_key: str) -> str:
        if not self.records:
            return f"no S3 records ({self.ignored} other message(s), e.g. s3:TestEvent)"
        parts = []
        for r in self.records:
            v = r.release_version(bucket, model_key)
            when = r.event_time.isoformat() if r.event_time else "unknown time"
            parts.append(f"{r.uri} ({r.event_name} at {when}{f', v{v}' if v else ', not a release manifest'})")
        return "; ".join(parts) + (f"; {self.ignored} other message(s)" if self.ignored else "")


def parse_bodies(bodies: Iterable[str]) -> EventBatch:
    records: list[ObjectCreated] = []
    ignored = 0
    for body in bodies:
        try:
            doc = json.loads(body)
        except (TypeError, ValueError):
            ignored += 1
            continue
        found = _records(doc)
        if not found:
            ignored += 1
        records.extend(found)
    return EventBatch(records=tuple(records), ignored=ignored)


def _records(doc: object) -> list[ObjectCreated]:
    if not isinstance(doc, dict) or not isinstance(doc.get("Records"), list):
        return []
    out = []
    for rec in doc["Records"]:
        s3 = rec.get("s3") if isinstance(rec, dict) else None
        if not isinstance(s3, dict) or not str(rec.get("eventName", "")).startswith("ObjectCreated"):
            continue
        bucket = (s3.get("bucket") or {}).get("name")
        key = (s3.get("object") or {}).get("key")
        if isinstance(bucket, str) and isinstance(key, str):
            out.append(ObjectCreated(bucket=bucket, key=unquote_plus(key), event_name=str(rec["eventName"]),
                                     event_time=_time(rec.get("eventTime"))))
    return out


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
