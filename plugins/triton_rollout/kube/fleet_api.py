"""The Kubernetes API calls of a fleet rollout, in one place: find the Triton replicas behind a Service, take
one out of the Service and put it back.

Replicas are the Service's EndpointSlices (``kubernetes.io/service-name``; each endpoint's pod, address,
port and ``ready`` condition, which says whether the Service routes to it now) joined with the pods (the
readiness gate's condition, restarts, uid). A replica leaves the Service when the rollout sets the pod
condition :data:`SERVING_GATE` to False: the Deployment's pods declare it as a readiness gate, so the pod
turns NotReady and the EndpointSlice controller marks its endpoint not ready (kube-proxy then stops sending
it new connections). Setting it True brings the replica back once its probes pass.

The calls and the RBAC they need (``k8s/rbac.yaml``, Role ``triton-rollout-fleet``): services get,
endpointslices (discovery.k8s.io) list, pods list, pods/status patch. Nothing else: no create, delete or
exec. Credentials: in a pod, its service account (the in-cluster config); at a shell, $KUBECONFIG.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from triton_rollout.errors import ConfigError, FleetError

# The readiness gate the Triton Deployment declares (kube/manifests.py triton()) and the rollout sets.
SERVING_GATE = "triton-rollout/serving"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # EndpointSlice -> Service (discovery.k8s.io/v1 API docs)
HTTP_PORT_NAME = "http"
API_UNREACHABLE_S = 30.0  # how long a call keeps retrying an API server that refuses connections (a restart)


@dataclass(frozen=True)
class Replica:
    """One Triton pod behind the Service, as the API reports it now."""

    pod: str
    uid: str
    address: str  # the pod IP
    port: int  # Triton's HTTP port on that IP (the Service's ``http`` target)
    in_service: bool  # the EndpointSlice says ready: the Service routes new connections to it
    gate: bool | None  # the SERVING_GATE condition; None: not set yet (a new pod)
    restarts: int  # Triton container restarts: a change means the replica reloaded from disk

    @property
    def url(self) -> str:
        return f"{self.address}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {"pod": self.pod, "url": self.url, "in_service": self.in_service, "gate": self.gate,
                "restarts": self.restarts}


def parse_service(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` (the --triton-service flag) -> (namespace, name)."""
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ConfigError(f"--triton-service {text!r} is not NAMESPACE/NAME",
                          hint="e.g. --triton-service triton/triton")
    return namespace, name


def _api_client() -> Any:
    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            # In a pod: its service account's token and the cluster CA (the pod spec must mount them).
            conf = client.Configuration()
            config.load_incluster_config(client_configuration=conf)
            return client.ApiClient(conf)
        # $KUBECONFIG read now: the client's default location is fixed when the kubernetes package is imported.
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
    except config.ConfigException as exc:
        raise FleetError(f"no Kubernetes credentials to find the Triton replicas: {exc}",
                         hint="in a pod, mount the service account token (automountServiceAccountToken: true); "
                              "at a shell, set KUBECONFIG") from exc


class FleetApi:
    """The Triton Service's replicas, and their readiness gate."""

    def __init__(self, namespace: str, service: str, api_client: Any | None = None) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.service = service
        self._api = api_client if api_client is not None else _api_client()
        self._core = client.CoreV1Api(self._api)
        self._discovery = client.DiscoveryV1Api(self._api)

    @classmethod
    def for_service(cls, text: str) -> FleetApi:
        return cls(*parse_service(text))

    def close(self) -> None:
        self._api.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        # An API server that restarts (an upgrade, a crash) refuses connections for seconds while etcd and the pods
        # carry on: what could not reach it is retried for API_UNREACHABLE_S (every call here is a read or an
        # idempotent status patch). The kubernetes client raises urllib3's MaxRetryError then, not an OSError.
        end = time.monotonic() + API_UNREACHABLE_S
        while True:
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                reason = f"HTTP {exc.status} {exc.reason}"
                hint = None
                if exc.status == 403:
                    hint = (f"grant this identity '{what}' in namespace {self.namespace} (k8s/rbac.yaml: Role "
                            "triton-rollout-fleet for the rollout steps, airflow-fleet-reader for the Airflow UI view)")
                raise FleetError(f"Kubernetes API: {what} in {self.namespace} for Service {self.service} failed: "
                                 f"{reason}", hint=hint) from exc
            except (OSError, Urllib3Error) as exc:
                if time.monotonic() < end:
                    time.sleep(0.5)
                    continue
                raise FleetError(f"Kubernetes API unreachable ({what}) for {API_UNREACHABLE_S:.0f}s: {exc}",
                                 hint="check the API server (kubectl get --raw /readyz) and KUBECONFIG or the pod's "
                                      "service account") from exc

    def _pods(self) -> dict[str, Any]:
        """The live pods the Service selects, by name."""
        svc = self._call("get services", self._core.read_namespaced_service, self.service, self.namespace)
        selector = ",".join(f"{k}={v}" for k, v in sorted((svc.spec.selector or {}).items()))
        if not selector:
            raise FleetError(f"Service {self.namespace}/{self.service} has no selector: its replicas cannot be found",
                             hint="point --triton-service at the Service of the Triton Deployment")
        pods = self._call("list pods", self._core.list_namespaced_pod, self.namespace, label_selector=selector).items
        return {p.metadata.name: p for p in pods if p.metadata.deletion_timestamp is None
                and (p.status is None or p.status.phase in (None, "Pending", "Running"))}

    def replicas(self) -> list[Replica]:
        """Every pod of the Service that has an address, in a stable order (by pod name)."""
        pods = self._pods()
        slices = self._call("list endpointslices", self._discovery.list_namespaced_endpoint_slice, self.namespace,
                            label_selector=f"{SERVICE_NAME_LABEL}={self.service}").items
        found: dict[str, Replica] = {}
        for s in slices:
            port = next((p.port for p in s.ports or [] if p.name == HTTP_PORT_NAME), None)
            if port is None:
                continue
            for ep in s.endpoints or []:
                ref = ep.target_ref
                pod = pods.get(ref.name) if ref is not None and ref.kind == "Pod" else None
                if pod is None or not ep.addresses:
                    continue  # terminating, or not a pod of this Deployment
                ready = ep.conditions is None or ep.conditions.ready is not False  # unset means ready (API docs)
                found[pod.metadata.name] = Replica(
                    pod=pod.metadata.name, uid=pod.metadata.uid, address=ep.addresses[0], port=int(port),
                    in_service=ready, gate=_gate(pod), restarts=_restarts(pod))
        return [found[name] for name in sorted(found)]

    def gate(self, pod: str) -> bool | None:
        """``pod``'s SERVING_GATE condition (None: not set)."""
        return _gate(self._call("get pods", self._core.read_namespaced_pod, pod, self.namespace))

    def set_gate(self, pod: str, serving: bool, message: str) -> None:
        """Set SERVING_GATE on ``pod``: False takes it out of the Service, True lets it back in."""
        condition = {"type": SERVING_GATE, "status": "True" if serving else "False",
                     "reason": "RolloutServing" if serving else "RolloutDrained", "message": message,
                     "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        # A strategic merge patch: conditions merge by type, the kubelet's own conditions stay.
        self._call("patch pods/status", self._core.patch_namespaced_pod_status, pod, self.namespace,
                   {"status": {"conditions": [condition]}})

    def wait_in_service(self, pod: str, in_service: bool, deadline_s: float) -> Replica:
        """Wait until the EndpointSlice shows ``pod`` in (or out of) the Service's rotation."""
        end = time.monotonic() + deadline_s
        while True:
            replica = next((r for r in self.replicas() if r.pod == pod), None)
            if replica is None:
                raise FleetError(f"replica {pod} left Service {self.namespace}/{self.service} during the rollout "
                                 "(deleted or restarted)", hint="run the deploy again: it converges every replica")
            if replica.in_service == in_service:
                return replica
            if time.monotonic() >= end:
                raise FleetError(
                    f"replica {pod} is still {'out of' if in_service else 'in'} Service {self.namespace}/"
                    f"{self.service} {deadline_s:.0f}s after its {SERVING_GATE} condition was set "
                    f"{'True' if in_service else 'False'}",
                    hint="check that the Triton Deployment declares the readiness gate (k8s/triton.yaml) and "
                         f"`kubectl -n {self.namespace} describe pod {pod}` (probes, conditions)")
            time.sleep(0.1)


def _gate(pod: Any) -> bool | None:
    for c in (pod.status.conditions if pod.status else None) or []:
        if c.type == SERVING_GATE:
            return c.status == "True"
    return None


def _restarts(pod: Any) -> int:
    return sum(c.restart_count or 0 for c in (pod.status.container_statuses if pod.status else None) or [])
