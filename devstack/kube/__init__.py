"""A small Kubernetes API-server emulator whose kubelet really runs pods, for local runs and tests.

No real Kubernetes can run on the project's machines, so KubernetesPodOperator and the kubernetes
clients talk to this instead, through an ordinary kubeconfig (``KubeEmulator.kubeconfig``). Nothing in
the DAGs or the library knows the difference; point KUBECONFIG at a real cluster and the same code runs
there.

What it does:
- core/v1 over HTTP/1.1 on loopback: /version, discovery (/api, /apis, /api/v1), namespaces, nodes
  (read-only, from config), pods (create / get / list / watch / delete / patch / put, label and field
  selectors), pods/log (follow, timestamps, sinceSeconds, sinceTime, tailLines), PVCs, secrets
  (stringData folded into data), configmaps, serviceaccounts, events (list + watch); storage.k8s.io/v1
  StorageClasses (in /apis discovery; config ``storage_classes``, default one default class offering
  RWO + RWX). A PVC binds (Bound, spec.volumeName, status.accessModes / capacity) only when its class
  (or the default) exists and offers every requested access mode (emulator-only class parameter
  ``devstack.kube/access-modes``), else stays Pending with a ProvisioningFailed / FailedBinding event;
  a claim with a host folder is pre-bound. Pending claims bind when a fitting class appears.
- what the real kubectl needs: server-side Tables (``as=Table``: the upstream printers' columns for
  pods, events, PVCs, secrets, configmaps, serviceaccounts, namespaces, nodes, storageclasses; NAME/AGE
  otherwise; rows carry PartialObjectMetadata / the object / nothing per includeObject; watches too),
  OpenAPI v3 (``/openapi/v3`` and the served group-versions, built from kubernetes-validate's upstream
  schemas) with ``fieldValidation`` Strict / Warn / Ignore (unknown fields against those schemas, as
  strict decoding names them), ``dryRun=All`` on create / update / patch / delete (every check, nothing
  stored, no pod started), and request bodies always read (Content-Length or chunked), so an early
  error answer leaves the keep-alive connection usable.
- one global resourceVersion; lists carry it; watches replay from a resourceVersion (410 Gone when too
  old), start with synthetic ADDED events without one, honour selectors the way the watch cache does
  (an object leaving the selector is DELETED for that watcher), and end at timeoutSeconds.
- a scheduler: nodeSelector, required node affinity, NoSchedule/NoExecute taints vs tolerations, requests
  (cpu, memory, ephemeral-storage, nvidia.com/gpu, ...) against node capacity minus running pods, PVCs
  that must exist and be Bound (``persistentvolumeclaim "x" not found`` / ``pod has unbound immediate
  PersistentVolumeClaims``; a claim without status.phase counts as Bound). Unschedulable pods stay
  Pending with ``PodScheduled=False/Unschedulable`` and a FailedScheduling event, and are retried
  whenever anything changes.
- ServiceAccount admission (``admission``): every namespace gets ServiceAccount ``default`` on create,
  as the controller-manager makes it; a pod naming a missing one is refused with 403 Forbidden
  (``error looking up service account ns/name: serviceaccount "name" not found``).
- a kubelet: init containers in order, then containers together; each runs in a bubblewrap sandbox
  (own pid/ipc/uts namespaces, read-only root made of the host's system dirs plus the image's runtime
  paths, /proc, /dev, /tmp as tmpfs, volumes bind-mounted at mountPath with subPath and readOnly) or,
  without bwrap, as a plain process. Images map to local runtimes (fnmatch patterns; default ``*``: the
  project's virtualenv; a mapping's ``user``/``group`` is the image's USER, root without it): an image
  no pattern matches is ErrImagePull then ImagePullBackOff (Pending, kubelet's Pulling / Failed /
  BackOff events); a missing imagePullSecret is a FailedToRetrieveImagePullSecret warning. Processes
  run as the securityContext's runAsUser / runAsGroup (container over pod, then the image's USER) with
  fsGroup and supplementalGroups as supplementary groups (setpriv inside the sandbox, when the emulator
  runs as root); runAsNonRoot on an image that runs as root is CreateContainerConfigError. fsGroup
  (with fsGroupChangePolicy) chowns/chmods volumes that support ownership management as kubelet does:
  emptyDir (created 0777), secret, configMap, and PVCs per the CSIDriver fsGroupPolicy their
  ``devstack.kube/fs-group-policy`` annotation or StorageClass parameter names (default
  ReadWriteOnceWithFSType: RWO claims only; File; None); nothing else is chowned, so a folder the uid
  cannot write fails the container's own write. A missing subPath folder is created (mode of the
  volume root), and fails with CreateContainerConfigError on a read-only volume (a PVC with readOnly).
  env, $(VAR) expansion, secretKeyRef / configMapKeyRef / fieldRef, envFrom; a missing Secret,
  ConfigMap or key keeps the pod Pending with CreateContainerConfigError, a missing ConfigMap or Secret
  volume with FailedMount events (ContainerCreating), as kubelet does; both are retried.
  stdout+stderr become the log; exit codes become ``state.terminated.exitCode`` and the phase
  (Succeeded only if every container exited 0). Deletion: SIGTERM, SIGKILL after the grace period
  (capped at 10 s), then the object goes. activeDeadlineSeconds is enforced.

What it does not emulate (honestly):
- authentication, authorization (RBAC is accepted by nobody: every request is allowed), admission
  (no PodSecurity, LimitRange or quota), API groups other than core/v1 and storage.k8s.io/v1
  StorageClasses (no Jobs, CronJobs, Deployments, PersistentVolumes, CSIDrivers: workloads are
  validated offline by kubernetes-validate instead; ``kubectl auth can-i`` is NotFound), server-side
  apply, strategic merge (applied as a JSON merge patch without its $-directives), pagination
  (limit/continue are ignored), exec, attach, port-forward (so KPO's ``do_xcom_push`` sidecar cannot be
  read: use the pod log or a file on the PVC), pods/eviction, protobuf, /openapi/v2, aggregated
  discovery (clients fall back to the legacy documents), value validation beyond the pod checks above
  (schemas are used for unknown fields only).
- container images: nothing is pulled; the image name only selects a local runtime (image users are
  numeric, from the mapping). Capabilities and seccomp are recorded, not enforced (leaving uid 0 drops
  all capabilities; a pod running as root keeps the emulator's); an emulator not run by root cannot
  switch users and runs pods as itself. A writable root filesystem is not offered (the root is always
  read-only; /tmp is a 1777 tmpfs unless readOnlyRootFilesystem, then it is read-only too).
- resource limits are not enforced (no cgroups); requests count only for scheduling. GPUs are a
  number on a node, no device is attached. Networking is the host's (like hostNetwork); no Services,
  DNS or pod IPs (podIP is 127.0.0.1). emptyDir ``medium: Memory`` is a plain folder.
- restartPolicy is always treated as Never (no restarts, no CrashLoopBackOff); probes are not run;
  preemption, priorities, affinity other than required node affinity, topology spread: none.
- without bubblewrap, volume mounts only work where the host path equals mountPath, and nothing is
  isolated.
- state lives in memory: restarting the emulator forgets every object (PVC folders stay on disk).
- PVCs are folders, chosen by the emulator-only annotation ``devstack.kube/host-path`` (set by
  ``KubeEmulator.create_pvc`` or the ``pvcs`` config); without it, ``<state_dir>/pvcs/<ns>/<claim>``.
  Sizes are not enforced, nor access modes after binding (a RWO claim can be mounted by many pods);
  binding is Immediate (no WaitForFirstConsumer), and no PersistentVolume objects exist.
- a mountPath must not shadow the runtime's host paths (the project's .venv lives under /work/main):
  mount volumes at paths such as /pvc, /scratch, /models, as real images would.

Modules: ``store`` (objects, resourceVersions, watch events), ``selectors`` (label / field selectors),
``api`` (API semantics over the store), ``transport`` (HTTP, watch and log streams, ``serve``),
``scheduler`` (nodes, quantities, placing pods), ``kubelet`` (running a placed pod in its sandbox),
``pod_status`` and ``events`` (what both write about a pod), ``admission`` (ServiceAccounts at pod create),
``storage`` (StorageClasses, PVC binding), ``tables`` (server-side printing), ``openapi`` (OpenAPI v3,
field validation), ``emulator`` (the KubeEmulator process).
"""

from .emulator import KubeEmulator, default_node, default_runtime

__all__ = ["KubeEmulator", "default_node", "default_runtime"]
