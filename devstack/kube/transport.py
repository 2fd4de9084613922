"""The emulator's HTTP transport: the request handler, watch and pods/log streams, and ``serve``.

HTTP/1.1 with keep-alive; watches and followed logs are chunked streams (urllib3 and aiohttp both read
chunked bodies incrementally, which is what makes a watch a watch rather than one late list). Every
request body is read before the answer, so early errors keep the connection usable. Lists, gets and
watches answer Tables (tables.py) when the client asks for them; /openapi/v3 is openapi.py's. Every
request is authenticated, impersonated and authorized first (rbac.py), on the plain-HTTP port and on the
TLS port that ServiceAccount kubeconfigs use. What a request means is api.py's; ``serve`` wires store,
kubelet, scheduler and API together from the config.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import rbac, storage, tables
from .api import Api
from .jobs import JobController
from .kubelet import HOST_PATH_ANNOTATION, RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S, Kubelet, Runtime
from .network import PodNetwork
from .restart import ApiServers, TrackingServer
from .scheduler import Node, Scheduler
from .selectors import field_matcher, label_matcher
from .services import ServiceController
from .store import ApiError, Obj, Store
from .tables import wants_table
from .workloads import DeploymentController

MAX_WATCH_SECONDS = 1800


def truthy(value: str | None) -> bool:
    # The Python client sends booleans as `True`; kubectl sends `true`.
    return (value or "").lower() in ("true", "1", "yes")


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "devstack-kube/1"
    api: Api  # set on the subclass made by serve()
    auth: rbac.Rbac  # likewise: tokens, impersonation, the authorizer
    secure = False  # True on the TLS port's subclass

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: requests go to the access log below
        pass

    # -- plumbing ------------------------------------------------------------------------------------

    def _query(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path.rstrip("/") or "/", {k: v[-1] for k, v in parse_qs(parts.query).items()}

    def _read_body(self) -> bytes:
        """The whole request body, read before anything is answered: a response sent with the body still
        unread would leave it on the keep-alive connection, to be parsed as the next request."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _json(raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"request body is not JSON: {exc}") from exc

    def _send(self, code: int, obj: Any) -> None:
        self._send_bytes(code, dumps(obj))

    def _send_bytes(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for text in self.api.warnings():
            # RFC 7234 warn-code 299, as the apiserver sends fieldValidation=Warn findings.
            self.send_header("Warning", "299 - " + json.dumps(text))
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
        self.api.warnings().clear()
        try:
            raw = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True  # a body that cannot be read leaves the connection unusable
            return
        try:
            path, q = self._query()
            # The apiserver's filter order: authentication (401), impersonation, authorization (403).
            user = self.auth.impersonate(self.auth.authenticate(self.headers, self.secure), self.headers)
            self.auth.check(rbac.request_attributes(method, path, q, user))
            found = Api.discovery(path) if method == "GET" else None
            if found is not None:
                self._send(200, found)
                return
            if method == "GET" and path.startswith("/openapi/v3"):
                self._openapi(path)
                return
            if not path.startswith(("/api/v1", "/apis/")):
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
            body = self._json(raw) if method in ("POST", "PUT", "PATCH", "DELETE") else None
            resource, ns, name, sub = Api.route(path)
            api = self.api
            if method == "GET" and sub == "log" and resource == "pods" and name:
                self._log(ns or "", name, q)
                return
            if resource == "serviceaccounts" and sub == "token" and method == "POST" and name:
                self._send(201, self.auth.token_request(ns or "", name, body))
                return
            if resource in rbac.REVIEWS:
                if method != "POST" or name:
                    raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {path}")
                self._send(201, self.auth.review(resource, user, body))
                return
            if resource == "deployments" and sub == "scale" and name and method in ("GET", "PUT", "PATCH"):
                self._send(200, api.scale(ns, name, body if method != "GET" else None,
                                          self.headers.get("Content-Type", "") if method == "PATCH" else None, q))
                return
            if sub not in (None, "status"):
                raise ApiError(404, "NotFound", f"subresource {sub!r} is not emulated")
            table = wants_table(self.headers.get("Accept") or "")
            if method == "GET" and name:
                obj = api.get(resource, ns, name)
                self._send(200, tables.table(resource, [obj], obj["metadata"].get("resourceVersion", ""),
                                             q.get("includeObject", "")) if table else obj)
            elif method == "GET" and truthy(q.get("watch")):
                self._watch(resource, ns, q, table)
            elif method == "GET" and table:
                items, rv = api.list_items(resource, ns, q)
                self._send(200, tables.table(resource, items, str(rv), q.get("includeObject", "")))
            elif method == "GET":
                self._send(200, api.list(resource, ns, q))
            elif method == "POST" and not name:
                self._send(201, api.create(resource, ns, body or {}, q))
            elif method in ("PUT", "PATCH") and name and sub == "status":
                self._send(200, api.write_status(resource, ns, name, body, None if method == "PUT" else
                                                 self.headers.get("Content-Type", ""), q))
            elif method == "PUT" and name and sub is None:
                self._send(200, api.replace(resource, ns, name, body or {}, q))
            elif method == "PATCH" and name and sub is None:
                self._send(200, api.patch(resource, ns, name, body, self.headers.get("Content-Type", ""), q))
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

    def _openapi(self, path: str) -> None:
        if path == "/openapi/v3":
            self._send(200, self.api.openapi.index())
            return
        doc = self.api.openapi.document(path)
        if doc is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        self._send_bytes(200, doc)

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

    def _watch(self, resource: str, ns: str | None, q: dict[str, str], table: bool = False) -> None:
        store = self.api.store
        labels, fields = label_matcher(q.get("labelSelector")), field_matcher(resource, q.get("fieldSelector"))
        timeout = min(int(q.get("timeoutSeconds") or MAX_WATCH_SECONDS), MAX_WATCH_SECONDS)
        rv_text = q.get("resourceVersion") or ""

        def matches(obj: Obj | None) -> bool:
            return obj is not None and labels(obj) and fields(obj)

        if rv_text in ("", "0"):
            # "Start at most recent": synthetic ADDED for what exists, then changes from here on.
            items, rv = store.list(resource, ns)
            initial = [("ADDED", Api.with_kind(resource, o)) for o in items if matches(o)]
        else:
            try:
                rv = int(rv_text)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {rv_text!r}") from None
            store.events_since(rv, resource)  # 410 Gone before the stream starts when too old
            initial = []
        self._start_stream("application/json")
        first = [True]

        def send(type_: str, obj: Obj) -> None:
            if table:
                # Watch events of a Table watch carry one-row Tables; only the first has the columns
                # (apiserver pkg/endpoints/handlers/watch.go with a Table transform).
                obj = tables.table(resource, [obj], obj["metadata"].get("resourceVersion", ""),
                                   q.get("includeObject", ""), with_columns=first[0])
                first[0] = False
            self._chunk(dumps({"type": type_, "object": obj}) + b"\n")

        for type_, obj in initial:
            send(type_, obj)
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
                    send(type_, Api.with_kind(resource, e.obj))
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
        uid = pod["metadata"]["uid"]
        previous = truthy(q.get("previous"))  # the instance before the latest one (kubelet.py keeps one)
        path = api.kubelet.log_path(uid, cname, previous=previous)
        if previous and not path.exists():
            raise ApiError(400, "BadRequest", f'previous terminated container "{cname}" in pod "{name}" not found')
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
        follow = truthy(q.get("follow")) and not previous

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
            # A follower reads on in this very file: a restart renames it away (kubelet.log_path previous).
            held = os.fdopen(os.dup(fh.fileno()), "rb") if follow else None
        if not follow:
            data = b"".join(lines)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        assert held is not None
        with held as fh:  # the stream ends with the container instance it follows, as on a cluster
            self._start_stream("text/plain")
            restarts = _restart_count(pod, cname)
            try:
                self._chunk(b"".join(lines))
                fh.seek(pos)
                while True:
                    done = _container_done(api, ns, name, uid, cname, restarts)
                    chunk = fh.read()
                    # Only whole lines: the pump writes one line per write, a partial read waits for the rest.
                    whole = chunk[: chunk.rfind(b"\n") + 1]
                    fh.seek(pos := pos + len(whole))
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


def _restart_count(pod: Obj, cname: str) -> int:
    for key in ("initContainerStatuses", "containerStatuses"):
        for st in pod["status"].get(key) or []:
            if st["name"] == cname:
                return int(st.get("restartCount") or 0)
    return 0


def _container_done(api: Api, ns: str, name: str, uid: str, cname: str, restarts: int) -> bool:
    """Whether the container instance a log follower started on (its restartCount then) has ended."""
    pod = api.store.find("pods", ns, name)
    if pod is None or pod["metadata"]["uid"] != uid:
        return True
    state = _container_state(pod, cname)
    return "terminated" in state or (state.get("waiting") or {}).get("reason") == "CrashLoopBackOff" or \
        _restart_count(pod, cname) != restarts or pod["status"].get("phase") in ("Succeeded", "Failed")


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
    base, cap = config.get("restart_backoff") or (RESTART_BACKOFF_S, RESTART_BACKOFF_MAX_S)
    auth = rbac.Rbac(store)
    # With a TLS port, pods get in-cluster access to it: a projected token, kube-root-ca.crt, the
    # `kubernetes` Service's env vars (admission.py, kubelet.py).
    tls_port = int(config.get("tls_port") or 0)
    tls_cert, tls_key = rbac.serving_cert(state_dir) if tls_port else (None, None)
    kubelet = Kubelet(store, runtimes=runtimes, state_dir=state_dir, use_bwrap=config.get("bwrap"),
                      restart_backoff=(float(base), float(cap)),
                      network=PodNetwork(pod_ips=bool(config.get("pod_network"))),
                      token_issuer=auth.token_request if tls_port else None,
                      api_endpoint=(config.get("host", "127.0.0.1"), tls_port) if tls_port else None)
    scheduler = Scheduler(store, kubelet, nodes=nodes)
    api = Api(store, kubelet, dict(config.get("pvcs", {})), root_ca_pem=tls_cert.read_text() if tls_cert else "")
    for node in nodes:
        store.create("nodes", "", node.to_object())
    # Classes before claims: the config's claims bind against them (default: one class, RWO + RWX).
    for sc in config.get("storage_classes") or [storage.DEFAULT_CLASS]:
        api.create("storageclasses", None, sc)
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

    for resource, obj in rbac.default_objects():  # bootstrap ClusterRoles and their bindings
        api.create(resource, None, obj)
    handler = type("BoundHandler", (Handler,), {"api": api, "auth": auth})
    host = config.get("host", "127.0.0.1")
    context = None
    if tls_cert is not None and tls_key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert, tls_key)
    tls_handler = type("TlsHandler", (Handler,), {"api": api, "auth": auth, "secure": True})

    def listeners() -> list[TrackingServer]:
        out = [TrackingServer((host, int(config["port"])), handler)]
        if context is not None:
            # The same API over TLS, for kubeconfigs whose credentials must be sent (rbac.serving_cert).
            https = TrackingServer((host, tls_port), tls_handler)
            # The handshake happens in the request's thread, not in the accept loop.
            https.socket = context.wrap_socket(https.socket, server_side=True, do_handshake_on_connect=False)
            out.append(https)
        return out

    # Restartable on their own (SIGUSR1, restart.py): the API server restarting while pods run.
    servers = ApiServers(listeners, store, state_dir)
    servers.start()
    scheduler.start()
    clock = config.get("cron_clock_file")  # tests step the CronJob controller's "now" through this file
    job_controller = JobController(api, clock_file=Path(clock) if clock else None)
    job_controller.start()
    deployment_controller, service_controller = DeploymentController(api), ServiceController(api, kubelet.network)
    deployment_controller.start()
    service_controller.start()
    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=servers.restart, daemon=True).start())
    if ready_file is not None:
        ready_file.write_text(str(servers.port))
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        servers.stop()
        scheduler.stop()
        job_controller.stop()
        deployment_controller.stop()
        service_controller.stop()
        kubelet.shutdown()
