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
- authentication and RBAC (``rbac``): the kubeconfig ``KubeEmulator`` writes is the cluster admin
  (``devstack-admin`` in ``system:masters``: its token, or no credentials on the plain-HTTP port, as the
  apiserver's old insecure port allowed everything); ``KubeEmulator.service_account_kubeconfig(ns, name)``
  gets a TokenRequest token (``serviceaccounts/<name>/token``) for ``system:serviceaccount:<ns>:<name>``
  and points at a TLS port (self-signed certificate in the kubeconfig), because kubectl sends
  credentials only over TLS. Unknown tokens, and tokens of deleted ServiceAccounts, are 401.
  rbac.authorization.k8s.io/v1 Roles, RoleBindings, ClusterRoles, ClusterRoleBindings are served
  (discovery, Tables, OpenAPI, so ``kubectl apply -f k8s/rbac.yaml`` validates) and enforced for every
  identity but ``system:masters``, as the RBAC authorizer evaluates them (apiGroups, resources with
  subresources and ``*/sub``, resourceNames, verbs and ``*``, nonResourceURLs with trailing ``*``;
  HTTP method to get / list / watch / create / update / patch / delete / deletecollection as
  RequestInfo maps it); the bootstrap cluster-admin, system:discovery, system:public-info-viewer and
  system:basic-user ClusterRoles and bindings are seeded. Denials are 403 with the apiserver's text
  (``pods "x" is forbidden: User "..." cannot delete resource "pods" in API group "" in the namespace
  "triton"``). Impersonation (Impersonate-User / -Group, checked with the ``impersonate`` verb) and
  authorization.k8s.io/v1 SelfSubjectAccessReview, SelfSubjectRulesReview and SubjectAccessReview, so
  ``kubectl auth can-i [--list] [--as=...]`` answers from the stored RBAC.
- ServiceAccount admission (``admission``): every namespace gets ServiceAccount ``default`` on create,
  as the controller-manager makes it; a pod naming a missing one is refused with 403 Forbidden
  (``error looking up service account ns/name: serviceaccount "name" not found``).
- in-cluster API access, as a cluster gives pods: every namespace gets ConfigMap ``kube-root-ca.crt``
  (the TLS port's CA, as the root-ca-cert-publisher writes it); unless ``automountServiceAccountToken:
  false`` (pod spec over its ServiceAccount), admission adds the projected volume ``kube-api-access-<5
  chars>`` (serviceAccountToken 3607 s, kube-root-ca.crt's ca.crt, the namespace from the downward API,
  defaultMode 420), mounted read-only at /var/run/secrets/kubernetes.io/serviceaccount in every container
  and init container without a mount there; the kubelet fills it with a TokenRequest token bound to the
  pod (401 once the pod or its ServiceAccount is gone) and gives every container the ``kubernetes``
  Service's variables (KUBERNETES_SERVICE_HOST / _PORT / _PORT_HTTPS, KUBERNETES_PORT[_<port>_TCP...])
  naming the TLS port on 127.0.0.1, under explicit env. So ``kubernetes.config.load_incluster_config()``
  in a pod acts as ``system:serviceaccount:<ns>:<sa>`` and RBAC decides.
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
  volume with FailedMount events (ContainerCreating), as kubelet does; both are retried. projected
  volumes: secret and configMap (all keys or items, optional), downwardAPI fieldRef (metadata name,
  namespace, uid, labels, annotations, one label / annotation), serviceAccountToken (audience,
  expirationSeconds; 0600 owned by the pod's single runAsUser when it has one or fsGroup, as kubelet
  does), with defaultMode and per-item modes; a missing object or key fails the mount the same way.
  stdout+stderr become the log; exit codes become ``state.terminated.exitCode`` and the phase
  (Succeeded only if every container exited 0). Deletion: SIGTERM, SIGKILL after the grace period
  (capped at 10 s), then the object goes. activeDeadlineSeconds is enforced.
  Containers restart in place per restartPolicy: Always on every exit, OnFailure on a non-zero one,
  Never not at all (init containers only when they failed, not under Never). The first restart is
  immediate, later ones wait the kubelet's back-off (10 s doubling to 5 min; ``KubeEmulator(
  restart_backoff=(base, cap))`` shortens it for tests) in ``waiting`` CrashLoopBackOff ("back-off 10s
  restarting failed container=c pod=name_ns(uid)") with a BackOff warning event; restartCount,
  lastState.terminated, Pulled / Created / Started events per instance, ``kubectl logs --previous``
  (one previous instance kept), and a log follower ends with the instance it follows. The phase stays
  Running while a container will run again (Pending for a restarting init container).
- probes (``prober``, as pkg/kubelet/prober runs them): readiness, liveness and startup probes with
  httpGet (host default the pod IP 127.0.0.1, port by number or name, path, HTTP / HTTPS, httpHeaders;
  2xx / 3xx succeed), tcpSocket and exec (the container's user, env and mounts in a sandbox of its own,
  not inside the container's namespaces), initialDelaySeconds, periodSeconds, timeoutSeconds,
  successThreshold, failureThreshold. containerStatuses[].ready / started and the ContainersReady and
  Ready conditions follow them (no readinessProbe: ready once running; startup gates the others);
  Ready also needs every spec.readinessGates condition "True" (pods/status is writable: get / patch /
  update, strategic merges of conditions by type). Failures are Unhealthy events ("Readiness probe
  failed: ..."); a failed liveness / startup probe kills the container (Killing event: "Container c
  failed liveness probe, will be restarted", without the promise under Never), which then restarts.
- apps/v1 Deployments (``workloads``: a controller keeps spec.replicas pods from the template, rolling
  updates within maxSurge / maxUnavailable, a deleted or failed pod replaced, the status and conditions
  ``kubectl rollout status`` reads, the ``scale`` subresource for ``kubectl scale``; no ReplicaSet layer:
  pods are owned by the Deployment, told apart by ``pod-template-hash``), core/v1 Services and
  discovery.k8s.io/v1 EndpointSlices (``services``: slices kept from the selected pods, ready from each
  pod's Ready condition, readiness gates included; a loopback ClusterIP with a TCP proxy that balances
  connections round-robin over the ready endpoints, as kube-proxy does). With ``KubeEmulator(
  pod_network=True)`` each pod has its own loopback IP (``network``: 127.A.B.C) that probes aim at.
- batch/v1 Jobs and CronJobs (``jobs``; discovery, ``status`` subresource, Tables with the upstream
  columns, OpenAPI, so ``kubectl apply -f`` of the project's Job / CronJob manifests validates). A Job
  controller thread creates pods from spec.template (``<job>-<5 chars>``, the batch.kubernetes.io
  job-name / controller-uid labels and generated selector, a controller ownerReference), honours
  completions, parallelism, backoffLimit (Failed / BackoffLimitExceeded; under OnFailure the
  container restarts of running / pending pods count too, as pastBackoffLimitOnFailure), activeDeadlineSeconds
  (DeadlineExceeded, running pods deleted), suspend / resume, ttlSecondsAfterFinished, and writes the
  1.31 conditions (FailureTarget / SuccessCriteriaMet first, Failed / Complete once no pod runs),
  startTime, completionTime, counts and the job controller's events (SuccessfulCreate, Completed,
  BackoffLimitExceeded, FailedCreate), so ``kubectl wait --for=condition=complete`` and ``kubectl logs
  job/x`` work. Deleting a Job or CronJob cascades as the garbage collector does (Background /
  Foreground delete the dependents, Orphan strips their ownerReference; batch/v1 Jobs default to
  Orphan, CronJobs to Background). A CronJob controller creates ``<cronjob>-<minutes>`` Jobs on
  schedule (croniter: 5 fields and @hourly etc., timeZone), with concurrencyPolicy Allow / Forbid /
  Replace, startingDeadlineSeconds, suspend, the history limits, status.active / lastScheduleTime /
  lastSuccessfulTime; ``kubectl create job --from=cronjob/x`` works. ``KubeEmulator(fake_cron_clock=
  True)`` lets tests step the CronJob clock (``set_cron_now``).

What it does not emulate (honestly):
- authentication beyond bearer tokens (no client certificates, OIDC, token expiry or audiences, so the
  kubelet never refreshes a projected token, and files are written in place, not through kubelet's
  ``..data`` symlink swap;
  anonymous on the TLS port is system:anonymous), RBAC privilege-escalation checks (anyone allowed to
  write Roles / bindings may grant anything: no escalate / bind), aggregated ClusterRoles, the default
  admin / edit / view ClusterRoles, Impersonate-Uid / -Extra, LocalSubjectAccessReview,
  SelfSubjectReview (``kubectl auth whoami``), admission (no PodSecurity, LimitRange or quota), API
  groups other than core/v1, storage.k8s.io/v1 StorageClasses, batch/v1, apps/v1 Deployments,
  discovery.k8s.io/v1 and the RBAC / authorization groups above (no ReplicaSets, StatefulSets,
  PersistentVolumes, CSIDrivers), server-side apply, strategic merge (applied as a JSON merge patch
  without its $-directives), pagination (limit/continue are ignored), exec, attach, port-forward (so
  KPO's ``do_xcom_push`` sidecar cannot be read: use the pod log or a file on the PVC), pods/eviction,
  the ``kubernetes`` Service object itself and other Services' env vars (enableServiceLinks), re-publishing
  a deleted or edited kube-root-ca.crt, projected clusterTrustBundle and downwardAPI resourceFieldRef,
  protobuf, /openapi/v2, aggregated discovery (clients fall back to the legacy documents), value
  validation beyond the pod checks above (schemas are used for unknown fields only).
- container images: nothing is pulled; the image name only selects a local runtime (image users are
  numeric, from the mapping). Capabilities and seccomp are recorded, not enforced (leaving uid 0 drops
  all capabilities; a pod running as root keeps the emulator's); an emulator not run by root cannot
  switch users and runs pods as itself. A writable root filesystem is not offered (the root is always
  read-only; /tmp is a 1777 tmpfs unless readOnlyRootFilesystem, then it is read-only too).
- resource limits are not enforced (no cgroups); requests count only for scheduling. GPUs are a
  number on a node, no device is attached. Networking is the host's (like hostNetwork): pod IPs and
  ClusterIPs are loopback addresses (every pod's is 127.0.0.1 without ``pod_network``); no DNS, no
  NodePort / LoadBalancer, no v1 Endpoints objects, no network policies. emptyDir ``medium: Memory`` is a plain folder.
- restarts: a held-back container starts the moment its back-off ends (a kubelet waits for its next pod
  sync, so a cluster is a little later); restartable init containers (sidecars: restartPolicy on an
  init container) and terminationMessagePath are not emulated; only one previous log is kept. grpc
  probes and probe-level terminationGracePeriodSeconds are not emulated; preemption, priorities,
  affinity other than required node affinity, topology spread: none.
- Jobs: no pod failure backoff delay (a failed pod is replaced at once); Indexed completion mode runs as
  NonIndexed; no podFailurePolicy, successPolicy, backoffLimitPerIndex or job-tracking finalizers;
  Foreground deletion deletes the dependents but does not keep the owner until they are gone.
- without bubblewrap, volume mounts only work where the host path equals mountPath, and nothing is
  isolated; the admission's ServiceAccount token mount is then left out (no in-cluster config).
- state lives in memory: restarting the emulator process forgets every object and kills its pods (PVC folders
  stay on disk), a whole-cluster power cut. The API server alone restarts as on a cluster (``restart``:
  ``KubeEmulator.restart_api_server``): connections cut and refused for an outage, objects and pods kept, a
  fresh watch cache (older resourceVersions 410 Gone); the in-process controllers keep working meanwhile.
- PVCs are folders, chosen by the emulator-only annotation ``devstack.kube/host-path`` (set by
  ``KubeEmulator.create_pvc`` or the ``pvcs`` config); without it, ``<state_dir>/pvcs/<ns>/<claim>``.
  Sizes are not enforced, nor access modes after binding (a RWO claim can be mounted by many pods);
  binding is Immediate (no WaitForFirstConsumer), and no PersistentVolume objects exist.
- a mountPath must not shadow the runtime's host paths (the project's .venv lives under /work/main):
  mount volumes at paths such as /pvc, /scratch, /models, as real images would.

Modules: ``store`` (objects, resourceVersions, watch events), ``selectors`` (label / field selectors),
``api`` (API semantics over the store), ``transport`` (HTTP, watch and log streams, ``serve``),
``scheduler`` (nodes, quantities, placing pods), ``kubelet`` (running a placed pod in its sandbox),
``prober`` (its probes),
``pod_status`` and ``events`` (what both write about a pod), ``admission`` (ServiceAccounts and their token
volume at pod create, kube-root-ca.crt),
``rbac`` (tokens, impersonation, the RBAC authorizer, access reviews),
``jobs`` (Job / CronJob defaults, their controllers, ownerReference garbage collection),
``workloads`` (Deployments), ``services`` (Services, EndpointSlices, the proxy), ``network`` (pod IPs),
``storage`` (StorageClasses, PVC binding), ``tables`` (server-side printing), ``openapi`` (OpenAPI v3,
field validation), ``restart`` (the API listeners, restartable alone), ``emulator`` (the KubeEmulator process).
"""

from .emulator import KubeEmulator, default_node, default_runtime

__all__ = ["KubeEmulator", "default_node", "default_runtime"]
