"""The emulator's HTTP API: the core/v1 subset KubernetesPodOperator and the kubernetes clients use.

HTTP/1.1 with keep-alive; watches and followed logs are chunked streams (urllib3 and aiohttp both read
chunked bodies incrementally, which is what makes a watch a watch rather than one late list).
"""

from __future__ import annotations

import base64
import copy
import json
import signal
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .kubelet import HOST_PATH_ANNOTATION, Kubelet, Node, Runtime, dumps
from .selectors import field_matcher, label_matcher
from .store import ApiError, Obj, Store, now_iso

GIT_VERSION = "v1.31.0"  # what /version reports; the kubernetes client does not gate on it
NAMESPACED = {"pods": "Pod", "persistentvolumeclaims": "PersistentVolumeClaim", "secrets": "Secret",
              "configmaps": "ConfigMap", "serviceaccounts": "ServiceAccount", "events": "Event"}
CLUSTER = {"namespaces": "Namespace", "nodes": "Node"}
SHORT = {"pods": ["po"], "persistentvolumeclaims": ["pvc"], "configmaps": ["cm"], "serviceaccounts": ["sa"],
         "events": ["ev"], "namespaces": ["ns"], "nodes": ["no"]}
READ_ONLY = {"nodes"}  # nodes come from the emulator's config
MAX_WATCH_SECONDS = 1800


def truthy(value: str | None) -> bool:
    # The Python client sends booleans as `True`; kubectl sends `true`.
    return (value or "").lower() in ("true", "1", "yes")


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
        return self._with_kind(resource, self.store.get(resource, ns or "", name))

    def list(self, resource: str, ns: str | None, q: dict[str, str]) -> Obj:
        labels, fields = label_matcher(q.get("labelSelector")), field_matcher(resource, q.get("fieldSelector"))
        items, rv = self.store.list(resource, ns)
        kind = {**NAMESPACED, **CLUSTER}[resource]
        return {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)},
                "items": [self._with_kind(resource, o) for o in items if labels(o) and fields(o)]}

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
        return self._with_kind(resource, self.store.create(resource, ns or "", body))

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
        return self._with_kind(resource, self.store.replace(resource, ns or "", name, body, check_rv=True))

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
        return self._with_kind(resource, self.store.replace(resource, ns or "", name, new, check_rv=True))

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
            return self._with_kind(resource, self.store.delete(resource, "", name))
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
                self.kubelet.event(current, "Normal", "Killing", "Stopping container(s)")
                return self._with_kind(resource, marked or current)
        return self._with_kind(resource, self.store.delete(resource, ns or "", name))

    @staticmethod
    def _with_kind(resource: str, obj: Obj) -> Obj:
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "devstack-kube/1"
    api: Api  # set on the subclass made by serve()

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: requests go to the access log below
        pass

    # -- plumbing ------------------------------------------------------------------------------------

    def _query(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path.rstrip("/") or "/", {k: v[-1] for k, v in parse_qs(parts.query).items()}

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"request body is not JSON: {exc}") from exc

    def _send(self, code: int, obj: Any) -> None:
        data = dumps(obj)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _handle(self, method: str) -> None:
        try:
            path, q = self._query()
            found = Api.discovery(path) if method == "GET" else None
            if found is not None:
                self._send(200, found)
                return
            if not path.startswith("/api/v1"):
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
            body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
            resource, ns, name, sub = Api.route(path)
            api = self.api
            if method == "GET" and sub == "log" and resource == "pods" and name:
                self._log(ns or "", name, q)
                return
            if sub not in (None, "status"):
                raise ApiError(404, "NotFound", f"subresource {sub!r} is not emulated")
            if method == "GET" and name:
                self._send(200, api.get(resource, ns, name))
            elif method == "GET" and truthy(q.get("watch")):
                self._watch(resource, ns, q)
            elif method == "GET":
                self._send(200, api.list(resource, ns, q))
            elif method == "POST" and not name:
                self._send(201, api.create(resource, ns, body or {}))
            elif method == "PUT" and name and sub is None:
                self._send(200, api.replace(resource, ns, name, body or {}))
            elif method == "PATCH" and name and sub is None:
                self._send(200, api.patch(resource, ns, name, body, self.headers.get("Content-Type", "")))
            elif method == "DELETE" and name:
                self._send(200, api.delete(resource, ns, name, q, body))
            else:
                raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {path}")
        except ApiError as exc:
            self._send(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # an emulator bug: answer 500 with the reason rather than hang the client
            self._send(500, ApiError(500, "InternalError", f"{type(exc).__name__}: {exc}").status())

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- watch ---------------------------------------------------------------------------------------

    def _watch(self, resource: str, ns: str | None, q: dict[str, str]) -> None:
        store = self.api.store
        labels, fields = label_matcher(q.get("labelSelector")), field_matcher(resource, q.get("fieldSelector"))
        timeout = min(int(q.get("timeoutSeconds") or MAX_WATCH_SECONDS), MAX_WATCH_SECONDS)
        rv_text = q.get("resourceVersion") or ""

        def matches(obj: Obj | None) -> bool:
            return obj is not None and labels(obj) and fields(obj)

        if rv_text in ("", "0"):
            # "Start at most recent": synthetic ADDED for what exists, then changes from here on.
            items, rv = store.list(resource, ns)
            initial = [{"type": "ADDED", "object": Api._with_kind(resource, o)} for o in items if matches(o)]
        else:
            try:
                rv = int(rv_text)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_text!r}") from None
            store.events_since(rv, resource)  # 410 Gone before the stream starts when too old
            initial = []
        self._start_stream("application/json")
        for event in initial:
            self._chunk(dumps(event) + b"\n")
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    events = store.events_since(rv, resource)
                except ApiError as exc:
                    self._chunk(dumps({"type": "ERROR", "object": exc.status()}) + b"\n")
                    break
                for e in events:
                    rv = e.rv
                    if ns is not None and e.namespace != ns:
                        continue
                    now_match, was_match = matches(e.obj), matches(e.old)
                    # As the real watch cache does: an object leaving the selector is DELETED for this watcher.
                    if e.type == "MODIFIED" and was_match and not now_match:
                        type_ = "DELETED"
                    elif e.type == "MODIFIED" and now_match and not was_match:
                        type_ = "ADDED"
                    elif now_match:
                        type_ = e.type
                    else:
                        continue
                    self._chunk(dumps({"type": type_, "object": Api._with_kind(resource, e.obj)}) + b"\n")
                store.wait(rv, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- logs ----------------------------------------------------------------------------------------

    def _log(self, ns: str, name: str, q: dict[str, str]) -> None:
        api = self.api
        pod = api.store.get("pods", ns, name)
        containers = [c["name"] for c in [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]]
        cname = q.get("container")
        if not cname:
            if len(pod["spec"]["containers"]) != 1:
                raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, choose one "
                               f"of: {[c['name'] for c in pod['spec']['containers']]}")
            cname = pod["spec"]["containers"][0]["name"]
        if cname not in containers:
            raise ApiError(400, "BadRequest", f"container {cname} is not valid for pod {name}")
        if truthy(q.get("previous")):
            raise ApiError(400, "BadRequest", f'previous terminated container "{cname}" in pod "{name}" not found')
        uid = pod["metadata"]["uid"]
        path = api.kubelet.log_path(uid, cname)
        if not path.exists():
            state = _container_state(pod, cname)
            reason = (state.get("waiting") or {}).get("reason", "ContainerCreating")
            raise ApiError(400, "BadRequest", f'container "{cname}" in pod "{name}" is waiting to start: {reason}')
        timestamps = truthy(q.get("timestamps"))
        since = None
        if q.get("sinceSeconds"):
            since = time.time() - int(q["sinceSeconds"])
        elif q.get("sinceTime"):
            since = datetime.fromisoformat(q["sinceTime"].replace("Z", "+00:00")).timestamp()
        tail = int(q["tailLines"]) if q.get("tailLines") not in (None, "") else None
        follow = truthy(q.get("follow"))

        def render(line: bytes) -> bytes | None:
            stamp, _, text = line.partition(b" ")
            if since is not None and _stamp_seconds(stamp) < since:
                return None
            return line if timestamps else text

        with open(path, "rb") as fh:
            lines = [r for r in (render(x) for x in fh.readlines() if x.endswith(b"\n")) if r is not None]
            if tail is not None:
                lines = lines[-tail:] if tail > 0 else []
            pos = fh.tell()
        if not follow:
            data = b"".join(lines)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._start_stream("text/plain")
        try:
            self._chunk(b"".join(lines))
            while True:
                done = _container_done(api, ns, name, uid, cname)
                with open(path, "rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
                # Only whole lines: the pump writes one line per write, a partial read waits for the rest.
                whole = chunk[: chunk.rfind(b"\n") + 1]
                pos += len(whole)
                out = b"".join(r for r in (render(x) for x in whole.splitlines(keepends=True)) if r is not None)
                self._chunk(out)
                if done and not whole:
                    break
                if not whole:
                    with api.store.cond:
                        api.store.cond.wait(0.2)
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _container_state(pod: Obj, cname: str) -> Obj:
    for key in ("initContainerStatuses", "containerStatuses"):
        for st in pod["status"].get(key) or []:
            if st["name"] == cname:
                return st.get("state") or {}
    return {}


def _container_done(api: Api, ns: str, name: str, uid: str, cname: str) -> bool:
    pod = api.store.find("pods", ns, name)
    if pod is None or pod["metadata"]["uid"] != uid:
        return True
    return "terminated" in _container_state(pod, cname) or pod["status"].get("phase") in ("Succeeded", "Failed")


def _stamp_seconds(stamp: bytes) -> float:
    text = stamp.decode()
    base, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(base).replace(tzinfo=UTC).timestamp() + float("0." + (frac or "0"))


def serve(config: Obj, *, ready_file: Path | None = None) -> None:
    """Run the emulator in this process until SIGTERM / SIGINT; pods are killed on the way out."""
    state_dir = Path(config["state_dir"])
    store = Store()
    nodes = [Node(n["name"], dict(n.get("labels", {})), dict(n.get("capacity", {})), list(n.get("taints", [])))
             for n in config["nodes"]]
    runtimes = [Runtime.from_dict(r) for r in config["images"]]
    kubelet = Kubelet(store, nodes=nodes, runtimes=runtimes, state_dir=state_dir, use_bwrap=config.get("bwrap"))
    api = Api(store, kubelet, dict(config.get("pvcs", {})))
    for node in nodes:
        store.create("nodes", "", node.to_object())
    for ns in {"default", "kube-system", "kube-public", *config.get("namespaces", [])}:
        api.create("namespaces", None, {"metadata": {"name": ns}})
    for key, host in config.get("pvcs", {}).items():
        ns, _, claim = key.rpartition("/")
        ns = ns or "default"
        if store.find("namespaces", "", ns) is None:
            api.create("namespaces", None, {"metadata": {"name": ns}})
        api.create("persistentvolumeclaims", ns, {
            "metadata": {"name": claim, "annotations": {HOST_PATH_ANNOTATION: host}},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "100Gi"}}}})
    for secret in config.get("secrets", []):
        api.create("secrets", secret.get("metadata", {}).get("namespace", "default"), secret)

    handler = type("BoundHandler", (Handler,), {"api": api})
    httpd = ThreadingHTTPServer((config.get("host", "127.0.0.1"), int(config["port"])), handler)
    httpd.daemon_threads = True
    kubelet.start()
    stopping = threading.Event()

    def stop(*_: object) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if ready_file is not None:
        ready_file.write_text(str(httpd.server_address[1]))
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        kubelet.shutdown()
        httpd.server_close()
