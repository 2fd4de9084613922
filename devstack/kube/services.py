"""Services, discovery.k8s.io/v1 EndpointSlices from the pods they select, and a loopback proxy per Service.

Follows upstream kubernetes v1.31: pkg/apis/core/v1/defaults.go and pkg/registry/core/service (type
ClusterIP, a ClusterIP allocated from the service range and immutable afterwards, port protocol and
targetPort defaults), pkg/controller/endpointslice (one slice per Service and port set, labelled
``kubernetes.io/service-name`` and managed-by, owned by the Service; each endpoint a selected pod with an
IP: its address, conditions ready / serving / terminating, targetRef and nodeName; ready follows the pod's
Ready condition, so a readiness gate set False drains the pod) and kube-proxy (a connection to
ClusterIP:port goes to one ready endpoint, round-robin per connection, never to a not-ready one; with no
ready endpoint it is refused).

The proxy is a small TCP forwarder in the emulator process, listening on the Service's ClusterIP (a
loopback address, network.py) and port. Like kube-proxy it balances connections, not requests: a
keep-alive connection stays on the pod it reached, even after that pod turns not-ready, until one side
closes it. It reads the EndpointSlices from the store at each connection, so once a client has seen an
endpoint not ready in a slice, no new connection goes to it.

Not emulated: NodePort / LoadBalancer (served as ClusterIP), externalName, sessionAffinity ClientIP,
topology hints, the legacy v1 Endpoints objects, UDP / SCTP ports, dual stack, traffic policies.
"""

from __future__ import annotations

import contextlib
import copy
import select
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import tables
from .controller import Controller
from .network import PodNetwork
from .store import ApiError, Obj, Store

if TYPE_CHECKING:
    from .api import Api

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
POLL_S = 0.05
CONNECT_TIMEOUT_S = 2.0


def _invalid(name: str, problem: str) -> ApiError:
    return ApiError(422, "Invalid", f'Service "{name}" is invalid: {problem}')


def default_service(body: Obj, network: PodNetwork, *, dry_run: bool = False) -> None:
    """SetDefaults_Service, port validation and the ClusterIP allocation at create (a dry run shows the IP
    it would get, holding none)."""
    meta = body.setdefault("metadata", {})
    name = meta.get("name") or meta.get("generateName", "")
    spec = body.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    if spec["type"] == "ExternalName":
        raise _invalid(name, "spec.type: Unsupported value: \"ExternalName\": not emulated (devstack)")
    ports = spec.get("ports") or []
    if not ports:
        raise _invalid(name, "spec.ports: Required value")
    seen: set[str] = set()
    for i, port in enumerate(ports):
        if not isinstance(port.get("port"), int) or not 0 < port["port"] < 65536:
            raise _invalid(name, f"spec.ports[{i}].port: Invalid value: {port.get('port')}: must be between 1 and "
                           "65535, inclusive")
        if len(ports) > 1 and not port.get("name"):
            raise _invalid(name, f"spec.ports[{i}].name: Required value")
        if port.get("name", "") in seen:
            raise _invalid(name, f"spec.ports[{i}].name: Duplicate value: {port.get('name')!r}")
        seen.add(port.get("name", ""))
        port.setdefault("protocol", "TCP")
        if port["protocol"] != "TCP":
            raise _invalid(name, f"spec.ports[{i}].protocol: Unsupported value: {port['protocol']!r}: only TCP is "
                           "emulated (devstack)")
        port.setdefault("targetPort", port["port"])
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    ip = spec.get("clusterIP") or ""
    if ip != "None":
        if ip:
            network.claim_service_ip(ip, hold=not dry_run)
        else:
            ip = network.service_ip(hold=not dry_run)
    spec["clusterIP"] = ip
    spec["clusterIPs"] = [ip]
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    body["status"] = {"loadBalancer": {}}


def on_update(current: Obj, new: Obj) -> None:
    """spec.clusterIP is immutable (an update without it keeps the allocated one)."""
    spec = new.setdefault("spec", {})
    old_ip = (current.get("spec") or {}).get("clusterIP")
    if spec.get("clusterIP") in (None, ""):
        spec["clusterIP"] = old_ip
        spec["clusterIPs"] = [old_ip]
    elif spec["clusterIP"] != old_ip:
        raise _invalid(current["metadata"]["name"], "spec.clusterIPs[0]: Invalid value: "
                       f'["{spec["clusterIP"]}"]: may not change once set')
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))


def validate_slice(body: Obj) -> None:
    """What the API requires of an EndpointSlice written by anyone (addressType, endpoints' addresses)."""
    name = (body.get("metadata") or {}).get("name") or (body.get("metadata") or {}).get("generateName", "")
    if body.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
        raise ApiError(422, "Invalid", f'EndpointSlice.discovery.k8s.io "{name}" is invalid: addressType: '
                       f'Unsupported value: "{body.get("addressType", "")}": supported values: "FQDN", "IPv4", "IPv6"')
    body.setdefault("endpoints", [])
    for i, ep in enumerate(body["endpoints"]):
        if not ep.get("addresses"):
            raise ApiError(422, "Invalid", f'EndpointSlice.discovery.k8s.io "{name}" is invalid: '
                           f"endpoints[{i}].addresses: Required value")


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _target_port(pod: Obj, target: Any) -> int | None:
    """A Service port's targetPort on one pod: a number, or the name of one of its containers' ports."""
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for c in pod["spec"].get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target and (p.get("protocol") or "TCP") == "TCP":
                return int(p["containerPort"])
    return None


def desired_slices(service: Obj, pods: list[Obj]) -> list[Obj]:
    """The EndpointSlices of a Service: one per distinct set of resolved ports, each listing its pods."""
    meta, spec = service["metadata"], service.get("spec") or {}
    groups: dict[tuple[tuple[str, int], ...], list[Obj]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        status = pod.get("status") or {}
        if not _selects(spec.get("selector") or {}, pod["metadata"].get("labels") or {}):
            continue
        if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        resolved = tuple((p.get("name", ""), _target_port(pod, p.get("targetPort"))) for p in spec.get("ports") or [])
        ports = tuple((n, port) for n, port in resolved if port is not None)
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        ready = _ready(pod)
        endpoint = {"addresses": [status["podIP"]],
                    "conditions": {"ready": ready and not terminating, "serving": ready, "terminating": terminating},
                    "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": pod["metadata"]["name"],
                                  "uid": pod["metadata"]["uid"]}}
        if pod["spec"].get("nodeName"):
            endpoint["nodeName"] = pod["spec"]["nodeName"]
        groups.setdefault(ports, []).append(endpoint)
    if not groups:
        groups[()] = []  # a Service without endpoints still has its (empty) slice
    out = []
    for ports, endpoints in sorted(groups.items()):
        out.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"],
                         "labels": {**(meta.get("labels") or {}), SERVICE_NAME_LABEL: meta["name"],
                                    MANAGED_BY_LABEL: MANAGED_BY},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports] or None,
        })
    return out


def ready_backends(store: Store, namespace: str, service: str, port_name: str) -> list[tuple[str, int]]:
    """(IP, port) of the ready endpoints of one Service port, from its EndpointSlices as stored now."""
    slices, _ = store.list("endpointslices", namespace)
    out = []
    for s in slices:
        if (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) != service:
            continue
        port = next((p.get("port") for p in s.get("ports") or [] if (p.get("name") or "") == port_name), None)
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is not False:  # unset ready means ready (API docs)
                out.extend((addr, int(port)) for addr in ep.get("addresses") or [])
    return sorted(out)


class _Listener:
    """kube-proxy for one Service port: accept on ClusterIP:port, forward each connection to the next ready
    endpoint (round-robin), refuse (close) when there is none."""

    def __init__(self, store: Store, namespace: str, service: str, port_name: str, address: tuple[str, int]) -> None:
        self.store, self.namespace, self.service, self.port_name = store, namespace, service, port_name
        self.address = address
        self.sock = socket.create_server(address, backlog=128)
        self.sock.settimeout(0.2)
        self._next = 0
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"proxy-{service}-{port_name}", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()

    def _pick(self) -> tuple[str, int] | None:
        backends = ready_backends(self.store, self.namespace, self.service, self.port_name)
        if not backends:
            return None
        with self._lock:
            choice = backends[self._next % len(backends)]
            self._next += 1
        return choice

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        backend = self._pick()
        upstream = None
        try:
            if backend is None:
                return  # no ready endpoint: kube-proxy rejects the connection
            try:
                upstream = socket.create_connection(backend, timeout=CONNECT_TIMEOUT_S)
            except OSError:
                return  # as a DNAT to a pod that does not listen: the client's connection ends
            with self._lock:
                self._conns.update((client, upstream))
            for s in (client, upstream):
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peers = {client: upstream, upstream: client}
            open_reads = {client, upstream}
            while open_reads and not self._stop.is_set():
                readable, _, _ = select.select(list(open_reads), [], [], 0.5)
                for s in readable:
                    data = s.recv(65536)
                    if data:
                        peers[s].sendall(data)
                    else:  # half close: pass the EOF on, keep reading the other direction
                        open_reads.discard(s)
                        with contextlib.suppress(OSError):
                            peers[s].shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    with self._lock:
                        self._conns.discard(s)
                    with contextlib.suppress(OSError):
                        s.close()


class ServiceController(Controller):
    """One thread keeping each Service's EndpointSlices and proxy listeners in step with the store."""

    name = "service-controller"
    pause_s = POLL_S

    def __init__(self, api: Api, network: PodNetwork) -> None:
        super().__init__(api)
        self.network = network
        self._listeners: dict[tuple[str, str, str], tuple[str, _Listener]] = {}  # (ns, svc, port) -> (uid, l)
        self._bind_errors: set[tuple[str, str, str]] = set()

    def steps(self) -> list[Callable[[], None]]:
        return [self.sync]

    def stop(self) -> None:
        super().stop()
        for _, listener in self._listeners.values():
            listener.close()
        self._listeners.clear()

    def sync(self) -> None:
        services, _ = self.store.list("services")
        pods, _ = self.store.list("pods")
        slices, _ = self.store.list("endpointslices")
        by_uid = {s["metadata"]["uid"]: s for s in services}
        for svc in services:
            ns = svc["metadata"]["namespace"]
            mine = [s for s in slices if any(r.get("uid") == svc["metadata"]["uid"]
                                             for r in s["metadata"].get("ownerReferences") or [])]
            if (svc.get("spec") or {}).get("selector"):  # without a selector, slices are the user's to write
                self._sync_slices(svc, [p for p in pods if p["metadata"]["namespace"] == ns], mine)
        # Garbage collection: slices of deleted Services, and their ClusterIPs and listeners.
        for s in slices:
            refs = [r for r in s["metadata"].get("ownerReferences") or [] if r.get("kind") == "Service"]
            if refs and all(r.get("uid") not in by_uid for r in refs):
                with contextlib.suppress(ApiError):
                    self.store.delete("endpointslices", s["metadata"]["namespace"], s["metadata"]["name"])
        self._sync_listeners(services)

    def _sync_slices(self, svc: Obj, pods: list[Obj], current: list[Obj]) -> None:
        ns = svc["metadata"]["namespace"]
        want = desired_slices(svc, pods)
        # Match by port set: update in place (a slice keeps its name), create what is missing, drop the rest.
        left = list(current)
        for body in want:
            match = next((s for s in left if s.get("ports") == body["ports"]), None) or (left[0] if left else None)
            if match is None:
                self.store.create("endpointslices", ns, body)
                continue
            left.remove(match)
            if all(match.get(k) == body.get(k) for k in ("endpoints", "ports", "addressType")) and \
                    match["metadata"].get("labels") == body["metadata"]["labels"]:
                continue

            def update(o: Obj, body: Obj = body) -> None:
                o["endpoints"], o["ports"] = copy.deepcopy(body["endpoints"]), copy.deepcopy(body["ports"])
                o["metadata"]["labels"] = body["metadata"]["labels"]
            self.store.mutate("endpointslices", ns, match["metadata"]["name"], update)
        for s in left:
            with contextlib.suppress(ApiError):
                self.store.delete("endpointslices", ns, s["metadata"]["name"])

    def _sync_listeners(self, services: list[Obj]) -> None:
        wanted: dict[tuple[str, str, str], tuple[str, tuple[str, int]]] = {}
        for svc in services:
            spec = svc.get("spec") or {}
            ip = spec.get("clusterIP")
            if not ip or ip == "None":
                continue
            for port in spec.get("ports") or []:
                key = (svc["metadata"]["namespace"], svc["metadata"]["name"], port.get("name", ""))
                wanted[key] = (svc["metadata"]["uid"], (ip, int(port["port"])))
        for key, (uid, listener) in list(self._listeners.items()):
            if key not in wanted or wanted[key] != (uid, listener.address):
                listener.close()
                del self._listeners[key]
                if key not in wanted or wanted[key][0] != uid:
                    self.network.release_service_ip(listener.address[0])
        for key, (uid, address) in wanted.items():
            if key in self._listeners:
                continue
            try:
                self._listeners[key] = (uid, _Listener(self.store, key[0], key[1], key[2], address))
                self._bind_errors.discard(key)
            except OSError as exc:
                if key not in self._bind_errors:  # said once; retried on every sync
                    self._bind_errors.add(key)
                    print(f"service controller: {key[0]}/{key[1]} port {key[2] or address[1]}: cannot listen on "
                          f"{address[0]}:{address[1]}: {exc}", flush=True)


def _service_cells(svc: Obj) -> list[Any]:
    """printService: NAME, TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S), AGE, SELECTOR (wide)."""
    spec = svc.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
    return [svc["metadata"]["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", "<none>",
            ports or "<none>", tables.since(svc["metadata"].get("creationTimestamp")), selector]


def _slice_cells(s: Obj) -> list[Any]:
    """printEndpointSlice: NAME, ADDRESSTYPE, PORTS, ENDPOINTS (first three, then "+ N more..."), AGE."""
    ports = ",".join(str(p.get("port")) for p in s.get("ports") or []) or "<unset>"
    addresses = [a for ep in s.get("endpoints") or [] for a in ep.get("addresses") or []]
    shown = ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")
    return [s["metadata"]["name"], s.get("addressType", ""), ports, shown or "<unset>",
            tables.since(s["metadata"].get("creationTimestamp"))]


tables.PRINTERS["services"] = (
    [tables.NAME, tables._col("Type"), tables._col("Cluster-IP"), tables._col("External-IP"), tables._col("Port(s)"),
     tables.AGE, tables._col("Selector", priority=1)], _service_cells)
tables.PRINTERS["endpointslices"] = (
    [tables.NAME, tables._col("AddressType"), tables._col("Ports"), tables._col("Endpoints"), tables.AGE],
    _slice_cells)
