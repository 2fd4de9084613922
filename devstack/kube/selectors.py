"""Label selectors (=, ==, !=, in, notin, exists, !exists) and field selectors (=, ==, !=) as the API
server parses them, with the per-resource field whitelist that makes a typo a 400 instead of a silent
empty list.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .store import ApiError

Matcher = Callable[[dict[str, Any]], bool]

_COMMON_FIELDS = {"metadata.name", "metadata.namespace"}
FIELDS: dict[str, set[str]] = {
    "pods": _COMMON_FIELDS | {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                              "spec.serviceAccountName", "status.phase", "status.podIP", "status.nominatedNodeName"},
    "events": _COMMON_FIELDS | {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                                "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                                "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"},
    "secrets": _COMMON_FIELDS | {"type"},
    "namespaces": _COMMON_FIELDS | {"status.phase"},
    "nodes": _COMMON_FIELDS | {"spec.unschedulable"},
}

_REQ = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<val>[A-Za-z0-9._-]*)|\s+(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?\s*$"
)


def _split(text: str) -> list[str]:
    """Split on commas that are not inside a (...) value set."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def label_matcher(selector: str | None) -> Matcher:
    if not selector:
        return lambda obj: True
    reqs: list[Callable[[dict[str, str]], bool]] = []
    for raw in _split(selector):
        m = _REQ.match(raw)
        if not m or (m["neg"] and (m["op"] or m["setop"])):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {raw.strip()!r}")
        key = m["key"]
        if m["neg"]:
            reqs.append(lambda labels, k=key: k not in labels)
        elif m["op"] in ("=", "=="):
            reqs.append(lambda labels, k=key, v=m["val"]: labels.get(k) == v)
        elif m["op"] == "!=":
            reqs.append(lambda labels, k=key, v=m["val"]: labels.get(k) != v)
        elif m["setop"]:
            values = {v.strip() for v in m["set"].split(",") if v.strip()}
            if m["setop"] == "in":
                reqs.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                reqs.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        else:
            reqs.append(lambda labels, k=key: k in labels)
    return lambda obj: all(r(obj.get("metadata", {}).get("labels") or {}) for r in reqs)


def field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return str(cur).lower()
    if isinstance(cur, dict):  # e.g. events' `source` is an object; its component is what is meant
        return str(cur.get("component", ""))
    return str(cur)


def field_matcher(resource: str, selector: str | None) -> Matcher:
    if not selector:
        return lambda obj: True
    allowed = FIELDS.get(resource, _COMMON_FIELDS)
    reqs: list[Matcher] = []
    for raw in selector.split(","):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {raw.strip()!r}")
        path, op, value = m.groups()
        if path not in allowed:
            raise ApiError(400, "BadRequest", f'field label not supported: "{path}" for {resource}')
        if op == "!=":
            reqs.append(lambda obj, p=path, v=value: field_value(obj, p) != v)
        else:
            reqs.append(lambda obj, p=path, v=value: field_value(obj, p) == v)
    return lambda obj: all(r(obj) for r in reqs)
