"""k8s/ as a Kustomize base, and its example overlays, rendered from the same code as the base.

An overlay is the base rendered for another cluster (another storage config, no Triton Deployment for
the local stack): what differs from the base is written as Kustomize patches, so ``kubectl kustomize
overlays/<name>`` gives exactly what :func:`render_overlay` renders (a test holds the two equal). Objects
only the overlay has (a StorageClass, the volume-permissions Job) are its resources; objects it drops
are ``$patch: delete`` patches; an object that changes gets a strategic-merge patch whose changed
top-level fields carry ``$patch: replace``, so no list is merged item by item by accident.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import yaml

from triton_rollout.config import ModelDeployment
from triton_rollout.config.storage import StorageConfig
from triton_rollout.errors import ConfigError
from triton_rollout.kube.manifests import Docs, RenderOptions, render

KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"
# Placeholders a team replaces in its copy of the overlay (the README's checklist says where).
EXAMPLE_EFS_ID = "fs-0123456789abcdef0"
EXAMPLE_NFS_SERVER = "nfs.example.internal"
EXAMPLE_NFS_SHARE = "/exports/triton"


@dataclass(frozen=True)
class Overlay:
    name: str
    about: str
    storage: StorageConfig
    include_triton: bool = True


def example_overlays(model: ModelDeployment) -> list[Overlay]:
    size = model.kubernetes.storage.size
    return [
        Overlay("eks-efs", "Amazon EKS with the EFS CSI driver: an access point per volume, owned by the pods' "
                "uid/gid (EBS classes offer no ReadWriteMany)",
                StorageConfig(class_name="efs-sc", size=size, permissions="efs-access-point",
                              efs_file_system_id=EXAMPLE_EFS_ID)),
        Overlay("nfs", "a plain NFS server through csi-driver-nfs; a one-time Job (and each writing pod's first "
                "init container) hands the volume root to the pods' user (needs no_root_squash)",
                StorageConfig(class_name="nfs-csi", size=size, permissions="init-job",
                              nfs_server=EXAMPLE_NFS_SERVER, nfs_share=EXAMPLE_NFS_SHARE)),
        Overlay("local", "the local stack (devstack): the emulator's default class, a root-owned volume like "
                "NFS's, and no Triton Deployment (Triton is a local process; set its URL in the ConfigMap)",
                StorageConfig(class_name=None, size=size, permissions="init-job"), include_triton=False),
    ]


def overlay_model(model: ModelDeployment, overlay: Overlay) -> ModelDeployment:
    # Without the Triton Deployment there is no fleet to address: the Jobs talk to the ConfigMap's URL only.
    kube = dataclasses.replace(model.kubernetes, storage=overlay.storage,
                               triton_service=model.kubernetes.triton_service if overlay.include_triton else None)
    return dataclasses.replace(model, kubernetes=kube)


def render_overlay(model: ModelDeployment, overlay: Overlay, options: RenderOptions | None = None) -> Docs:
    """Every object of the overlay, as the base's code renders it for the overlay's cluster."""
    o = dataclasses.replace(options or RenderOptions(), include_triton=overlay.include_triton)
    return [doc for docs in render(overlay_model(model, overlay), o).values() for doc in docs]


def base_kustomization(resources: list[str]) -> str:
    return _dump({"apiVersion": KUSTOMIZE_API, "kind": "Kustomization", "resources": sorted(resources)})


def overlay_files(model: ModelDeployment, options: RenderOptions | None = None, *, base_path: str
                  ) -> dict[str, dict[str, str]]:
    """overlay name -> {file name: text} (without the rendered-file header); ``base_path``: the base's folder
    relative to an overlay's."""
    base = {_key(d): d for docs in render(model, options).values() for d in docs}
    out: dict[str, dict[str, str]] = {}
    for overlay in example_overlays(model):
        docs = {_key(d): d for d in render_overlay(model, overlay, options)}
        files: dict[str, str] = {}
        added = [d for k, d in docs.items() if k not in base]
        if added:
            files["resources.yaml"] = "---\n".join(_dump(d) for d in added)
        patches = [_patch(base[k], d) for k, d in docs.items() if k in base and d != base[k]]
        patches += [_delete(d) for k, d in base.items() if k not in docs]
        for patch in patches:
            files[f"patch-{patch['kind'].lower()}-{patch['metadata']['name']}.yaml"] = _dump(patch)
        kustomization: dict[str, Any] = {
            "apiVersion": KUSTOMIZE_API, "kind": "Kustomization",
            "resources": [base_path, *(["resources.yaml"] if added else [])],
        }
        if patches:
            kustomization["patches"] = [{"path": name} for name in files if name.startswith("patch-")]
        files["kustomization.yaml"] = f"# {overlay.about}\n" + _dump(kustomization)
        out[overlay.name] = files
    return out


def _key(doc: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = doc["metadata"]
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]


def _id(doc: dict[str, Any]) -> dict[str, Any]:
    meta = {k: doc["metadata"][k] for k in ("name", "namespace") if k in doc["metadata"]}
    return {"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": meta}


def _patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    patch = _id(new)
    for part in ("labels", "annotations"):
        before, after = old["metadata"].get(part) or {}, new["metadata"].get(part) or {}
        if any(k not in after for k in before):
            # A strategic merge cannot drop a key without a null, which Kustomize keeps: render it in the base.
            raise ConfigError(f"overlay drops metadata.{part} of {new['kind']}/{new['metadata']['name']}")
        changed = {k: v for k, v in after.items() if before.get(k) != v}
        if changed:
            patch["metadata"][part] = changed
    for field in sorted((set(old) | set(new)) - {"apiVersion", "kind", "metadata"}):
        if old.get(field) == new.get(field):
            continue
        value = new.get(field)
        patch[field] = {"$patch": "replace", **value} if isinstance(value, dict) else value
    return patch


def _delete(doc: dict[str, Any]) -> dict[str, Any]:
    return {"$patch": "delete", **_id(doc)}


def _dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
