"""A small Kubernetes API-server emulator whose kubelet really runs pods, for local runs and tests.

No real Kubernetes can run on the project's machines, so KubernetesPodOperator and the kubernetes
clients talk to this instead, through an ordinary kubeconfig (``KubeEmulator.kubeconfig``). Nothing in
the DAGs or the library knows the difference; point KUBECONFIG at a real cluster and the same code runs
there.

What it does:
- core/v1 over HTTP/1.1 on loopback: /version, discovery (/api, /apis, /api/v1), namespaces, nodes
  (read-only, from config), pods (create / get / list / watch / delete / patch / put, label and field
  selectors), pods/log (follow, timestamps, sinceSeconds, sinceTime, tailLines), PVCs, secrets
  (stringData folded into data), configmaps, serviceaccounts, events (list + watch).
- one global resourceVersion; lists carry it; watches replay from a resourceVersion (410 Gone when too
  old), start with synthetic ADDED events without one, honour selectors the way the watch cache does
  (an object leaving the selector is DELETED for that watcher), and end at timeoutSeconds.
- a scheduler: nodeSelector, required node affinity, NoSchedule/NoExecute taints vs tolerations, requests
  (cpu, memory, ephemeral-storage, nvidia.com/gpu, ...) against node capacity minus running pods, PVCs
  that must exist. Unschedulable pods stay Pending with ``PodScheduled=False/Unschedulable`` and a
  FailedScheduling event, and are retried whenever anything changes.
- a kubelet: init containers in order, then containers together; each runs in a bubblewrap sandbox
  (own pid/ipc/uts namespaces, read-only root made of the host's system dirs plus the image's runtime
  paths, /proc, /dev, /tmp as tmpfs, volumes bind-mounted at mountPath with subPath and readOnly) or,
  without bwrap, as a plain process. Images map to local runtimes (fnmatch patterns; default: the
  project's virtualenv). env, $(VAR) expansion, secretKeyRef / configMapKeyRef / fieldRef, envFrom;
  a missing Secret or key keeps the pod Pending with CreateContainerConfigError, as kubelet does.
  stdout+stderr become the log; exit codes become ``state.terminated.exitCode`` and the phase
  (Succeeded only if every container exited 0). Deletion: SIGTERM, SIGKILL after the grace period
  (capped at 10 s), then the object goes. activeDeadlineSeconds is enforced.

What it does not emulate (honestly):
- authentication, authorization (RBAC is accepted by nobody: every request is allowed), admission
  (no PodSecurity, LimitRange or quota), API groups other than core/v1 (no Jobs, CronJobs,
  Deployments: those are validated offline by kubernetes-validate instead), server-side apply,
  strategic merge (applied as a JSON merge patch), pagination (limit/continue are ignored), exec,
  attach, port-forward (so KPO's ``do_xcom_push`` sidecar cannot be read: use the pod log or a file on
  the PVC), pods/eviction, protobuf.
- container images: nothing is pulled; the image name only selects a local runtime. Users and
  capabilities: processes run as the emulator's own user (runAsUser / runAsNonRoot / capabilities /
  seccomp are recorded, not enforced); a writable root filesystem is not offered (the root is always
  read-only; /tmp is a tmpfs unless readOnlyRootFilesystem, then it is read-only too).
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
  No storage classes, sizes or access modes are enforced.
- a mountPath must not shadow the runtime's host paths (the project's .venv lives under /work/main):
  mount volumes at paths such as /pvc, /scratch, /models, as real images would.

Modules: ``store`` (objects, resourceVersions, watch events), ``selectors`` (label / field selectors),
``api`` (API semantics over the store), ``transport`` (HTTP, watch and log streams, ``serve``),
``scheduler`` (nodes, quantities, placing pods), ``kubelet`` (running a placed pod in its sandbox),
``pod_status`` and ``events`` (what both write about a pod), ``emulator`` (the KubeEmulator process).
"""

from .emulator import KubeEmulator, default_node, default_runtime

__all__ = ["KubeEmulator", "default_node", "default_runtime"]
