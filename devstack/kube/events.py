"""Event objects about a pod, as the scheduler and the kubelet record them (``kubectl describe`` reads these)."""

from __future__ import annotations

import contextlib
import uuid

from .store import Obj, Store, now_iso


def record_pod_event(store: Store, pod: Obj, type_: str, reason: str, message: str, *, component: str = "kubelet",
                     field_path: str | None = None) -> None:
    meta = pod["metadata"]
    ts = now_iso()
    obj: Obj = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
        "involvedObject": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                           "uid": meta["uid"], "apiVersion": "v1",
                           "resourceVersion": meta.get("resourceVersion", "")},
        "reason": reason, "message": message, "type": type_, "count": 1,
        "source": {"component": component}, "firstTimestamp": ts, "lastTimestamp": ts,
        "reportingComponent": component, "reportingInstance": "",
    }
    if field_path:
        obj["involvedObject"]["fieldPath"] = field_path
    with contextlib.suppress(Exception):  # the namespace may be going away with the pod
        store.create("events", meta["namespace"], obj)
