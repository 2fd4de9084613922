"""The emulator's scheduler: the node model, resource quantities, and the loop that binds pods to nodes.

Scheduling checks what a real scheduler checks first: nodeSelector, required node affinity, taints vs
tolerations, resource requests (cpu, memory, extended resources such as nvidia.com/gpu) against what
running pods already hold, and that referenced PVCs exist and are Bound. A pod nothing fits stays Pending with
``PodScheduled=False, reason=Unschedulable`` and a FailedScheduling event, and is retried as pods end.
A bound pod goes to the kubelet (kubelet.py), which runs it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from decimal import Decimal

from .events import record_pod_event
from .kubelet import Kubelet
from .pod_status import set_condition
from .store import Obj, Store, now_iso

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
           "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QTY = re.compile(r"^([+-]?[0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][0-9]+)?$")


def parse_quantity(text: object) -> Decimal:
    m = _QTY.match(str(text).strip())
    if not m:
        raise ValueError(f"invalid quantity {text!r}")
    number, suffix = Decimal(m[1]), m[2] or ""
    if suffix[:1] in ("e", "E"):
        return number * (Decimal(10) ** int(suffix[1:]))
    return number * Decimal(_SUFFIX[suffix])


@dataclass
class Node:
    name: str
    labels: dict[str, str]
    capacity: dict[str, str]
    taints: list[dict[str, str]] = field(default_factory=list)

    def to_object(self) -> Obj:
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name, **self.labels}},
            "spec": {"taints": self.taints} if self.taints else {},
            "status": {
                "capacity": dict(self.capacity), "allocatable": dict(self.capacity),
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "emulated kubelet is posting ready status",
                                "lastHeartbeatTime": now_iso(), "lastTransitionTime": now_iso()}],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": self.name}],
                "nodeInfo": {"kubeletVersion": "v1.31.0-devstack", "operatingSystem": "linux",
                             "architecture": "amd64", "containerRuntimeVersion": "bwrap://emulated"},
            },
        }


def pod_requests(pod: Obj) -> dict[str, Decimal]:
    """Effective requests: max(largest init container, sum of containers); limits stand in for requests."""
    def of(container: Obj) -> dict[str, Decimal]:
        res = container.get("resources") or {}
        merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        return {k: parse_quantity(v) for k, v in merged.items()}

    total: dict[str, Decimal] = {}
    for c in pod["spec"].get("containers", []):
        for k, v in of(c).items():
            total[k] = total.get(k, Decimal(0)) + v
    for c in pod["spec"].get("initContainers") or []:
        for k, v in of(c).items():
            total[k] = max(total.get(k, Decimal(0)), v)
    return total


def _tolerates(tolerations: list[Obj], taint: dict[str, str]) -> bool:
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _affinity_ok(pod: Obj, labels: dict[str, str]) -> bool:
    required = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        return True

    def expr_ok(e: Obj) -> bool:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        return {"In": lambda: labels.get(key) in values, "NotIn": lambda: labels.get(key) not in values,
                "Exists": lambda: key in labels, "DoesNotExist": lambda: key not in labels}.get(op, lambda: False)()

    return any(all(expr_ok(e) for e in t.get("matchExpressions") or []) for t in terms)


def _waiting_status(c: Obj, reason: str) -> Obj:
    return {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
            "started": False, "state": {"waiting": {"reason": reason}},
            "lastState": {}}  # always present on a cluster: Go's omitempty does not drop an empty struct


class Scheduler:
    """One thread that binds each unbound pod to the first node it fits, or marks it Unschedulable."""

    def __init__(self, store: Store, kubelet: Kubelet, *, nodes: list[Node]) -> None:
        self.store = store
        self.kubelet = kubelet
        self.nodes = nodes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._schedule_loop, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _schedule_loop(self) -> None:
        seen = -1
        while not self._stop.is_set():
            self.store.wait(seen, timeout=1.0)
            seen = self.store.resource_version
            pods, _ = self.store.list("pods")
            for pod in pods:
                meta, spec = pod["metadata"], pod["spec"]
                if spec.get("nodeName") or meta.get("deletionTimestamp"):
                    if spec.get("nodeName") and pod["status"].get("phase") == "Pending":
                        # Created with nodeName already set (bypasses the scheduler); launch runs a pod once.
                        self.kubelet.launch(pod)
                    continue
                self._try_schedule(pod)

    def _try_schedule(self, pod: Obj) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        node, reason = self._pick_node(pod)
        if node is None:
            def unschedulable(p: Obj) -> None:
                set_condition(p, "PodScheduled", "False", "Unschedulable", reason)
            before = self.store.find("pods", ns, name)
            after = self.store.mutate("pods", ns, name, unschedulable)
            if before and after and before["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"]:
                record_pod_event(self.store, pod, "Warning", "FailedScheduling", reason, component="default-scheduler")
            return

        def bind(p: Obj) -> None:
            p["spec"]["nodeName"] = node.name
            ip = self.kubelet.network.assign(p["metadata"]["uid"])  # the pod's own loopback IP (network.py)
            p["status"].update({"hostIP": "127.0.0.1", "podIP": ip, "startTime": now_iso(),
                                "podIPs": [{"ip": ip}], "hostIPs": [{"ip": "127.0.0.1"}]})
            set_condition(p, "PodScheduled", "True")
            set_condition(p, "Initialized", "False" if p["spec"].get("initContainers") else "True",
                          "ContainersNotInitialized" if p["spec"].get("initContainers") else None)
            set_condition(p, "ContainersReady", "False", "ContainersNotReady")
            set_condition(p, "Ready", "False", "ContainersNotReady")
            p["status"]["containerStatuses"] = [_waiting_status(c, "ContainerCreating")
                                                for c in p["spec"]["containers"]]
            if p["spec"].get("initContainers"):
                p["status"]["initContainerStatuses"] = [_waiting_status(c, "PodInitializing")
                                                        for c in p["spec"]["initContainers"]]
        bound = self.store.mutate("pods", ns, name, bind)
        if bound is not None:
            record_pod_event(self.store, bound, "Normal", "Scheduled",
                             f"Successfully assigned {ns}/{name} to {node.name}", component="default-scheduler")
            self.kubelet.launch(bound)

    def _pick_node(self, pod: Obj) -> tuple[Node | None, str]:
        spec = pod["spec"]
        ns = pod["metadata"]["namespace"]
        for vol in spec.get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            found = self.store.find("persistentvolumeclaims", ns, claim)
            if found is None:
                return None, f'0/{len(self.nodes)} nodes are available: persistentvolumeclaim "{claim}" not found.'
            # pkg/scheduler/framework/plugins/volumebinding: an unbound claim (no WaitForFirstConsumer here)
            # blocks scheduling. A claim without status.phase counts as Bound (older emulator objects).
            if ((found.get("status") or {}).get("phase") or "Bound") != "Bound":
                return None, (f"0/{len(self.nodes)} nodes are available: pod has unbound immediate "
                              "PersistentVolumeClaims. preemption: not emulated (devstack emulator).")
        wanted = pod_requests(pod)
        used = self._usage()
        reasons: dict[str, int] = {}
        for node in self.nodes:
            labels = {"kubernetes.io/hostname": node.name, **node.labels}
            problem = None
            if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()) or \
                    not _affinity_ok(pod, labels):
                problem = "node(s) didn't match Pod's node affinity/selector"
            else:
                for taint in node.taints:
                    if taint.get("effect") in ("NoSchedule", "NoExecute") and \
                            not _tolerates(spec.get("tolerations") or [], taint):
                        problem = f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
                        break
            if problem is None:
                for res, qty in sorted(wanted.items()):
                    have = parse_quantity(node.capacity.get(res, "0")) - used.get(node.name, {}).get(res, 0)
                    if qty > have:
                        problem = f"Insufficient {res}"
                        break
            if problem is None:
                return node, ""
            reasons[problem] = reasons.get(problem, 0) + 1
        detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        return None, (f"0/{len(self.nodes)} nodes are available: {detail}. preemption: not emulated "
                      "(devstack emulator).")

    def _usage(self) -> dict[str, dict[str, Decimal]]:
        used: dict[str, dict[str, Decimal]] = {}
        pods, _ = self.store.list("pods")
        for p in pods:
            node = p["spec"].get("nodeName")
            if node and p["status"].get("phase") not in ("Succeeded", "Failed"):
                bucket = used.setdefault(node, {})
                for k, v in pod_requests(p).items():
                    bucket[k] = bucket.get(k, Decimal(0)) + v
        return used
