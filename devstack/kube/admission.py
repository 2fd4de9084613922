"""What the API server's admission and the controller-manager add around pods: ServiceAccounts.

- Every namespace gets a ServiceAccount ``default`` when it is created, as the controller-manager's
  serviceaccounts controller does (pkg/controller/serviceaccount/serviceaccounts_controller.go); the
  emulator creates it synchronously, so a pod created right after its namespace is not refused.
- A pod whose ServiceAccount does not exist is refused at create with 403 Forbidden, as the
  ServiceAccount admission plugin does (plugin/pkg/admission/serviceaccount/admission.go: "error looking
  up service account ns/name: ..." wrapped by admission.NewForbidden).
"""

from __future__ import annotations

import contextlib
import secrets

from .store import ApiError, Obj, Store

DEFAULT_SERVICE_ACCOUNT = "default"


def create_default_service_account(store: Store, namespace: str) -> None:
    with contextlib.suppress(ApiError):  # already there (a namespace re-created with its objects kept)
        store.create("serviceaccounts", namespace, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                   "metadata": {"name": DEFAULT_SERVICE_ACCOUNT}})


def admit_pod(store: Store, namespace: str, pod: Obj) -> None:
    """Refuse a pod whose spec.serviceAccountName names no ServiceAccount in its namespace."""
    meta = pod.setdefault("metadata", {})
    if not meta.get("name") and meta.get("generateName"):
        # The real server names a generateName pod before admission, so the Forbidden message has it.
        meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
    account = (pod.get("spec") or {}).get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT
    if store.find("serviceaccounts", namespace, account) is None:
        name = meta.get("name", "")
        raise ApiError(403, "Forbidden", f'pods "{name}" is forbidden: error looking up service account '
                       f'{namespace}/{account}: serviceaccount "{account}" not found',
                       {"name": name, "kind": "pods"})
