"""apps/v1 Deployments: API defaults, the scale subresource, and a controller that keeps the pods.

Follows upstream kubernetes v1.31: pkg/apis/apps/v1/defaults.go (strategy, revisionHistoryLimit,
progressDeadlineSeconds), pkg/registry/apps/deployment/strategy.go (generation bumped on spec changes,
selector must match the template labels), pkg/controller/deployment (rolling update bounded by maxSurge /
maxUnavailable, the Available / Progressing conditions, the status counts ``kubectl rollout status``
reads) and pkg/controller/replicaset (pods from the template, a deleted or failed pod replaced, surplus
pods removed not-ready first, newest first).

Simplification, said plainly: there is no ReplicaSet layer. The controller owns the pods directly
(ownerReference kind Deployment) and tells template revisions apart by the ``pod-template-hash`` label it
computes as the ReplicaSet controller would name them, so ``kubectl get/scale/rollout status`` work but
``kubectl rollout history/undo`` and ``kubectl get rs`` do not. A failed pod is deleted when it is
replaced (upstream leaves it to the terminated-pod garbage collector). minReadySeconds is honoured as 0.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import tables
from .controller import Controller
from .store import ApiError, Obj, now_iso

if TYPE_CHECKING:
    pass

TEMPLATE_HASH_LABEL = "pod-template-hash"
POLL_S = 0.1


def _invalid(name: str, problem: str) -> ApiError:
    return ApiError(422, "Invalid", f'Deployment.apps "{name}" is invalid: {problem}')


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    """matchLabels and matchExpressions (In / NotIn / Exists / DoesNotExist) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator"), expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(op)
        if not ok:
            return False
    return True


def default_deployment(body: Obj) -> None:
    """SetDefaults_Deployment and the create validation that matters here (selector vs template labels)."""
    meta = body.setdefault("metadata", {})
    name = meta.get("name") or meta.get("generateName", "")
    spec = body.setdefault("spec", {})
    selector = spec.get("selector")
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        raise _invalid(name, "spec.selector: Required value")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not _selects(selector, labels):
        raise _invalid(name, "spec.template.metadata.labels: Invalid value: "
                       f"{json.dumps(labels)}: `selector` does not match template `labels`")
    if not ((template.get("spec") or {}).get("containers")):
        raise _invalid(name, "spec.template.spec.containers: Required value")
    policy = (template.get("spec") or {}).get("restartPolicy") or "Always"
    if policy != "Always":
        raise _invalid(name, f'spec.template.spec.restartPolicy: Unsupported value: "{policy}": supported values: '
                       '"Always"')
    replicas = spec.setdefault("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        raise _invalid(name, f"spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0")
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
        if rolling["maxSurge"] in (0, "0%") and rolling["maxUnavailable"] in (0, "0%"):
            raise _invalid(name, "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when "
                           "`maxSurge` is 0")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    _default_template(spec)
    body["status"] = {}


def _default_template(spec: Obj) -> None:
    """The pod template's defaults, applied on every write as the API server's defaulting is, so a client
    that sends the manifest without them does not change the template (and restart every pod)."""
    pod_spec = spec.setdefault("template", {}).setdefault("spec", {})
    pod_spec.setdefault("restartPolicy", "Always")
    pod_spec.setdefault("terminationGracePeriodSeconds", 30)
    pod_spec.setdefault("dnsPolicy", "ClusterFirst")
    pod_spec.setdefault("schedulerName", "default-scheduler")
    pod_spec.setdefault("securityContext", {})


def on_update(current: Obj, new: Obj) -> None:
    """A spec change bumps metadata.generation (the controller's observedGeneration follows); the selector
    is immutable in apps/v1."""
    name = current["metadata"]["name"]
    spec = new.get("spec") or {}
    if spec.get("selector") != (current.get("spec") or {}).get("selector"):
        raise _invalid(name, "spec.selector: Invalid value: field is immutable")
    replicas = spec.setdefault("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        raise _invalid(name, f"spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0")
    strategy = spec.setdefault("strategy", {})
    if strategy.setdefault("type", "RollingUpdate") == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    for key, default in (("revisionHistoryLimit", 10), ("progressDeadlineSeconds", 600)):
        spec.setdefault(key, default)
    _default_template(spec)
    new.setdefault("metadata", {})["generation"] = int(current["metadata"].get("generation") or 1) + \
        int(spec != current.get("spec"))


def scale_of(deploy: Obj) -> Obj:
    """The autoscaling/v1 Scale view of a Deployment (what ``kubectl scale`` reads and writes)."""
    meta = deploy["metadata"]
    selector = (deploy.get("spec") or {}).get("selector") or {}
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in meta},
            "spec": {"replicas": (deploy.get("spec") or {}).get("replicas", 1)},
            "status": {"replicas": (deploy.get("status") or {}).get("replicas", 0),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or
                                                                           {}).items()))}}


def template_hash(template: Obj) -> str:
    """A short stable hash of the pod template (upstream: fnv of the template, rendered with SafeEncodeString)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand SafeEncodeString's alphabet
    return "".join(alphabet[b % len(alphabet)] for b in digest[:10])


def _count(value: Any, replicas: int, *, up: bool) -> int:
    """An int-or-percent of replicas (intstr.GetScaledValueFromIntOrPercent): surge rounds up, unavailable down."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(\d+)%", str(value))
    if not m:
        return int(value)
    scaled = int(m[1]) * replicas / 100
    return math.ceil(scaled) if up else math.floor(scaled)


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _controller_uid(obj: Obj) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _condition(type_: str, status: str, reason: str, message: str, old: Obj | None) -> Obj:
    now = now_iso()
    same = old is not None and old.get("status") == status
    return {"type": type_, "status": status, "lastUpdateTime": now if not (same and old and old.get("reason") ==
                                                                           reason) else old.get("lastUpdateTime", now),
            "lastTransitionTime": old.get("lastTransitionTime", now) if same and old else now,
            "reason": reason, "message": message}


class DeploymentController(Controller):
    """One thread syncing every Deployment with its pods, on each store change (and a short poll)."""

    name = "deployment-controller"
    pause_s = POLL_S

    def steps(self) -> list[Callable[[], None]]:
        return [self.sync]

    def sync(self) -> None:
        deploys, _ = self.store.list("deployments")
        pods, _ = self.store.list("pods")
        owned: dict[str, list[Obj]] = {}
        for pod in pods:
            uid = _controller_uid(pod)
            if uid:
                owned.setdefault(uid, []).append(pod)
        live = set()
        for d in deploys:
            live.add(d["metadata"]["uid"])
            self._sync_one(d, owned.get(d["metadata"]["uid"], []))
        # Garbage collection (Background propagation): pods whose Deployment is gone.
        for pod in pods:
            refs = [r for r in pod["metadata"].get("ownerReferences") or [] if r.get("kind") == "Deployment"]
            if refs and all(r.get("uid") not in live for r in refs) and not pod["metadata"].get("deletionTimestamp"):
                self._delete(pod)

    def _delete(self, pod: Obj) -> None:
        with contextlib.suppress(ApiError):
            self.api.delete("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], {}, None)

    def _new_pod(self, d: Obj, pod_hash: str) -> Obj:
        template = copy.deepcopy(d["spec"].get("template") or {})
        meta = template.get("metadata") or {}
        name = d["metadata"]["name"]
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": f"{name}-{pod_hash}-",
                         "labels": {**(meta.get("labels") or {}), TEMPLATE_HASH_LABEL: pod_hash},
                         "annotations": meta.get("annotations") or {},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                              "uid": d["metadata"]["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": template.get("spec") or {},
        }

    def _sync_one(self, d: Obj, pods: list[Obj]) -> None:
        meta, spec = d["metadata"], d.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        replicas = int(spec.get("replicas", 1))
        pod_hash = template_hash(spec.get("template") or {})
        failed = [p for p in pods if (p.get("status") or {}).get("phase") in ("Failed", "Succeeded")]
        for p in failed:
            self._delete(p)  # replaced below: it no longer counts
        active = [p for p in pods if p not in failed and not p["metadata"].get("deletionTimestamp")]
        new = [p for p in active if (p["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL) == pod_hash]
        old = [p for p in active if p not in new]
        if spec.get("paused"):
            self._write_status(d, new, old, 0, replicas)
            return
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            # Every old pod goes, and the new ones start only once none of the old revision is left.
            for p in old:
                self._delete(p)
            leftover = any((p["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL) != pod_hash
                           for p in pods if p not in failed)
            unavailable, to_create = replicas, 0 if leftover else max(replicas - len(new), 0)
            old = []
        else:
            rolling = strategy.get("rollingUpdate") or {}
            surge = _count(rolling.get("maxSurge", "25%"), replicas, up=True)
            unavailable = _count(rolling.get("maxUnavailable", "25%"), replicas, up=False)
            if surge == 0 and unavailable == 0:
                unavailable = 1  # validation refuses both 0; a 0% + 0% of few replicas rounds to this
            # rolling.go reconcileNewReplicaSet: the new revision grows within replicas + maxSurge.
            room = replicas + surge - len(new) - len(old) if old else replicas - len(new)
            to_create = max(min(replicas - len(new), room), 0)
        created = 0
        for _ in range(to_create):
            try:
                self.api.create("pods", ns, self._new_pod(d, pod_hash))
            except ApiError as exc:
                print(f"deployment controller: {ns}/{name}: creating a pod: {exc.message}", flush=True)
                break
            created += 1
        # reconcileOldReplicaSets: old pods go while at least replicas - maxUnavailable stay ready; a
        # not-ready one can always go.
        min_available = max(replicas - unavailable, 0)
        available = sum(1 for p in new + old if _ready(p))
        for p in sorted(old, key=lambda p: (_ready(p), p["metadata"].get("creationTimestamp", ""))):
            if _ready(p) and available - 1 < min_available:
                break
            self._delete(p)
            available -= int(_ready(p))
            old.remove(p)
        # Scaled down: the surplus of the new revision goes, not-ready first, then the newest.
        surplus = len(new) - replicas
        if surplus > 0:
            newest_first = sorted(new, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
            for p in sorted(newest_first, key=_ready)[:surplus]:
                self._delete(p)
                new.remove(p)
        self._write_status(d, new, old, created, replicas)

    def _write_status(self, d: Obj, new: list[Obj], old: list[Obj], created: int, replicas: int) -> None:
        status = copy.deepcopy(d.get("status") or {})
        total = len(new) + len(old) + created
        ready = sum(1 for p in new + old if _ready(p))
        updated = len(new) + created
        unavailable = max(replicas - ready, 0)
        olds = {c["type"]: c for c in status.get("conditions") or []}
        rolling = (d.get("spec") or {}).get("strategy", {}).get("rollingUpdate") or {}
        max_unavailable = _count(rolling.get("maxUnavailable", "25%"), replicas, up=False)
        name = d["metadata"]["name"]
        pod_hash = template_hash(d["spec"].get("template") or {})
        has_min = ready >= replicas - max_unavailable
        conditions = [
            _condition("Available", "True" if has_min else "False",
                       "MinimumReplicasAvailable" if has_min else "MinimumReplicasUnavailable",
                       "Deployment has minimum availability." if has_min else
                       "Deployment does not have minimum availability.", olds.get("Available")),
        ]
        complete = updated == replicas and ready == replicas and not old and total == replicas
        conditions.append(_condition(
            "Progressing", "True", "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
            f'ReplicaSet "{name}-{pod_hash}" has successfully progressed.' if complete else
            f'ReplicaSet "{name}-{pod_hash}" is progressing.', olds.get("Progressing")))
        status.update({"observedGeneration": int(d["metadata"].get("generation") or 1), "replicas": total,
                       "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
                       "unavailableReplicas": unavailable, "conditions": conditions})
        for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"):
            if not status[key]:
                status.pop(key)  # omitempty, as the real status reads
        if _without_times(status) == _without_times(d.get("status") or {}):
            return

        def write(o: Obj) -> None:
            o["status"] = status
        self.store.mutate("deployments", d["metadata"]["namespace"], name, write)


def _without_times(status: Obj) -> Obj:
    out = copy.deepcopy(status)
    for c in out.get("conditions") or []:
        c.pop("lastUpdateTime", None)
    return out


def _deployment_cells(d: Obj) -> list[Any]:
    """printDeployment: READY is ready/desired, UP-TO-DATE, AVAILABLE, AGE (+ containers, images, selector)."""
    spec, status = d.get("spec") or {}, d.get("status") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    containers = pod_spec.get("containers") or []
    selector = ",".join(f"{k}={v}" for k, v in sorted(((spec.get("selector") or {}).get("matchLabels") or
                                                        {}).items()))
    return [d["metadata"]["name"], f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
            status.get("updatedReplicas", 0), status.get("availableReplicas", 0),
            tables.since(d["metadata"].get("creationTimestamp")), ",".join(c.get("name", "") for c in containers),
            ",".join(c.get("image", "") for c in containers), selector]


tables.PRINTERS["deployments"] = (
    [tables.NAME, tables._col("Ready"), tables._col("Up-to-date", "integer"), tables._col("Available", "integer"),
     tables.AGE, tables._col("Containers", priority=1), tables._col("Images", priority=1),
     tables._col("Selector", priority=1)], _deployment_cells)
