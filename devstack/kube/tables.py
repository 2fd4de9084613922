"""Server-side printing: meta.k8s.io/v1 Tables for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``.

``kubectl get`` asks for a Table and prints its cells; without one it falls back to NAME and AGE. The
columns and cell values follow upstream kubernetes pkg/printers/internalversion/printers.go (printPod,
printEvent, printPersistentVolumeClaim, printSecret, printStorageClass, ...); the server fills every
column, kubectl hides those with priority 1 unless ``-o wide`` (staging/.../apiserver/pkg/registry/rest
/table.go and the printers' GenerateOptions{Wide: true}). A pod's RESTARTS reads "N (AGE ago)" from the
latest lastState.terminated.finishedAt once a container restarted, as printPod does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .store import Obj

TABLE_MEDIA = "as=Table"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


def wants_table(accept: str) -> bool:
    """True when the client's first acceptable type is a meta.k8s.io/v1 Table (what kubectl get sends)."""
    for media in accept.split(","):
        params = {p.strip() for p in media.split(";")[1:]}
        if {"as=Table", "g=meta.k8s.io", "v=v1"} <= params:
            return True
    return False


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def since(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return human_duration((datetime.now(UTC) - when).total_seconds())


def _col(name: str, type_: str = "string", priority: int = 0, fmt: str = "") -> Obj:
    return {"name": name, "type": type_, "format": fmt, "description": "", "priority": priority}


NAME = _col("Name", fmt="name")
AGE = _col("Age")


def _pod_cells(pod: Obj) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or ""
    restarts = 0
    last_restart = ""  # the latest lastState.terminated.finishedAt: RESTARTS prints "N (AGE ago)" from it
    initializing = False
    init_specs = spec.get("initContainers") or []
    for i, st in enumerate(status.get("initContainerStatuses") or []):
        state = st.get("state") or {}
        restarts += int(st.get("restartCount") or 0)
        last_restart = max(last_restart, _last_finished(st))
        term, wait = state.get("terminated"), state.get("waiting")
        if term is not None and term.get("exitCode") == 0:
            continue
        if term is not None:
            reason = "Init:" + term["reason"] if term.get("reason") else (
                f"Init:Signal:{term['signal']}" if term.get("signal") else f"Init:ExitCode:{term.get('exitCode')}")
        elif wait is not None and wait.get("reason") and wait.get("reason") != "PodInitializing":
            reason = "Init:" + wait["reason"]
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        initializing = True
        break
    ready = 0
    initialized = any(c.get("type") == "Initialized" and c.get("status") == "True"
                      for c in status.get("conditions") or [])
    if not initializing or initialized:
        restarts, has_running, last_restart = 0, False, ""
        for st in reversed(status.get("containerStatuses") or []):
            state = st.get("state") or {}
            restarts += int(st.get("restartCount") or 0)
            last_restart = max(last_restart, _last_finished(st))
            term, wait = state.get("terminated"), state.get("waiting")
            if wait is not None and wait.get("reason"):
                reason = wait["reason"]
            elif term is not None and term.get("reason"):
                reason = term["reason"]
            elif term is not None:
                reason = f"Signal:{term['signal']}" if term.get("signal") else f"ExitCode:{term.get('exitCode')}"
            elif st.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            ready_cond = any(c.get("type") == "Ready" and c.get("status") == "True"
                             for c in status.get("conditions") or [])
            reason = "Running" if ready_cond else "NotReady"
    if (pod.get("metadata") or {}).get("deletionTimestamp") and status.get("phase") not in ("Succeeded", "Failed"):
        reason = "Terminating"
    ips = status.get("podIPs") or []
    gates = spec.get("readinessGates") or []
    if gates:
        true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
        gate_text = f"{sum(1 for g in gates if g.get('conditionType') in true)}/{len(gates)}"
    else:
        gate_text = "<none>"
    restarts_text = f"{restarts} ({since(last_restart)} ago)" if restarts and last_restart else str(restarts)
    return [pod["metadata"]["name"], f"{ready}/{len(spec.get('containers') or [])}", reason, restarts_text,
            since(pod["metadata"].get("creationTimestamp")),
            (ips[0].get("ip") if ips else "") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", gate_text]


def _last_finished(st: Obj) -> str:
    # RFC 3339 UTC stamps of one format compare as text.
    return str((((st.get("lastState") or {}).get("terminated") or {}).get("finishedAt")) or "")


def _event_cells(ev: Obj) -> list[Any]:
    obj = ev.get("involvedObject") or {}
    last = ev.get("lastTimestamp") or ev.get("eventTime") or (ev.get("metadata") or {}).get("creationTimestamp")
    first = ev.get("firstTimestamp") or ev.get("eventTime")
    source = (ev.get("source") or {}).get("component") or ev.get("reportingComponent") or ""
    host = (ev.get("source") or {}).get("host")
    return [since(last), ev.get("type", ""), ev.get("reason", ""),
            f"{(obj.get('kind') or '').lower()}/{obj.get('name', '')}", obj.get("fieldPath", ""),
            f"{source}, {host}" if host else source, (ev.get("message") or "").strip(), since(first),
            str(ev.get("count") or 1), ev["metadata"]["name"]]


def _pvc_cells(pvc: Obj) -> list[Any]:
    spec, status = pvc.get("spec") or {}, pvc.get("status") or {}
    phase = status.get("phase", "")
    if (pvc.get("metadata") or {}).get("deletionTimestamp"):
        phase = "Terminating"
    bound = phase == "Bound"
    modes = ",".join(_short_mode(m) for m in status.get("accessModes") or []) if bound else ""
    capacity = (status.get("capacity") or {}).get("storage", "") if bound else ""
    return [pvc["metadata"]["name"], phase, spec.get("volumeName", ""), capacity, modes,
            spec.get("storageClassName") or "", "<unset>", since(pvc["metadata"].get("creationTimestamp")),
            spec.get("volumeMode", "Filesystem")]


def _short_mode(mode: str) -> str:
    # pkg/apis/core/helper GetAccessModesAsString
    return {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX",
            "ReadWriteOncePod": "RWOP"}.get(mode, mode)


def _storage_class_cells(sc: Obj) -> list[Any]:
    name = sc["metadata"]["name"]
    if (sc["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true":
        name += " (default)"
    return [name, sc.get("provisioner", ""), sc.get("reclaimPolicy") or "Delete",
            sc.get("volumeBindingMode") or "Immediate", str(bool(sc.get("allowVolumeExpansion"))).lower(),
            since(sc["metadata"].get("creationTimestamp"))]


def _node_cells(node: Obj) -> list[Any]:
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (node.get("status") or {}).get("conditions") or [])
    roles = sorted(k.removeprefix("node-role.kubernetes.io/") for k in (node["metadata"].get("labels") or {})
                   if k.startswith("node-role.kubernetes.io/"))
    info = (node.get("status") or {}).get("nodeInfo") or {}
    return [node["metadata"]["name"], "Ready" if ready else "NotReady", ",".join(roles) or "<none>",
            since(node["metadata"].get("creationTimestamp")), info.get("kubeletVersion", "")]


def _has_condition(obj: Obj, type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def _pod_template_wide(template: Obj) -> list[str]:
    containers = ((template or {}).get("spec") or {}).get("containers") or []
    return [",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)]


def _selector_text(selector: Obj | None) -> str:
    # metav1.FormatLabelSelector for matchLabels (matchExpressions as "key op (values)")
    if not selector:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        parts.append(f"{e.get('key')} {str(e.get('operator', '')).lower()} ({','.join(e.get('values') or [])})")
    return ",".join(parts) or "<none>"


def _job_cells(job: Obj) -> list[Any]:
    """printJob (1.32): STATUS Complete / Failed / Terminating / Suspended / FailureTarget / SuccessCriteriaMet
    / Running; COMPLETIONS succeeded/completions (or "/1 of <parallelism>" without completions)."""
    spec, status = job.get("spec") or {}, job.get("status") or {}
    succeeded = int(status.get("succeeded") or 0)
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    elif int(spec.get("parallelism") or 0) > 1:
        completions = f"{succeeded}/1 of {spec['parallelism']}"
    else:
        completions = f"{succeeded}/1"
    start, end = status.get("startTime"), status.get("completionTime")
    if not start:
        duration = ""
    elif not end:
        duration = since(start)
    else:
        def parse(t: str) -> datetime:
            return datetime.fromisoformat(t.replace("Z", "+00:00"))
        duration = human_duration((parse(end) - parse(start)).total_seconds())
    if _has_condition(job, "Complete"):
        state = "Complete"
    elif _has_condition(job, "Failed"):
        state = "Failed"
    elif (job.get("metadata") or {}).get("deletionTimestamp"):
        state = "Terminating"
    elif _has_condition(job, "Suspended"):
        state = "Suspended"
    elif _has_condition(job, "FailureTarget"):
        state = "FailureTarget"
    elif _has_condition(job, "SuccessCriteriaMet"):
        state = "SuccessCriteriaMet"
    else:
        state = "Running"
    return [job["metadata"]["name"], state, completions, duration, since(job["metadata"].get("creationTimestamp")),
            *_pod_template_wide(spec.get("template") or {}), _selector_text(spec.get("selector"))]


def _cronjob_cells(cj: Obj) -> list[Any]:
    """printCronJob: TIMEZONE <none> when unset, SUSPEND True / False, LAST SCHEDULE <none> before the first."""
    spec, status = cj.get("spec") or {}, cj.get("status") or {}
    last = status.get("lastScheduleTime")
    job_spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return [cj["metadata"]["name"], spec.get("schedule", ""), spec.get("timeZone") or "<none>",
            "True" if spec.get("suspend") else "False", len(status.get("active") or []),
            since(last) if last else "<none>", since(cj["metadata"].get("creationTimestamp")),
            *_pod_template_wide(job_spec.get("template") or {}), _selector_text(job_spec.get("selector"))]


def _data_count(obj: Obj) -> int:
    return len(obj.get("data") or {}) + len(obj.get("binaryData") or {})


# resource -> (columns, cells)
PRINTERS: dict[str, tuple[list[Obj], Callable[[Obj], list[Any]]]] = {
    "pods": ([NAME, _col("Ready"), _col("Status"), _col("Restarts"), AGE, _col("IP", priority=1),
              _col("Node", priority=1), _col("Nominated Node", priority=1), _col("Readiness Gates", priority=1)],
             _pod_cells),
    "events": ([_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Subobject", priority=1),
                _col("Source", priority=1), _col("Message"), _col("First Seen", priority=1),
                _col("Count", priority=1), _col("Name", priority=1, fmt="name")], _event_cells),
    "persistentvolumeclaims": ([NAME, _col("Status"), _col("Volume"), _col("Capacity"), _col("Access Modes"),
                                _col("StorageClass"), _col("VolumeAttributesClass", priority=1), AGE,
                                _col("VolumeMode", priority=1)], _pvc_cells),
    "secrets": ([NAME, _col("Type"), _col("Data", "integer"), AGE],
                lambda o: [o["metadata"]["name"], o.get("type", "Opaque"), _data_count(o),
                           since(o["metadata"].get("creationTimestamp"))]),
    "configmaps": ([NAME, _col("Data", "integer"), AGE],
                   lambda o: [o["metadata"]["name"], _data_count(o), since(o["metadata"].get("creationTimestamp"))]),
    "serviceaccounts": ([NAME, _col("Secrets", "integer"), AGE],
                        lambda o: [o["metadata"]["name"], len(o.get("secrets") or []),
                                   since(o["metadata"].get("creationTimestamp"))]),
    "namespaces": ([NAME, _col("Status"), AGE],
                   lambda o: [o["metadata"]["name"], (o.get("status") or {}).get("phase", ""),
                              since(o["metadata"].get("creationTimestamp"))]),
    "nodes": ([NAME, _col("Status"), _col("Roles"), AGE, _col("Version")], _node_cells),
    "jobs": ([NAME, _col("Status"), _col("Completions"), _col("Duration"), AGE, _col("Containers", priority=1),
              _col("Images", priority=1), _col("Selector", priority=1)], _job_cells),
    "cronjobs": ([NAME, _col("Schedule"), _col("Timezone"), _col("Suspend"), _col("Active", "integer"),
                  _col("Last Schedule"), AGE, _col("Containers", priority=1), _col("Images", priority=1),
                  _col("Selector", priority=1)], _cronjob_cells),
    "storageclasses": ([NAME, _col("Provisioner"), _col("ReclaimPolicy"), _col("VolumeBindingMode"),
                        _col("AllowVolumeExpansion"), AGE], _storage_class_cells),
}


def _binding_cells(b: Obj) -> list[Any]:
    """printRoleBinding / printClusterRoleBinding: ROLE is kind/name; users, groups, ns:name of SAs."""
    subjects = b.get("subjects") or []

    def of(kind: str) -> str:
        return ", ".join(s.get("name", "") if kind != "ServiceAccount" else
                         f"{s.get('namespace') or b['metadata'].get('namespace', '')}:{s.get('name', '')}"
                         for s in subjects if s.get("kind") == kind)
    ref = b.get("roleRef") or {}
    return [b["metadata"]["name"], f"{ref.get('kind', '')}/{ref.get('name', '')}",
            since(b["metadata"].get("creationTimestamp")), of("User"), of("Group"), of("ServiceAccount")]


# printRole / printClusterRole (Name, Created At) and the bindings' columns.
_ROLE = ([NAME, _col("Created At", "date")],
         lambda o: [o["metadata"]["name"], o["metadata"].get("creationTimestamp", "")])
_BINDING = ([NAME, _col("Role"), AGE, _col("Users", priority=1), _col("Groups", priority=1),
             _col("ServiceAccounts", priority=1)], _binding_cells)
PRINTERS.update({"roles": _ROLE, "clusterroles": _ROLE, "rolebindings": _BINDING, "clusterrolebindings": _BINDING})


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def table(resource: str, items: list[Obj], resource_version: str, include: str = "Metadata",
          with_columns: bool = True) -> Obj:
    """A Table of items; include is the includeObject query parameter (None / Metadata / Object)."""
    columns, cells = PRINTERS.get(resource, ([NAME, AGE], lambda o: [
        o["metadata"]["name"], since(o["metadata"].get("creationTimestamp"))]))
    rows = []
    for obj in items:
        row: Obj = {"cells": cells(obj)}
        ref = _row_object(obj, include or "Metadata")
        if ref is not None:
            row["object"] = ref
        rows.append(row)
    out: Obj = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
                "rows": rows}
    if with_columns:
        out["columnDefinitions"] = columns
    return out
