"""What the API server's admission and the controller-manager add around pods: ServiceAccounts and their tokens.

- Every namespace gets a ServiceAccount ``default`` when it is created, as the controller-manager's
  serviceaccounts controller does (pkg/controller/serviceaccount/serviceaccounts_controller.go); the
  emulator creates it synchronously, so a pod created right after its namespace is not refused.
- A pod whose ServiceAccount does not exist is refused at create with 403 Forbidden, as the
  ServiceAccount admission plugin does (plugin/pkg/admission/serviceaccount/admission.go: "error looking
  up service account ns/name: ..." wrapped by admission.NewForbidden).
- Unless ``automountServiceAccountToken: false`` (the pod's setting wins over its ServiceAccount's), the
  same plugin adds the projected volume ``kube-api-access-<5 chars>`` (a bound ServiceAccount token valid
  3607 s, ConfigMap kube-root-ca.crt's ca.crt, the namespace from the downward API) and mounts it read-only
  at /var/run/secrets/kubernetes.io/serviceaccount in every container and init container without a mount
  there (admission.go mountServiceAccountToken / TokenVolumeSource); the kubelet fills it (kubelet.py).
- Every namespace gets ConfigMap ``kube-root-ca.crt`` holding the API server's CA, as the
  controller-manager's root-ca-cert-publisher does (pkg/controller/certificates/rootcacertpublisher), so
  ``kubernetes.config.load_incluster_config()`` in a pod trusts the emulator's TLS port.
"""

from __future__ import annotations

import contextlib
import secrets

from .store import ApiError, Obj, Store

DEFAULT_SERVICE_ACCOUNT = "default"
# Where the ServiceAccount admission plugin mounts the token volume (admission.go DefaultAPITokenMountPath).
SA_TOKEN_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_TOKEN_VOLUME_PREFIX = "kube-api-access-"  # ServiceAccountVolumeName + "-", then 5 generated characters
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
# serviceaccount.WarnOnlyBoundTokenExpirationSeconds: an hour and 7 s, which marks tokens kubelet refreshes.
SA_TOKEN_EXPIRATION_S = 3607
# apimachinery names.SimpleNameGenerator's alphabet (no vowels, no look-alike digits), 5 characters.
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def create_default_service_account(store: Store, namespace: str) -> None:
    with contextlib.suppress(ApiError):  # already there (a namespace re-created with its objects kept)
        store.create("serviceaccounts", namespace, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                   "metadata": {"name": DEFAULT_SERVICE_ACCOUNT}})


def publish_root_ca(store: Store, namespace: str, ca_pem: str) -> None:
    """ConfigMap kube-root-ca.crt with the API server's CA in ``namespace`` (root-ca-cert-publisher)."""
    with contextlib.suppress(ApiError):  # already there (a namespace re-created with its objects kept)
        store.create("configmaps", namespace, {"apiVersion": "v1", "kind": "ConfigMap",
                                              "metadata": {"name": ROOT_CA_CONFIGMAP},
                                              "data": {"ca.crt": ca_pem}})


def admit_pod(store: Store, namespace: str, pod: Obj) -> None:
    """Refuse a pod whose spec.serviceAccountName names no ServiceAccount in its namespace; mount the
    ServiceAccount's token unless automounting is turned off."""
    meta = pod.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        # The real server names a generateName pod before admission, so the Forbidden message has it.
        meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
    account = (pod.get("spec") or {}).get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT
    sa = store.find("serviceaccounts", namespace, account)
    if sa is None:
        name = meta.get("name", "")
        raise ApiError(403, "Forbidden", f'pods "{name}" is forbidden: error looking up service account '
                       f'{namespace}/{account}: serviceaccount "{account}" not found',
                       {"name": name, "kind": "pods"})
    spec = pod.setdefault("spec", {})
    if _should_automount(sa, spec):
        _mount_token(spec)


def _should_automount(sa: Obj, spec: Obj) -> bool:
    """admission.go shouldAutomount: the pod's setting, else the ServiceAccount's, else true."""
    if spec.get("automountServiceAccountToken") is not None:
        return bool(spec["automountServiceAccountToken"])
    if sa.get("automountServiceAccountToken") is not None:
        return bool(sa["automountServiceAccountToken"])
    return True


def _mount_token(spec: Obj) -> None:
    """admission.go mountServiceAccountToken: reuse a kube-api-access-* volume the pod already has, mount it
    in every (init) container without a mount at the token path, and add the volume only if one needs it."""
    volumes = spec.get("volumes") or []
    existing = next((v["name"] for v in volumes if str(v.get("name", "")).startswith(SA_TOKEN_VOLUME_PREFIX)), None)
    vname = existing or SA_TOKEN_VOLUME_PREFIX + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
    needed = False
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        mounts = c.get("volumeMounts") or []
        if not any(m.get("mountPath") == SA_TOKEN_MOUNT_PATH for m in mounts):
            c["volumeMounts"] = [*mounts, {"name": vname, "readOnly": True, "mountPath": SA_TOKEN_MOUNT_PATH}]
            needed = True
    if existing is None and needed:
        spec["volumes"] = [*volumes, {"name": vname, "projected": {
            "defaultMode": 0o644,  # set explicitly, as TokenVolumeSource does (kubernetes#104464)
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": SA_TOKEN_EXPIRATION_S, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                    "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}]
