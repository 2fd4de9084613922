"""The emulator's API semantics over the store, independent of HTTP (transport.py carries requests here).

The core/v1 subset KubernetesPodOperator and the kubernetes clients use: discovery and /version,
routing /api/v1 paths to (resource, namespace, name, subresource), the verbs with what a real API
server checks and defaults on create / replace / patch / delete (pod validation and defaults, secrets'
stringData, PVC host folders, graceful pod deletion through the kubelet), and JSON merge patch / JSON
patch.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from .events import record_pod_event
from .kubelet import HOST_PATH_ANNOTATION, Kubelet
from .selectors import field_matcher, label_matcher
from .store import ApiError, Obj, Store, now_iso

GIT_VERSION = "v1.31.0"  # what /version reports; the kubernetes client does not gate on it
NAMESPACED = {"pods": "Pod", "persistentvolumeclaims": "PersistentVolumeClaim", "secrets": "Secret",
              "configmaps": "ConfigMap", "serviceaccounts": "ServiceAccount", "events": "Event"}
CLUSTER = {"namespaces": "Namespace", "nodes": "Node"}
SHORT = {"pods": ["po"], "persistentvolumeclaims": ["pvc"], "configmaps": ["cm"], "serviceaccounts": ["sa"],
         "events": ["ev"], "namespaces": ["ns"], "nodes": ["no"]}
READ_ONLY = {"nodes"}  # nodes come from the emulator's config


class Api:
    """Request handling independent of HTTP plumbing."""

    def __init__(self, store: Store, kubelet: Kubelet, pvc_host_paths: dict[str, str]) -> None:
        self.store = store
        self.kubelet = kubelet
        self.pvc_host_paths = pvc_host_paths

    # -- discovery -----------------------------------------------------------------------------------

    @staticmethod
    def discovery(path: str) -> Obj | None:
        if path == "/version":
            return {"major": "1", "minor": "31", "gitVersion": GIT_VERSION, "gitCommit": "devstack",
                    "gitTreeState": "clean", "buildDate": "2024-01-01T00:00:00Z", "goVersion": "n/a",
                    "compiler": "n/a", "platform": "linux/amd64", "emulated": True}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        if path == "/api/v1":
            resources = []
            for plural, kind in {**NAMESPACED, **CLUSTER}.items():
                verbs = ["get", "list", "watch"] if plural in READ_ONLY else \
                    ["create", "delete", "get", "list", "patch", "update", "watch"]
                resources.append({"name": plural, "singularName": kind.lower(), "namespaced": plural in NAMESPACED,
                                  "kind": kind, "verbs": verbs, "shortNames": SHORT.get(plural, [])})
            resources.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
                              "verbs": ["get"]})
            resources.append({"name": "pods/status", "singularName": "", "namespaced": True, "kind": "Pod",
                              "verbs": ["get"]})
            return {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}
        if path in ("/healthz", "/livez", "/readyz"):
            return {"ok": True}
        return None

    # -- routing -------------------------------------------------------------------------------------

    @staticmethod
    def route(path: str) -> tuple[str, str | None, str | None, str | None]:
        """(resource, namespace, name, subresource) from /api/v1/... ."""
        parts = [p for p in path.split("/") if p][2:]
        if not parts:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if parts[0] == "namespaces" and len(parts) >= 3:
            ns, resource, rest = parts[1], parts[2], parts[3:]
            if resource not in NAMESPACED:
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({resource})")
            name = rest[0] if rest else None
            sub = rest[1] if len(rest) > 1 else None
            return resource, ns, name, sub
        resource = parts[0]
        if resource not in NAMESPACED and resource not in CLUSTER:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({resource})")
        name = parts[1] if len(parts) > 1 else None
        if name and resource in NAMESPACED:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return resource, None, name, parts[2] if len(parts) > 2 else None

    def ensure_namespace(self, ns: str | None) -> None:
        if ns and self.store.find("namespaces", "", ns) is None:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})

    # -- verbs ---------------------------------------------------------------------------------------

    def get(self, resource: str, ns: str | None, name: str) -> Obj:
        return self.with_kind(resource, self.store.get(resource, ns or "", name))

    def list(self, resource: str, ns: str | None, q: dict[str, str]) -> Obj:
        labels, fields = label_matcher(q.get("labelSelector")), field_matcher(resource, q.get("fieldSelector"))
        items, rv = self.store.list(resource, ns)
        kind = {**NAMESPACED, **CLUSTER}[resource]
        return {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)},
                "items": [self.with_kind(resource, o) for o in items if labels(o) and fields(o)]}

    def create(self, resource: str, ns: str | None, body: Obj) -> Obj:
        if resource in READ_ONLY:
            raise ApiError(405, "MethodNotAllowed", f"{resource} are defined by the emulator's config")
        self.ensure_namespace(ns)
        body_ns = (body.get("metadata") or {}).get("namespace")
        if ns and body_ns and body_ns != ns:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                           "sent on the request")
        body = copy.deepcopy(body)
        body.pop("status", None)
        body["apiVersion"] = "v1"
        body["kind"] = {**NAMESPACED, **CLUSTER}[resource]
        if resource == "pods":
            self._default_pod(body)
        elif resource == "secrets":
            data = dict(body.get("data") or {})
            for k, v in (body.pop("stringData", None) or {}).items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            body["data"] = data
            body.setdefault("type", "Opaque")
        elif resource == "namespaces":
            body["status"] = {"phase": "Active"}
        elif resource == "persistentvolumeclaims":
            body["status"] = {"phase": "Bound", "accessModes": (body.get("spec") or {}).get("accessModes", []),
                              "capacity": ((body.get("spec") or {}).get("resources") or {}).get("requests", {})}
            name = (body.get("metadata") or {}).get("name", "")
            host = self.pvc_host_paths.get(f"{ns}/{name}") or self.pvc_host_paths.get(name)
            if host:
                body["metadata"].setdefault("annotations", {})[HOST_PATH_ANNOTATION] = host
        return self.with_kind(resource, self.store.create(resource, ns or "", body))

    def _default_pod(self, pod: Obj) -> None:
        spec = pod.get("spec") or {}
        problems = []
        if not spec.get("containers"):
            problems.append("spec.containers: Required value")
        names = set()
        for i, c in enumerate([*(spec.get("initContainers") or []), *(spec.get("containers") or [])]):
            if not c.get("name"):
                problems.append(f"containers[{i}].name: Required value")
            if not c.get("image"):
                problems.append(f"containers[{i}].image: Required value")
            if c.get("name") in names:
                problems.append(f"containers[{i}].name: Duplicate value: {c.get('name')!r}")
            names.add(c.get("name"))
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("imagePullPolicy", "IfNotPresent")
        volumes = {v.get("name") for v in spec.get("volumes") or []}
        for c in spec.get("containers") or []:
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volumes:
                    problems.append(f"volumeMounts[{m.get('name')}]: Not found")
        if problems:
            name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName", "")
            raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: ' + ", ".join(problems))
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
        spec.setdefault("securityContext", {})
        pod["spec"] = spec
        pod["status"] = {"phase": "Pending", "qosClass": "BestEffort"}

    def replace(self, resource: str, ns: str | None, name: str, body: Obj) -> Obj:
        if resource in READ_ONLY:
            raise ApiError(405, "MethodNotAllowed", f"{resource} are defined by the emulator's config")
        current = self.store.get(resource, ns or "", name)
        body = copy.deepcopy(body)
        self._guard_update(resource, current, body)
        return self.with_kind(resource, self.store.replace(resource, ns or "", name, body, check_rv=True))

    def patch(self, resource: str, ns: str | None, name: str, body: Any, content_type: str) -> Obj:
        if resource in READ_ONLY:
            raise ApiError(405, "MethodNotAllowed", f"{resource} are defined by the emulator's config")
        current = self.store.get(resource, ns or "", name)
        if "json-patch" in content_type:
            new = json_patch(current, body)
        elif "merge-patch" in content_type:
            # Strategic merge is applied as a JSON merge patch: list fields are replaced, not merged by key.
            new = merge_patch(current, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format "
                           f"- accepted media types include: application/json-patch+json, "
                           f"application/merge-patch+json, application/strategic-merge-patch+json ({content_type})")
        self._guard_update(resource, current, new)
        return self.with_kind(resource, self.store.replace(resource, ns or "", name, new, check_rv=True))

    @staticmethod
    def _guard_update(resource: str, current: Obj, new: Obj) -> None:
        if resource in ("pods", "namespaces", "persistentvolumeclaims"):
            new["status"] = current.get("status")  # status is a subresource, ignored on the main resource
        if resource == "pods":
            def no_images(spec: Obj) -> Obj:
                spec = copy.deepcopy(spec)
                for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
                    c.pop("image", None)
                return spec
            if no_images(current["spec"]) != no_images(new.get("spec") or {}):
                raise ApiError(422, "Invalid", f'Pod "{current["metadata"]["name"]}" is invalid: spec: Forbidden: '
                               "pod updates may not change fields other than `spec.containers[*].image` "
                               "(the emulator does not apply image changes either)")
            new["spec"] = current["spec"]

    def delete(self, resource: str, ns: str | None, name: str, q: dict[str, str], body: Obj | None) -> Obj:
        if resource in READ_ONLY:
            raise ApiError(405, "MethodNotAllowed", f"{resource} are defined by the emulator's config")
        current = self.store.get(resource, ns or "", name)
        if resource == "namespaces":
            for plural in NAMESPACED:
                items, _ = self.store.list(plural, name)
                for item in items:
                    self.delete(plural, name, item["metadata"]["name"], {"gracePeriodSeconds": "0"}, None)
            return self.with_kind(resource, self.store.delete(resource, "", name))
        if resource == "pods":
            grace = q.get("gracePeriodSeconds") or (body or {}).get("gracePeriodSeconds")
            default_grace = current["spec"].get("terminationGracePeriodSeconds", 30)
            grace_s = int(grace) if grace not in (None, "") else int(default_grace)
            uid = current["metadata"]["uid"]
            # A pod in a terminal phase has nothing left to stop: it goes at once, as on a cluster.
            if self.kubelet.is_active(uid) and current["status"].get("phase") not in ("Succeeded", "Failed"):
                def mark(p: Obj) -> None:
                    p["metadata"]["deletionTimestamp"] = now_iso()
                    p["metadata"]["deletionGracePeriodSeconds"] = grace_s
                marked = self.store.mutate("pods", ns or "", name, mark)
                self.kubelet.delete_pod(current, grace_s)
                record_pod_event(self.store, current, "Normal", "Killing", "Stopping container(s)")
                return self.with_kind(resource, marked or current)
        return self.with_kind(resource, self.store.delete(resource, ns or "", name))

    @staticmethod
    def with_kind(resource: str, obj: Obj) -> Obj:
        obj.setdefault("apiVersion", "v1")
        obj.setdefault("kind", {**NAMESPACED, **CLUSTER}[resource])
        return obj


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc: Obj, ops: Any) -> Obj:
    """RFC 6902 add / remove / replace / test (move and copy are not used by the clients emulated)."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "json patch body must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        path = [p.replace("~1", "/").replace("~0", "~") for p in op.get("path", "").split("/")[1:]]
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = path[-1] if path else ""
        kind = op.get("op")
        try:
            if kind in ("add", "replace"):
                if isinstance(parent, list):
                    idx = len(parent) if last == "-" else int(last)
                    if kind == "add":
                        parent.insert(idx, op["value"])
                    else:
                        parent[idx] = op["value"]
                else:
                    if kind == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = op["value"]
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind == "test":
                if (parent[int(last)] if isinstance(parent, list) else parent.get(last)) != op.get("value"):
                    raise ApiError(422, "Invalid", f"test operation failed at {op.get('path')}")
            else:
                raise ApiError(422, "Invalid", f"json patch op {kind!r} is not supported by the emulator")
        except (KeyError, IndexError, ValueError) as exc:
            raise ApiError(422, "Invalid", f"json patch {kind} {op.get('path')}: {exc}") from exc
    return doc
