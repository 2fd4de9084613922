"""The emulator's API semantics over the store, independent of HTTP (transport.py carries requests here).

The core/v1 subset KubernetesPodOperator and the kubernetes clients use, plus storage.k8s.io/v1
StorageClasses and the RBAC objects (rbac.py enforces them; its reviews are answered by the transport):
discovery and /version, routing /api/v1 and /apis/<group>/<version> paths to (resource, namespace, name,
subresource), the verbs with what a real API server checks and defaults on create / replace / patch /
delete (pod validation and defaults, secrets' stringData, PVC binding against storage classes, graceful
pod deletion through the kubelet), ``dryRun=All`` (every check, nothing stored), ``fieldValidation``
(unknown fields against the upstream schemas), and JSON merge patch / JSON patch.
"""

from __future__ import annotations

import base64
import copy
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import jobs, rbac, services, storage, workloads
from .admission import admit_pod, create_default_service_account, publish_root_ca
from .events import record_pod_event
from .kubelet import HOST_PATH_ANNOTATION, Kubelet
from .openapi import OpenApi, unknown_fields
from .pod_status import update_ready
from .selectors import field_matcher, label_matcher
from .store import ApiError, Obj, Store, now_iso

GIT_VERSION = "v1.31.0"  # what /version reports; the kubernetes client does not gate on it


@dataclass(frozen=True)
class Resource:
    kind: str
    namespaced: bool
    group: str = ""
    version: str = "v1"
    short: list[str] = field(default_factory=list)
    read_only: bool = False  # nodes come from the emulator's config
    verbs: tuple[str, ...] = ()  # discovery verbs when not the usual ones (the create-only reviews)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gv_path(self) -> str:
        return f"apis/{self.group}/{self.version}" if self.group else f"api/{self.version}"


RESOURCES: dict[str, Resource] = {
    "pods": Resource("Pod", True, short=["po"]),
    "persistentvolumeclaims": Resource("PersistentVolumeClaim", True, short=["pvc"]),
    "secrets": Resource("Secret", True),
    "configmaps": Resource("ConfigMap", True, short=["cm"]),
    "serviceaccounts": Resource("ServiceAccount", True, short=["sa"]),
    "events": Resource("Event", True, short=["ev"]),
    "namespaces": Resource("Namespace", False, short=["ns"]),
    "nodes": Resource("Node", False, short=["no"], read_only=True),
    "storageclasses": Resource("StorageClass", False, group="storage.k8s.io", short=["sc"]),
    "jobs": Resource("Job", True, group="batch"),  # jobs.py: defaults, the controllers, cascading delete
    "cronjobs": Resource("CronJob", True, group="batch", short=["cj"]),
    # workloads.py: Deployments and their controller; services.py: Services, EndpointSlices, the proxy.
    "deployments": Resource("Deployment", True, group="apps", short=["deploy"]),
    "services": Resource("Service", True, short=["svc"]),
    "endpointslices": Resource("EndpointSlice", True, group="discovery.k8s.io"),
    # rbac.py: stored RBAC objects, and the reviews `kubectl auth can-i` creates (answered, not stored).
    "roles": Resource("Role", True, group=rbac.RBAC_GROUP),
    "rolebindings": Resource("RoleBinding", True, group=rbac.RBAC_GROUP),
    "clusterroles": Resource("ClusterRole", False, group=rbac.RBAC_GROUP),
    "clusterrolebindings": Resource("ClusterRoleBinding", False, group=rbac.RBAC_GROUP),
    **{plural: Resource(kind, False, group="authorization.k8s.io", verbs=("create",))
       for plural, kind in rbac.REVIEWS.items()},
}
NAMESPACED = {p: r.kind for p, r in RESOURCES.items() if r.namespaced}
GROUPS = {"storage.k8s.io": "v1"}  # the API groups besides core, with their one served version
GROUPS.update({rbac.RBAC_GROUP: "v1", "authorization.k8s.io": "v1"})
GROUPS.update({"batch": "v1", "apps": "v1", "discovery.k8s.io": "v1"})
# served with get / update / patch (pods/status too, below)
STATUS_SUBRESOURCES = ("jobs", "cronjobs", "deployments", "services")


def resources_of(gv_path: str) -> dict[str, Resource]:
    return {p: r for p, r in RESOURCES.items() if r.gv_path == gv_path}


def _resource_list(gv_path: str, group_version: str) -> Obj:
    out = []
    for plural, r in resources_of(gv_path).items():
        verbs = list(r.verbs) if r.verbs else ["get", "list", "watch"] if r.read_only else \
            ["create", "delete", "get", "list", "patch", "update", "watch"]
        entry = {"name": plural, "singularName": r.kind.lower(), "namespaced": r.namespaced, "kind": r.kind,
                 "verbs": verbs, "shortNames": r.short}
        if plural in ("pods", "jobs", "cronjobs", "deployments", "services"):
            entry["categories"] = ["all"]  # what `kubectl get all` expands to
        out.append(entry)
        if plural in STATUS_SUBRESOURCES:
            out.append({"name": f"{plural}/status", "singularName": "", "namespaced": r.namespaced, "kind": r.kind,
                        "verbs": ["get", "patch", "update"]})
        if plural == "deployments":  # what `kubectl scale` uses
            out.append({"name": "deployments/scale", "singularName": "", "namespaced": True, "group": "autoscaling",
                        "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
    if gv_path == "api/v1":
        out.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]})
        out.append({"name": "pods/status", "singularName": "", "namespaced": True, "kind": "Pod",
                    "verbs": ["get", "patch", "update"]})
        out.append({"name": "serviceaccounts/token", "singularName": "", "namespaced": True, "group":
                    "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": out}


def _group(name: str, version: str) -> Obj:
    gv = {"groupVersion": f"{name}/{version}", "version": version}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


def dry_run(q: dict[str, str]) -> bool:
    """dryRun=All (the only value the API defines); anything else is refused, as upstream does."""
    value = q.get("dryRun")
    if value in (None, ""):
        return False
    if value != "All":
        raise ApiError(400, "BadRequest", f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return True


class Api:
    """Request handling independent of HTTP plumbing."""

    def __init__(self, store: Store, kubelet: Kubelet, pvc_host_paths: dict[str, str], root_ca_pem: str = "") -> None:
        self.store = store
        self.root_ca_pem = root_ca_pem  # the TLS port's CA, published in every namespace (admission.py)
        self.kubelet = kubelet
        self.pvc_host_paths = pvc_host_paths
        self.openapi = OpenApi({gv: {p: (r.kind, r.namespaced, r.read_only) for p, r in resources_of(gv).items()}
                                for gv in {r.gv_path for r in RESOURCES.values()}})
        self._local = threading.local()  # per request thread: its fieldValidation=Warn findings

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
            return {"kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [_group(g, v) for g, v in GROUPS.items()]}
        if path == "/api/v1":
            return _resource_list("api/v1", "v1")
        for g, v in GROUPS.items():
            if path == f"/apis/{g}":
                return {"kind": "APIGroup", "apiVersion": "v1", **_group(g, v)}
            if path == f"/apis/{g}/{v}":
                return _resource_list(f"apis/{g}/{v}", f"{g}/{v}")
        if path in ("/healthz", "/livez", "/readyz"):
            return {"ok": True}
        return None

    # -- routing -------------------------------------------------------------------------------------

    @staticmethod
    def route(path: str) -> tuple[str, str | None, str | None, str | None]:
        """(resource, namespace, name, subresource) from /api/v1/... or /apis/<group>/<version>/... ."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and parts[1:2] == ["v1"]:
            gv_path, parts = "api/v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3 and GROUPS.get(parts[1]) == parts[2]:
            gv_path, parts = f"apis/{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        served = resources_of(gv_path)
        if not parts:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if parts[0] == "namespaces" and len(parts) >= 3:
            ns, resource, rest = parts[1], parts[2], parts[3:]
            if resource not in served or not served[resource].namespaced:
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({resource})")
            name = rest[0] if rest else None
            sub = rest[1] if len(rest) > 1 else None
            return resource, ns, name, sub
        resource = parts[0]
        if resource not in served:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({resource})")
        name = parts[1] if len(parts) > 1 else None
        if name and served[resource].namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return resource, None, name, parts[2] if len(parts) > 2 else None

    def ensure_namespace(self, ns: str | None) -> None:
        if ns and self.store.find("namespaces", "", ns) is None:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})

    @staticmethod
    def _read_only(resource: str) -> None:
        if RESOURCES[resource].read_only:
            raise ApiError(405, "MethodNotAllowed", f"{resource} are defined by the emulator's config")

    def check_fields(self, resource: str, obj: Obj, q: dict[str, str]) -> None:
        """fieldValidation: Strict rejects unknown fields, Warn (the default) reports them in a Warning
        header, Ignore drops them silently (apiserver pkg/endpoints/handlers/rest.go fieldValidation)."""
        mode = q.get("fieldValidation") or "Warn"
        if mode not in ("Strict", "Warn", "Ignore"):
            raise ApiError(400, "BadRequest", f"fieldValidation: Unsupported value: {mode!r}: supported values: "
                           '"Ignore", "Strict", "Warn"')
        if mode == "Ignore" or not isinstance(obj, dict):
            return
        r = RESOURCES[resource]
        unknown = [f'unknown field "{f}"' for f in unknown_fields(r.group, r.version, r.kind, obj)]
        if not unknown:
            return
        if mode == "Strict":
            raise ApiError(400, "BadRequest", f'{r.kind} in version "{r.version}" cannot be handled as a '
                           f"{r.kind}: strict decoding error: {', '.join(unknown)}")
        self.warnings().extend(unknown)

    def warnings(self) -> list[str]:
        """The Warning header values of the request this thread is handling (the transport clears them)."""
        if not hasattr(self._local, "warnings"):
            self._local.warnings = []
        return self._local.warnings

    # -- verbs ---------------------------------------------------------------------------------------

    def get(self, resource: str, ns: str | None, name: str) -> Obj:
        return self.with_kind(resource, self.store.get(resource, ns or "", name))

    def list_items(self, resource: str, ns: str | None, q: dict[str, str]) -> tuple[list[Obj], int]:
        labels, fields = label_matcher(q.get("labelSelector")), field_matcher(resource, q.get("fieldSelector"))
        items, rv = self.store.list(resource, ns)
        return [self.with_kind(resource, o) for o in items if labels(o) and fields(o)], rv

    def list(self, resource: str, ns: str | None, q: dict[str, str]) -> Obj:
        items, rv = self.list_items(resource, ns, q)
        r = RESOURCES[resource]
        return {"kind": f"{r.kind}List", "apiVersion": r.api_version, "metadata": {"resourceVersion": str(rv)},
                "items": items}

    def create(self, resource: str, ns: str | None, body: Obj, q: dict[str, str] | None = None) -> Obj:
        q = q or {}
        self._read_only(resource)
        dry = dry_run(q)
        self.ensure_namespace(ns)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request must be an object")
        self.check_fields(resource, body, q)
        body_ns = (body.get("metadata") or {}).get("namespace")
        if ns and body_ns and body_ns != ns:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                           "sent on the request")
        body = copy.deepcopy(body)
        body.pop("status", None)
        body["apiVersion"] = RESOURCES[resource].api_version
        body["kind"] = RESOURCES[resource].kind
        uid = str(uuid.uuid4())
        claim_problem: tuple[str, str] | None = None
        if resource == "pods":
            self._default_pod(body)
            admit_pod(self.store, ns or "", body)  # admission.py: the ServiceAccount must exist
        elif resource == "secrets":
            data = dict(body.get("data") or {})
            for k, v in (body.pop("stringData", None) or {}).items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            body["data"] = data
            body.setdefault("type", "Opaque")
        elif resource == "namespaces":
            body["status"] = {"phase": "Active"}
        elif resource == "jobs":
            jobs.default_job(body, uid)
        elif resource == "cronjobs":
            jobs.default_cronjob(body)
        elif resource == "deployments":
            workloads.default_deployment(body)
        elif resource == "services":
            services.default_service(body, self.kubelet.network, dry_run=dry)
        elif resource == "endpointslices":
            services.validate_slice(body)
        elif resource in ("rolebindings", "clusterrolebindings"):
            rbac.validate(resource, body)
        elif resource == "storageclasses":
            if not body.get("provisioner"):
                raise ApiError(422, "Invalid", f'StorageClass "{(body.get("metadata") or {}).get("name", "")}" is '
                               "invalid: provisioner: Required value")
            body.setdefault("reclaimPolicy", "Delete")
            body.setdefault("volumeBindingMode", "Immediate")
        elif resource == "persistentvolumeclaims":
            body.setdefault("metadata", {})
            storage.default_storage_class(self.store, body)
            body["spec"].setdefault("volumeMode", "Filesystem")
            name = body["metadata"].get("name", "")
            host = self.pvc_host_paths.get(f"{ns}/{name}") or self.pvc_host_paths.get(name)
            if host:
                body["metadata"].setdefault("annotations", {})[HOST_PATH_ANNOTATION] = host
            ok, reason, message = storage.binding(self.store, body)
            if ok:
                storage.bind(body, uid)
            else:
                body["status"] = {"phase": "Pending"}
                claim_problem = (reason, message)
        created = self.store.create(resource, ns or "", body, uid=uid, dry_run=dry)
        if not dry and claim_problem is not None:
            storage.record_claim_event(self.store, created, "Warning", *claim_problem)
        if not dry and resource == "storageclasses":
            storage.retry_pending(self.store)
        if not dry and resource == "namespaces":
            create_default_service_account(self.store, created["metadata"]["name"])
            if self.root_ca_pem:
                publish_root_ca(self.store, created["metadata"]["name"], self.root_ca_pem)
        return self.with_kind(resource, created)

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

    def replace(self, resource: str, ns: str | None, name: str, body: Obj, q: dict[str, str] | None = None) -> Obj:
        q = q or {}
        self._read_only(resource)
        dry = dry_run(q)
        current = self.store.get(resource, ns or "", name)
        self.check_fields(resource, body, q)
        body = copy.deepcopy(body)
        self._guard_update(resource, current, body)
        stored = self.store.replace(resource, ns or "", name, body, check_rv=True, dry_run=dry)
        if not dry and resource == "storageclasses":
            storage.retry_pending(self.store)
        return self.with_kind(resource, stored)

    def patch(self, resource: str, ns: str | None, name: str, body: Any, content_type: str,
              q: dict[str, str] | None = None) -> Obj:
        q = q or {}
        self._read_only(resource)
        dry = dry_run(q)
        current = self.store.get(resource, ns or "", name)
        if "json-patch" in content_type:
            new = json_patch(current, body)
        elif "strategic-merge-patch" in content_type:
            # Strategic merge is applied as a JSON merge patch (list fields are replaced, not merged by
            # key), without the $-directives kubectl adds (apimachinery pkg/util/strategicpatch).
            new = merge_patch(current, strip_directives(body))
        elif "merge-patch" in content_type:
            new = merge_patch(current, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format "
                           f"- accepted media types include: application/json-patch+json, "
                           f"application/merge-patch+json, application/strategic-merge-patch+json ({content_type})")
        self.check_fields(resource, new, q)
        self._guard_update(resource, current, new)
        stored = self.store.replace(resource, ns or "", name, new, check_rv=True, dry_run=dry)
        if not dry and resource == "storageclasses":
            storage.retry_pending(self.store)
        return self.with_kind(resource, stored)

    @staticmethod
    def _guard_update(resource: str, current: Obj, new: Obj) -> None:
        if resource in ("pods", "namespaces", "persistentvolumeclaims", *STATUS_SUBRESOURCES):
            new["status"] = current.get("status")  # status is a subresource, ignored on the main resource
        if resource == "deployments":
            workloads.on_update(current, new)
        elif resource == "services":
            services.on_update(current, new)
        elif resource == "endpointslices":
            services.validate_slice(new)
        if resource == "secrets" and "stringData" in new:
            # Folded into data on every write, not only on create (pkg/apis/core/v1 conversion).
            data = dict(new.get("data") or {})
            for k, v in (new.pop("stringData") or {}).items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            new["data"] = data
        rbac.validate(resource, new, current)
        if resource == "persistentvolumeclaims" and (current.get("spec") or {}).get("volumeName"):
            new.setdefault("spec", {})["volumeName"] = current["spec"]["volumeName"]
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
        self._read_only(resource)
        dry = dry_run(q) or (body or {}).get("dryRun") == ["All"]
        current = self.store.get(resource, ns or "", name)
        if dry:
            # Nothing goes: answer the object as the delete would leave it (a pod being stopped, or gone).
            return self.with_kind(resource, current)
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
        if resource in jobs.DEPENDENTS:
            jobs.cascade(self, resource, ns or "", current, q, body)  # ownerReference garbage collection
        return self.with_kind(resource, self.store.delete(resource, ns or "", name))

    def write_status(self, resource: str, ns: str | None, name: str, body: Any, content_type: str | None,
                     q: dict[str, str] | None = None) -> Obj:
        """PUT (content_type None) or PATCH of the status subresource: only .status changes."""
        q = q or {}
        if resource not in (*STATUS_SUBRESOURCES, "pods"):
            raise ApiError(405, "MethodNotAllowed", f"{resource}/status is read-only in the emulator")
        dry = dry_run(q)
        current = self.store.get(resource, ns or "", name)
        if content_type is None:
            new = copy.deepcopy(body) if isinstance(body, dict) else {}
        elif "json-patch" in content_type:
            new = json_patch(current, body)
        else:
            patch = strip_directives(body)
            if resource == "pods" and "strategic" in (content_type or "") and isinstance(patch, dict):
                patch = _merge_conditions(current, patch)
            new = merge_patch(current, patch)
        out = copy.deepcopy(current)
        out["status"] = new.get("status") or {}
        if content_type is None and (new.get("metadata") or {}).get("resourceVersion"):
            out["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"]
        if resource == "pods" and out["status"].get("phase") == "Running":
            # A readiness gate's condition written here: the kubelet's status manager folds it into Ready.
            update_ready(out)
        stored = self.store.replace(resource, ns or "", name, out, check_rv=True, dry_run=dry)
        return self.with_kind(resource, stored)

    def scale(self, ns: str | None, name: str, body: Any, content_type: str | None,
              q: dict[str, str] | None = None) -> Obj:
        """deployments/{name}/scale: GET (body None), PUT (content_type None) or PATCH of an autoscaling/v1
        Scale; only spec.replicas is written back to the Deployment."""
        q = q or {}
        current = self.store.get("deployments", ns or "", name)
        view = workloads.scale_of(current)
        if body is None:
            return view
        if content_type is None:
            new = body if isinstance(body, dict) else {}
        elif "json-patch" in content_type:
            new = json_patch(view, body)
        else:
            new = merge_patch(view, strip_directives(body))
        replicas = (new.get("spec") or {}).get("replicas")
        sent_rv = (new.get("metadata") or {}).get("resourceVersion") if content_type is None else None
        deploy = copy.deepcopy(current)
        deploy["spec"]["replicas"] = replicas
        if sent_rv:
            deploy["metadata"]["resourceVersion"] = sent_rv
        self._guard_update("deployments", current, deploy)
        stored = self.store.replace("deployments", ns or "", name, deploy, check_rv=True, dry_run=dry_run(q))
        return workloads.scale_of(stored)

    @staticmethod
    def with_kind(resource: str, obj: Obj) -> Obj:
        obj.setdefault("apiVersion", RESOURCES[resource].api_version)
        obj.setdefault("kind", RESOURCES[resource].kind)
        return obj


def _merge_conditions(current: Obj, patch: Obj) -> Obj:
    """status.conditions is a list merged by ``type`` under a strategic merge patch (patchMergeKey in
    k8s.io/api/core/v1 PodStatus): fold the patch's conditions into the current ones before the merge."""
    conds = (patch.get("status") or {}).get("conditions")
    if not isinstance(conds, list):
        return patch
    merged = copy.deepcopy((current.get("status") or {}).get("conditions") or [])
    for cond in conds:
        at = next((i for i, c in enumerate(merged) if c.get("type") == cond.get("type")), None)
        if at is None:
            merged.append(cond)
        else:
            merged[at] = merge_patch(merged[at], cond)
    return {**patch, "status": {**patch["status"], "conditions": merged}}


def strip_directives(patch: Any) -> Any:
    """A strategic merge patch without its $patch / $setElementOrder / $retainKeys / ... directives."""
    if isinstance(patch, dict):
        return {k: strip_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [strip_directives(v) for v in patch]
    return patch


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
