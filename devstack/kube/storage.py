"""StorageClasses (storage.k8s.io/v1) and PVC binding, as the persistentvolume controller decides it.

A claim binds at once (Immediate binding: status.phase Bound, spec.volumeName, status.accessModes and
capacity) when its class (spec.storageClassName, or the default class when unset, as the
DefaultStorageClass admission plugin fills it) exists and offers every requested access mode. Otherwise it
stays Pending with the event the real controller records (pkg/controller/volume/persistentvolume
/pv_controller.go): FailedBinding "no persistent volumes available for this claim and no storage class is
set" without any class, ProvisioningFailed for a missing class or a mode its provisioner refuses (as a CSI
driver answers "Volume capabilities not supported"; default EBS classes refuse ReadWriteMany).

Which modes a class offers is the emulator-only parameter ``devstack.kube/access-modes`` (comma separated);
a class without it offers ReadWriteOnce only, like most block-storage provisioners. A claim given a host
folder (``KubeEmulator.create_pvc``, the config's ``pvcs``) is bound to it as to a pre-provisioned volume.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from .kubelet import HOST_PATH_ANNOTATION
from .store import Obj, Store, now_iso
from .tables import DEFAULT_CLASS_ANNOTATION

ACCESS_MODES_PARAM = "devstack.kube/access-modes"
PROVISIONER = "devstack.kube/host-path"
DEFAULT_CLASS: Obj = {
    "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
    "metadata": {"name": "standard", "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
    "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
    "parameters": {ACCESS_MODES_PARAM: "ReadWriteOnce,ReadWriteMany"},
}


def offered_modes(sc: Obj) -> set[str]:
    text = (sc.get("parameters") or {}).get(ACCESS_MODES_PARAM, "ReadWriteOnce")
    return {m.strip() for m in text.split(",") if m.strip()}


def default_class(store: Store) -> Obj | None:
    classes, _ = store.list("storageclasses")
    defaults = [c for c in classes if (c["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"]
    # With several defaults the newest wins (pkg/volume/util GetDefaultClass).
    return max(defaults, key=lambda c: c["metadata"].get("creationTimestamp", ""), default=None)


def default_storage_class(store: Store, pvc: Obj) -> None:
    """DefaultStorageClass admission: an unset storageClassName gets the default class at create."""
    spec = pvc.setdefault("spec", {})
    if spec.get("storageClassName") is None:
        sc = default_class(store)
        if sc is not None:
            spec["storageClassName"] = sc["metadata"]["name"]


def binding(store: Store, pvc: Obj) -> tuple[bool, str, str]:
    """(binds, event reason, message) for a claim, from the classes that exist now."""
    spec = pvc.get("spec") or {}
    if HOST_PATH_ANNOTATION in ((pvc.get("metadata") or {}).get("annotations") or {}):
        return True, "", ""  # given a host folder (create_pvc, the config's pvcs): a pre-provisioned volume
    name = spec.get("storageClassName")
    if not name:
        return False, "FailedBinding", "no persistent volumes available for this claim and no storage class is set"
    sc = store.find("storageclasses", "", name)
    if sc is None:
        return False, "ProvisioningFailed", f'storageclass.storage.k8s.io "{name}" not found'
    wanted = list(spec.get("accessModes") or [])
    missing = [m for m in wanted if m not in offered_modes(sc)]
    if missing:
        return False, "ProvisioningFailed", (
            f'failed to provision volume with StorageClass "{name}": rpc error: code = InvalidArgument desc = '
            f"Volume capabilities not supported: {', '.join(missing)} (the class offers "
            f"{', '.join(sorted(offered_modes(sc)))})")
    return True, "", ""


def bind(pvc: Obj, uid: str) -> None:
    """Mark the claim Bound to a volume named after its uid, as dynamic provisioning names it."""
    spec = pvc.setdefault("spec", {})
    spec["volumeName"] = f"pvc-{uid}"
    spec.setdefault("volumeMode", "Filesystem")
    pvc["status"] = {"phase": "Bound", "accessModes": list(spec.get("accessModes") or []),
                     "capacity": dict((spec.get("resources") or {}).get("requests") or {})}
    pvc["metadata"].setdefault("annotations", {}).update({
        "pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"})


def record_claim_event(store: Store, pvc: Obj, type_: str, reason: str, message: str) -> None:
    meta = pvc["metadata"]
    ts = now_iso()
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Event",
        # Named <object>.<unix nanoseconds in hex> as client-go's recorder does, so name order is time order.
        "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
        "involvedObject": {"kind": "PersistentVolumeClaim", "namespace": meta["namespace"], "name": meta["name"],
                           "uid": meta["uid"], "apiVersion": "v1", "resourceVersion": meta.get("resourceVersion", "")},
        "reason": reason, "message": message, "type": type_, "count": 1,
        "source": {"component": "persistentvolume-controller"}, "firstTimestamp": ts, "lastTimestamp": ts,
        "reportingComponent": "persistentvolume-controller", "reportingInstance": "",
    }
    with contextlib.suppress(Exception):  # the namespace may be going away
        store.create("events", meta["namespace"], obj)


def retry_pending(store: Store) -> None:
    """Bind the Pending claims that a class created or changed now satisfies (the controller's resync)."""
    claims, _ = store.list("persistentvolumeclaims")
    for pvc in claims:
        if (pvc.get("status") or {}).get("phase") != "Pending":
            continue
        ok, _, _ = binding(store, pvc)
        if ok:
            uid = pvc["metadata"]["uid"]
            store.mutate("persistentvolumeclaims", pvc["metadata"]["namespace"], pvc["metadata"]["name"],
                         lambda p, uid=uid: bind(p, uid))
