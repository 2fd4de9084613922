"""The model repository's PVC: storage class, size, access mode, and how the pods' user gets write access.

Why write access needs configuring: the pods run as a non-root uid (``kubernetes.run_as_user``), and a
freshly provisioned volume's root is usually owned by root. The kubelet hands a volume to the pod's
``fsGroup`` only where the storage's CSIDriver allows it (``fsGroupPolicy``; the default,
ReadWriteOnceWithFSType, skips every ReadWriteMany volume: kubernetes/kubernetes#92001,
pkg/volume/csi/csi_mounter.go), and ReadWriteMany is what sync pods and Triton on different nodes need.
So the way is chosen per cluster (``permissions``):

- ``fs-group``: the driver applies fsGroup (its CSIDriver says ``fsGroupPolicy: File``, or the claim is
  ReadWriteOnce on a block volume with an fsType); ``fs_group_change_policy`` says whether the kubelet
  walks the whole volume at each mount (Always) or only when the root does not match (OnRootMismatch).
- ``efs-access-point``: Amazon EFS with dynamic provisioning (``provisioningMode: efs-ap``): each volume
  is an access point whose POSIX user and root directory owner are the pods' uid/gid, so no chown is
  ever needed (aws-efs-csi-driver examples/kubernetes/dynamic_provisioning). With ``efs_file_system_id``
  the StorageClass is rendered too.
- ``init-job``: a one-time Job, and the first init container of every rendered pod that writes, running as
  root with only CAP_CHOWN and CAP_FOWNER, hands the volume root to the pods' uid/gid (plain NFS,
  hostPath-like drivers). The NFS export must not squash root (``no_root_squash``), or the chown fails:
  then own the export directory by the uid on the server instead. With ``nfs_server`` / ``nfs_share`` a
  StorageClass for csi-driver-nfs (``nfs.csi.k8s.io``) is rendered too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from triton_rollout.config.validators import DNS_SUBDOMAIN, QUANTITY, check_keys, fail, field_names, mapping, string

ACCESS_MODES = ("ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")
PERMISSION_METHODS = ("fs-group", "efs-access-point", "init-job")
FS_GROUP_CHANGE_POLICIES = ("OnRootMismatch", "Always")
_EFS_ID = re.compile(r"^fs-[0-9a-f]{8,40}$")
_NFS_SHARE = re.compile(r"^/[^\s]*$")
_HOST = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9.:]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class StorageConfig:
    """The PVC that holds repository/, staging/ and state/ (shared by sync pods and Triton)."""

    class_name: str | None = None  # None: the cluster's default class (often EBS, which has no ReadWriteMany)
    size: str = "500Gi"
    # ReadWriteMany: sync pods and Triton replicas on different nodes share the volume.
    access_mode: str = "ReadWriteMany"
    permissions: str = "fs-group"
    fs_group_change_policy: str = "OnRootMismatch"  # a big repository is not re-chowned at every start
    efs_file_system_id: str | None = None
    nfs_server: str | None = None
    nfs_share: str | None = None
    _path: str = field(default="storage", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        if self.class_name is not None:
            string(self.class_name, f"{p}.class_name", DNS_SUBDOMAIN, "StorageClass name")
        string(self.size, f"{p}.size", QUANTITY, "Kubernetes quantity (e.g. 500Gi)")
        for name, allowed in (("access_mode", ACCESS_MODES), ("permissions", PERMISSION_METHODS),
                              ("fs_group_change_policy", FS_GROUP_CHANGE_POLICIES)):
            if getattr(self, name) not in allowed:
                raise fail(f"{p}.{name}", f"must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.efs_file_system_id is not None:
            string(self.efs_file_system_id, f"{p}.efs_file_system_id", _EFS_ID, "EFS file system id (fs-...)")
            if self.permissions != "efs-access-point":
                raise fail(f"{p}.efs_file_system_id", "is only used with permissions: efs-access-point")
        if (self.nfs_server is None) != (self.nfs_share is None):
            raise fail(f"{p}.nfs_server", "set both nfs_server and nfs_share, or neither")
        if self.nfs_server is not None:
            string(self.nfs_server, f"{p}.nfs_server", _HOST, "host name or address")
            string(self.nfs_share, f"{p}.nfs_share", _NFS_SHARE, "absolute export path")
        if self.efs_file_system_id is not None and self.nfs_server is not None:
            raise fail(p, "set efs_file_system_id or nfs_server/nfs_share, not both: one StorageClass per claim")
        if self.renders_storage_class and self.class_name is None:
            raise fail(f"{p}.class_name", "name the StorageClass to render (and the claim to use), e.g. efs-sc")

    @property
    def renders_storage_class(self) -> bool:
        return self.efs_file_system_id is not None or self.nfs_server is not None

    @classmethod
    def from_dict(cls, data: object, path: str = "storage") -> StorageConfig:
        data = mapping(data, path)
        check_keys(data, field_names(cls), path)
        return cls(**dict(data), _path=path)
