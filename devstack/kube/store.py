"""The emulator's object store: objects by (resource, namespace, name), one resourceVersion counter,
and an event history that watches replay from a given resourceVersion, as etcd + the watch cache do.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (resource plural, namespace or "", name)

HISTORY = 20000  # watch events kept; older resourceVersions get 410 Gone, as on a real server
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# RBAC objects' names are path segments (pkg/apis/rbac/validation ValidateRBACName): "system:discovery".
PATH_SEGMENT_NAMES = {"roles", "rolebindings", "clusterroles", "clusterrolebindings"}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """Becomes a v1 Status response with this code and reason."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code}


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str  # ADDED / MODIFIED / DELETED
    resource: str
    namespace: str
    obj: Obj
    old: Obj | None


class Store:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._objects: dict[Key, Obj] = {}
        self._rv = 1
        self._history: deque[WatchEvent] = deque(maxlen=HISTORY)
        self._watch_floor = 0  # watches from before this resourceVersion are 410 Gone (reset_watch_cache)

    @property
    def resource_version(self) -> int:
        with self.cond:
            return self._rv

    def oldest_watchable(self) -> int:
        with self.cond:
            return max(self._watch_floor, self._history[0].rv - 1 if len(self._history) == HISTORY else 0)

    def reset_watch_cache(self) -> None:
        """An API server restarted (restart.py): its watch cache starts from the objects at the current
        resourceVersion, with no history before it (etcd keeps objects, the cacher's events are gone), so a watch
        resuming from an older resourceVersion is 410 Gone and its client re-lists."""
        with self.cond:
            self._history.clear()
            self._watch_floor = self._rv
            self.cond.notify_all()

    def _record(self, type_: str, key: Key, obj: Obj, old: Obj | None) -> None:
        self._history.append(WatchEvent(self._rv, type_, key[0], key[1], copy.deepcopy(obj), old))
        self.cond.notify_all()

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        with self.cond:
            obj = self._objects.get((resource, namespace, name))
            if obj is None:
                raise not_found(resource, name)
            return copy.deepcopy(obj)

    def find(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self.cond:
            obj = self._objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None) -> tuple[list[Obj], int]:
        """Objects of a resource (all namespaces when namespace is None) and the list's resourceVersion."""
        with self.cond:
            items = [copy.deepcopy(o) for (r, ns, _), o in sorted(self._objects.items())
                     if r == resource and (namespace is None or ns == namespace)]
            return items, self._rv

    def create(self, resource: str, namespace: str, obj: Obj, *, uid: str | None = None,
               dry_run: bool = False) -> Obj:
        """Store a new object; with dry_run, every check and default but nothing stored (dryRun=All)."""
        meta = obj.setdefault("metadata", {})
        with self.cond:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid",
                               f"{resource}: metadata.name: Required value: name or generateName is required")
            if resource in PATH_SEGMENT_NAMES:
                if name in (".", "..") or "/" in name or "%" in name:
                    raise ApiError(422, "Invalid", f'{resource} "{name}" is invalid: metadata.name: Invalid '
                                   f"value: {name!r}: may not contain '/' or '%', nor be '.' or '..'")
            elif len(name) > 253 or not _NAME.match(name):
                raise ApiError(422, "Invalid", f'{resource} "{name}" is invalid: metadata.name: Invalid value: '
                               "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                               "characters, '-' or '.'")
            key = (resource, namespace, name)
            if key in self._objects:
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists',
                               {"name": name, "kind": resource})
            if namespace:
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
            meta["uid"] = uid or str(uuid.uuid4())
            meta["creationTimestamp"] = now_iso()
            meta.setdefault("generation", 1)
            if dry_run:
                return copy.deepcopy(obj)  # nothing written, so no resourceVersion to give it
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._objects[key] = obj
            self._record("ADDED", key, obj, None)
            return copy.deepcopy(obj)

    def replace(self, resource: str, namespace: str, name: str, obj: Obj, *, check_rv: bool = False,
                dry_run: bool = False) -> Obj:
        """Store a new version of an existing object (uid, creation time kept)."""
        key = (resource, namespace, name)
        with self.cond:
            old = self._objects.get(key)
            if old is None:
                raise not_found(resource, name)
            meta = obj.setdefault("metadata", {})
            sent_rv = meta.get("resourceVersion")
            if check_rv and sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": the object '
                               "has been modified; please apply your changes to the latest version and try again")
            for keep in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp",
                         "deletionGracePeriodSeconds"):
                if keep in old["metadata"]:
                    meta[keep] = old["metadata"][keep]
            if obj == old:
                return copy.deepcopy(old)  # a no-op write does not bump the resourceVersion
            if dry_run:
                return copy.deepcopy(obj)
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._objects[key] = obj
            self._record("MODIFIED", key, obj, copy.deepcopy(old))
            return copy.deepcopy(obj)

    def mutate(self, resource: str, namespace: str, name: str, fn: Any) -> Obj | None:
        """Apply fn(obj) under the lock (for the kubelet's status writes); None if the object is gone."""
        with self.cond:
            current = self._objects.get((resource, namespace, name))
            if current is None:
                return None
            new = copy.deepcopy(current)
            fn(new)
            return self.replace(resource, namespace, name, new)

    def delete(self, resource: str, namespace: str, name: str) -> Obj:
        key = (resource, namespace, name)
        with self.cond:
            obj = self._objects.pop(key, None)
            if obj is None:
                raise not_found(resource, name)
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._record("DELETED", key, obj, None)
            return copy.deepcopy(obj)

    def events_since(self, rv: int, resource: str) -> list[WatchEvent]:
        with self.cond:
            oldest = self._history[0].rv - 1 if self._history else self._watch_floor
            if rv < self._watch_floor or (self._history and rv < oldest):
                raise ApiError(410, "Expired", f"too old resource version: {rv} ({max(oldest, self._watch_floor)})")
            return [e for e in self._history if e.rv > rv and e.resource == resource]

    def wait(self, rv: int, timeout: float) -> None:
        """Block until the store moves past rv or timeout passes."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self._rv <= rv:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(left)
