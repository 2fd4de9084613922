"""Manifests for teams that deploy without Airflow (kubectl, Kustomize, Argo CD), rendered from the pod builders.

The Jobs wrap the step containers KubernetesPodOperator runs (kube/specs.py), so GitOps and Airflow users
get the same image, args, environment, mounts, security context and credential handling. (The operator
merges its own container over the step pod's: there it is named ``base`` with terminationMessagePolicy
File, cncf-kubernetes 10.25 operators/pod.py build_pod_request_obj; the Jobs keep the step's name and
FallbackToLogsOnError.) Rendered files are committed under k8s/ (a Kustomize base; kube/kustomize.py
renders its overlays into k8s-overlays/) and a test fails when they drift.

What each file does, in the order Argo CD applies them (every object carries an ``argocd.argoproj.io
/sync-wave``; nothing is a PreSync hook, because Argo CD runs PreSync hooks before it creates any of the
app's own objects, so a hook needing the app's ServiceAccount, PVC or ConfigMap deadlocks the first sync):

- wave -3 ``namespace.yaml``; wave -2 ``rbac.yaml``, ``pvc.yaml`` (+ its StorageClass when configured),
  ``rollout-target.yaml`` (the ConfigMap naming Triton's URL for the Jobs: what an overlay changes);
- wave -1 ``volume-permissions-job.yaml`` (storage permissions ``init-job`` only: config/storage.py);
- wave 0 ``triton.yaml``; wave 1 ``deploy-job.yaml`` (sync, then load, smoke-test and promote the version
  in Git, rolling back on failure) and ``reconcile-cronjob.yaml`` (converge on the promoted version).

Argo CD moves to the next wave only once the previous one is healthy (a PVC Bound, a Job complete, a
Deployment available), which is the order the deploy needs; plain ``kubectl apply -k`` has no order,
so the Jobs wait for what they need instead (Secrets and ConfigMaps by the kubelet, Triton by
``--live-deadline``, the volume by their own init container) and ``backoffLimit`` covers the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.client import models as k8s

from triton_rollout.config import GPU_PRODUCT_LABEL, GPU_RESOURCE, KubernetesConfig, ModelDeployment
from triton_rollout.kube import specs
from triton_rollout.kube.fleet_api import SERVING_GATE
from triton_rollout.steps import DeployRequest, ReconcileRequest, SyncRequest

HEADER = "# Rendered by `python -m triton_rollout render-manifests`; edit the config or the code, not this file.\n"
ARGO_WAVE = "argocd.argoproj.io/sync-wave"
ARGO_SYNC_OPTIONS = "argocd.argoproj.io/sync-options"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
TRITON_NAME = "triton"
# The Triton pods' own account: only the serving-gate sidecar uses its token (get its pod, patch its status).
TRITON_SERVING_ACCOUNT = "triton-serving"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # where client libraries look in a pod
TRITON_PORTS = (("http", 8000), ("grpc", 8001), ("metrics", 8002))
# The ConfigMap keys the Jobs' args read ($(VAR) expansion); the CLI reads the same names from the environment.
TRITON_URL_KEY = "TRITON_URL"
TRITON_REPOSITORY_KEY = "TRITON_MODEL_REPOSITORY"
# Argo CD sync waves by file (lower first; each wave must be healthy before the next is applied).
WAVES = {
    "namespace.yaml": -3,
    "rbac.yaml": -2,
    "pvc.yaml": -2,
    "rollout-target.yaml": -2,
    "volume-permissions-job.yaml": -1,
    "triton.yaml": 0,
    "deploy-job.yaml": 1,
    "reconcile-cronjob.yaml": 1,
}
EFS_PROVISIONER = "efs.csi.aws.com"
NFS_PROVISIONER = "nfs.csi.k8s.io"


@dataclass(frozen=True)
class RenderOptions:
    """Cluster facts that are not per-model config."""

    version: int = 1  # the release the deploy Job deploys: in GitOps, the version in Git is the desired state
    reconcile_schedule: str = "*/30 * * * *"
    airflow_namespace: str = "airflow"
    airflow_service_account: str = "airflow-worker"
    triton_replicas: int = 1
    # False for a stack whose Triton is not a Deployment (the local stack: a tritonserver process).
    include_triton: bool = True
    # How long the deploy Job waits for Triton to answer: kubectl applies Triton and the Job together, and
    # a GPU node scale-up plus the image pull take minutes (Argo CD's waves have Triton healthy first).
    deploy_live_deadline_s: float = 1800.0


def example_deployment() -> ModelDeployment:
    """The model the committed k8s/ files are rendered for; real teams render from their own config file."""
    return ModelDeployment(
        name="llama3-8b",
        release_prefix="s3://model-releases/prod",
        triton_url="http://triton.triton.svc.cluster.local:8000",
        keep=2,
        tp_size=1,
        pp_size=1,
        # The rendered Triton Deployment's Service: the Jobs roll out to each replica (triton/fleet.py).
        kubernetes=KubernetesConfig(gpu_product="NVIDIA-H100-80GB-HBM3", triton_service=TRITON_NAME),
    )


def _meta(model: ModelDeployment, name: str, component: str, *, annotations: dict[str, str] | None = None,
          version: int | None = None) -> k8s.V1ObjectMeta:
    return k8s.V1ObjectMeta(name=name, namespace=model.kubernetes.namespace,
                            labels=specs.labels(model, component, version), annotations=annotations)


def _job_spec(pod_spec: k8s.V1PodSpec, labels: dict[str, str], *, backoff_limit: int, deadline_s: int
              ) -> k8s.V1JobSpec:
    # No ttlSecondsAfterFinished: under Argo CD a Job the TTL controller deletes is missing from the app, so
    # Argo CD creates it again (and a self-healing app re-runs it); argoproj/argo-cd#4979, #6880.
    return k8s.V1JobSpec(
        backoff_limit=backoff_limit,
        active_deadline_seconds=deadline_s,
        template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod_spec),
    )


def namespace(model: ModelDeployment) -> k8s.V1Namespace:
    """The namespace itself, so the first sync (or apply) creates it before anything that lives in it."""
    return k8s.V1Namespace(api_version="v1", kind="Namespace", metadata=k8s.V1ObjectMeta(
        name=model.kubernetes.namespace, labels={specs.APP_LABEL: specs.APP_NAME}))


def target_name(model: ModelDeployment) -> str:
    return f"{model.name}-rollout-target"


def rollout_target(model: ModelDeployment) -> k8s.V1ConfigMap:
    """Where the Jobs find Triton: its URL, and where Triton sees the PVC's repository/ (for the engine paths
    in load overrides). The Jobs take every key as environment (envFrom), so an overlay can also add
    AWS_ENDPOINT_URL / AWS_DEFAULT_REGION for an S3-compatible store."""
    return k8s.V1ConfigMap(
        api_version="v1", kind="ConfigMap",
        metadata=_meta(model, target_name(model), "rollout-target"),
        data={TRITON_URL_KEY: model.triton_url, TRITON_REPOSITORY_KEY: model.kubernetes.triton_repository_path},
    )


def _read_target(model: ModelDeployment, container: k8s.V1Container) -> k8s.V1Container:
    """The container with Triton's URL and repository path taken from the rollout-target ConfigMap
    ($(VAR) in args is expanded by the kubelet from the container's environment)."""
    args = list(container.args or [])
    for flag, key in (("--triton-url", TRITON_URL_KEY), ("--triton-repository", TRITON_REPOSITORY_KEY)):
        if flag in args:
            args[args.index(flag) + 1] = f"$({key})"
    container.args = args
    container.env_from = [k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=target_name(model)))]
    return container


def volume_permissions_container(model: ModelDeployment) -> k8s.V1Container:
    """Hand the PVC's root to the pods' uid/gid (storage permissions ``init-job``).

    Root, but with only CAP_CHOWN and CAP_FOWNER, no privilege escalation and a read-only root filesystem;
    it changes the root folder only (everything below is created by the pods' user from then on)."""
    kube = model.kubernetes
    mount = kube.pvc_mount_path
    owner = f"{kube.run_as_user}:{kube.fs_group}"
    script = (f"chown {owner} {mount} && chmod 2775 {mount} || {{ echo 'error: cannot hand {mount} to "
              f"{owner}; what to do: an NFS export must not squash root (no_root_squash), or own the export "
              f"folder by {owner} on the server and use another storage.permissions' >&2; exit 1; }}")
    return k8s.V1Container(
        name="volume-permissions",
        image=kube.images.sync,
        image_pull_policy="IfNotPresent",
        command=["sh", "-c", script],
        resources=specs.resource_requirements(kube.sync_resources),
        security_context=k8s.V1SecurityContext(
            run_as_user=0, run_as_group=0, run_as_non_root=False, allow_privilege_escalation=False,
            read_only_root_filesystem=True, privileged=False,
            capabilities=k8s.V1Capabilities(drop=["ALL"], add=["CHOWN", "FOWNER"]),
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        volume_mounts=[k8s.V1VolumeMount(name=specs.PVC_VOLUME, mount_path=mount)],
        termination_message_policy="FallbackToLogsOnError",
    )


def _permissions_first(model: ModelDeployment, spec: k8s.V1PodSpec) -> k8s.V1PodSpec:
    """With storage permissions ``init-job``, every rendered pod that writes the PVC fixes its ownership
    first, so no apply order is needed; the one-time Job does the same for the pods Airflow launches."""
    if model.kubernetes.storage.permissions == "init-job":
        spec.init_containers = [volume_permissions_container(model), *(spec.init_containers or [])]
    return spec


def volume_permissions_job(model: ModelDeployment) -> k8s.V1Job:
    """The one-time Job of storage permissions ``init-job`` (idempotent; Argo CD wave -1)."""
    kube = model.kubernetes
    pvc, _ = specs.pvc_volume(model)
    labels = {specs.APP_LABEL: specs.APP_NAME, specs.COMPONENT_LABEL: "volume-permissions"}
    pod_spec = _permissions_first(model, k8s.V1PodSpec(
        restart_policy="Never", service_account_name=kube.service_account, automount_service_account_token=False,
        security_context=specs.pod_security_context(model), node_selector=dict(kube.node_selector) or None,
        image_pull_secrets=specs.image_pull_secrets(model), volumes=[pvc],
        containers=[k8s.V1Container(
            name="check", image=kube.images.sync, image_pull_policy="IfNotPresent",
            # As the pods' user: the volume is writable now, or this Job fails naming it.
            command=["sh", "-c", f"touch {kube.pvc_mount_path}/.write-check && rm {kube.pvc_mount_path}/.write-check"],
            resources=specs.resource_requirements(kube.sync_resources),
            security_context=specs.container_security_context(),
            volume_mounts=[k8s.V1VolumeMount(name=specs.PVC_VOLUME, mount_path=kube.pvc_mount_path)],
            termination_message_policy="FallbackToLogsOnError")],
    ))
    return k8s.V1Job(api_version="batch/v1", kind="Job",
                     metadata=k8s.V1ObjectMeta(name=f"{kube.pvc_claim}-permissions", namespace=kube.namespace,
                                               labels=labels),
                     spec=_job_spec(pod_spec, labels, backoff_limit=3, deadline_s=1800))


def deploy_job(model: ModelDeployment, version: int, live_deadline_s: float) -> k8s.V1Job:
    """Deploy one release, the whole way: an init container syncs it onto the PVC (verified, atomic), then
    the deploy container loads it into Triton, smoke-tests and promotes it, or rolls back to the promoted
    version and fails the Job. Named by the version, so a new version in Git is a new Job (Jobs are
    immutable) and re-applying the same version runs nothing again."""
    name = f"{model.name}-deploy-v{version}"
    sync_pod = specs.step_pod(model, SyncRequest.for_model(model, model.release(version)))
    pod = specs.step_pod(model, DeployRequest.for_model(model, version, f"k8s-job/{name}",
                                                        live_deadline=live_deadline_s))
    spec = pod.spec
    spec.init_containers = [_read_target(model, sync_pod.spec.containers[0])]
    spec.containers = [_read_target(model, c) for c in spec.containers]
    labels = specs.labels(model, "deploy", version)
    return k8s.V1Job(
        api_version="batch/v1", kind="Job",
        # A Job's template is immutable, so a changed one under the same name (a new image) cannot be applied:
        # Argo CD deletes and re-creates it instead (Replace needs Force for Jobs: argoproj/argo-cd#9163).
        metadata=_meta(model, name, "deploy", version=version,
                       annotations={ARGO_SYNC_OPTIONS: "Force=true,Replace=true"}),
        spec=_job_spec(_permissions_first(model, spec), labels, backoff_limit=2, deadline_s=6 * 3600))


def reconcile_cronjob(model: ModelDeployment, schedule: str) -> k8s.V1CronJob:
    """Periodic reconcile, the same step the reconcile DAG runs: read the promoted version from the PVC's
    state/, check its files (stat records) and Triton, repair drift through staging and reload (no-op when
    intact, nothing to do before the first promote)."""
    pod = specs.step_pod(model, ReconcileRequest.for_model(model))
    spec = pod.spec
    spec.containers = [_read_target(model, c) for c in spec.containers]
    return k8s.V1CronJob(
        api_version="batch/v1", kind="CronJob",
        metadata=_meta(model, f"{model.name}-reconcile", "reconcile"),
        spec=k8s.V1CronJobSpec(
            schedule=schedule,
            concurrency_policy="Forbid",  # two reconciles of one model would only queue on the PVC lock
            starting_deadline_seconds=600,
            successful_jobs_history_limit=3,
            failed_jobs_history_limit=3,
            job_template=k8s.V1JobTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=pod.metadata.labels),
                spec=_job_spec(_permissions_first(model, spec), pod.metadata.labels, backoff_limit=1,
                               deadline_s=3 * 3600),
            ),
        ),
    )


def model_repository_pvc(model: ModelDeployment) -> k8s.V1PersistentVolumeClaim:
    storage = model.kubernetes.storage
    return k8s.V1PersistentVolumeClaim(
        api_version="v1", kind="PersistentVolumeClaim",
        metadata=k8s.V1ObjectMeta(name=model.kubernetes.pvc_claim, namespace=model.kubernetes.namespace,
                                  labels={specs.APP_LABEL: specs.APP_NAME, specs.COMPONENT_LABEL: "storage"}),
        spec=k8s.V1PersistentVolumeClaimSpec(
            access_modes=[storage.access_mode],
            storage_class_name=storage.class_name,
            resources=k8s.V1VolumeResourceRequirements(requests={"storage": storage.size}),
        ),
    )


def storage_class(model: ModelDeployment) -> k8s.V1StorageClass | None:
    """The claim's StorageClass, when the storage config describes one (cluster-scoped: a platform team may
    prefer to own it and set only ``storage.class_name``). Retain: deleting the claim must not delete the
    model repository with it."""
    kube = model.kubernetes
    storage = kube.storage
    if not storage.renders_storage_class:
        return None
    if storage.efs_file_system_id is not None:
        # One access point per volume whose POSIX user and root folder owner are the pods' uid/gid
        # (aws-efs-csi-driver docs/README.md, StorageClass parameters).
        provisioner = EFS_PROVISIONER
        parameters = {"provisioningMode": "efs-ap", "fileSystemId": storage.efs_file_system_id,
                      "directoryPerms": "775", "uid": str(kube.run_as_user), "gid": str(kube.fs_group),
                      "basePath": "/triton-rollout"}
        mount_options = None
    else:
        provisioner = NFS_PROVISIONER  # kubernetes-csi/csi-driver-nfs: a subfolder of the export per volume
        parameters = {"server": str(storage.nfs_server), "share": str(storage.nfs_share)}
        mount_options = ["nfsvers=4.1"]
    return k8s.V1StorageClass(
        api_version="storage.k8s.io/v1", kind="StorageClass",
        metadata=k8s.V1ObjectMeta(name=storage.class_name,
                                  labels={specs.APP_LABEL: specs.APP_NAME, specs.COMPONENT_LABEL: "storage"}),
        provisioner=provisioner, parameters=parameters, mount_options=mount_options,
        reclaim_policy="Retain", volume_binding_mode="Immediate",
    )


def rbac(model: ModelDeployment, airflow_namespace: str, airflow_service_account: str,
         airflow_triggerer_service_account: str = "airflow-triggerer") -> list[object]:
    """The pods' own service account, and what Airflow's need to run them: pods + pods/log in one namespace.

    Events are read-only because KubernetesPodOperator reports a pod's events when it does not start.
    No pods/exec: the xcom sidecar is not used (results go to the log and the PVC's state/).
    The triggerer (its own service account in the official Helm chart) watches deferred pods: it reads
    them, their log and events, and deletes a pod whose task is cancelled (on_kill_action), but never
    creates or patches one (cncf-kubernetes 10.25 triggers/pod.py KubernetesPodTrigger).
    """
    kube = model.kubernetes
    ns = kube.namespace
    aws = kube.aws
    rbac_labels = {specs.APP_LABEL: specs.APP_NAME, specs.COMPONENT_LABEL: "rbac"}
    sa = k8s.V1ServiceAccount(
        api_version="v1", kind="ServiceAccount",
        metadata=k8s.V1ObjectMeta(
            name=kube.service_account, namespace=ns, labels=rbac_labels,
            annotations={IRSA_ANNOTATION: aws.irsa_role_arn} if aws.irsa_role_arn else None),
        automount_service_account_token=False,
    )

    def role_bound_to(name: str, service_account: str, rules: list[k8s.V1PolicyRule], *,
                      subject_namespace: str = airflow_namespace) -> list[object]:
        role = k8s.V1Role(api_version="rbac.authorization.k8s.io/v1", kind="Role",
                          metadata=k8s.V1ObjectMeta(name=name, namespace=ns, labels=rbac_labels), rules=rules)
        binding = k8s.V1RoleBinding(
            api_version="rbac.authorization.k8s.io/v1", kind="RoleBinding",
            metadata=k8s.V1ObjectMeta(name=name, namespace=ns, labels=rbac_labels),
            role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=name),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=service_account, namespace=subject_namespace)],
        )
        return [role, binding]

    read_logs = k8s.V1PolicyRule(api_groups=[""], resources=["pods/log"], verbs=["get"])
    read_events = k8s.V1PolicyRule(api_groups=[""], resources=["events"], verbs=["get", "list", "watch"])
    patch_pod_status = k8s.V1PolicyRule(api_groups=[""], resources=["pods/status"], verbs=["patch"])
    serving_sa = k8s.V1ServiceAccount(
        api_version="v1", kind="ServiceAccount",
        metadata=k8s.V1ObjectMeta(name=TRITON_SERVING_ACCOUNT, namespace=ns, labels=rbac_labels),
        automount_service_account_token=False,
    )
    return [
        sa,
        serving_sa,
        # The rollout steps (kube/fleet_api.py): find the Triton replicas, take one out of the Service and back.
        *role_bound_to("triton-rollout-fleet", kube.service_account, [
            k8s.V1PolicyRule(api_groups=[""], resources=["services"], verbs=["get"]),
            k8s.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list"]),
            patch_pod_status,
            k8s.V1PolicyRule(api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=["list"]),
        ], subject_namespace=ns),
        # The Triton pods' serving-gate sidecar: its own pod's gate, once (RBAC cannot name a Deployment's pods).
        *role_bound_to("triton-serving-gate", TRITON_SERVING_ACCOUNT, [
            k8s.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get"]), patch_pod_status,
        ], subject_namespace=ns),
        *role_bound_to("airflow-pod-launcher", airflow_service_account, [
            k8s.V1PolicyRule(api_groups=[""], resources=["pods"],
                             verbs=["create", "get", "list", "watch", "delete", "patch"]),
            read_logs, read_events]),
        # The Triton models view (in the api-server, with the workers' Kubernetes identity) lists each replica.
        *role_bound_to("airflow-fleet-reader", airflow_service_account, [
            k8s.V1PolicyRule(api_groups=[""], resources=["services"], verbs=["get"]),
            k8s.V1PolicyRule(api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=["list"]),
            k8s.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])]),
        *role_bound_to("airflow-pod-watcher", airflow_triggerer_service_account, [
            k8s.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list", "watch", "delete"]),
            read_logs, read_events]),
    ]


def serving_gate_token() -> k8s.V1Volume:
    """The pod's service account token, CA and namespace, as automounting would project them, for the sidecar only."""
    return k8s.V1Volume(name="serving-gate-token", projected=k8s.V1ProjectedVolumeSource(default_mode=0o444, sources=[
        k8s.V1VolumeProjection(service_account_token=k8s.V1ServiceAccountTokenProjection(
            path="token", expiration_seconds=3607)),
        k8s.V1VolumeProjection(config_map=k8s.V1ConfigMapProjection(
            name="kube-root-ca.crt", items=[k8s.V1KeyToPath(key="ca.crt", path="ca.crt")])),
        k8s.V1VolumeProjection(downward_api=k8s.V1DownwardAPIProjection(items=[k8s.V1DownwardAPIVolumeFile(
            path="namespace", field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.namespace"))])),
    ]))


def serving_gate_container(model: ModelDeployment) -> k8s.V1Container:
    """``python -m triton_rollout serving-gate``: sets this pod's readiness gate True once Triton is ready, once."""
    kube = model.kubernetes

    def field(name: str, path: str) -> k8s.V1EnvVar:
        return k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(
            field_ref=k8s.V1ObjectFieldSelector(field_path=path)))

    http_port = dict(TRITON_PORTS)["http"]
    return k8s.V1Container(
        name="serving-gate",
        image=kube.images.sync,
        image_pull_policy="IfNotPresent",
        command=list(specs.CLI),
        args=["serving-gate", "--triton-url", f"$(POD_IP):{http_port}"],
        env=[field("POD_NAME", "metadata.name"), field("POD_NAMESPACE", "metadata.namespace"),
             field("POD_IP", "status.podIP"),
             k8s.V1EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"), k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
             k8s.V1EnvVar(name="HOME", value="/tmp")],
        resources=k8s.V1ResourceRequirements(requests={"cpu": "10m", "memory": "64Mi"}, limits={"memory": "256Mi"}),
        security_context=specs.container_security_context(),
        volume_mounts=[k8s.V1VolumeMount(name="serving-gate-token", mount_path=SERVICE_ACCOUNT_DIR, read_only=True),
                       k8s.V1VolumeMount(name=specs.TMP_VOLUME, mount_path="/tmp")],
        termination_message_policy="FallbackToLogsOnError",
    )


def triton(model: ModelDeployment, replicas: int) -> list[object]:
    """Triton in explicit model-control mode, seeing only the PVC's repository/ (never staging/).

    repository/ is mounted read-only by subPath, and the kubelet creates a missing subPath folder (as root)
    when it sets up the container, which fails on a volume mounted read-only and, where it works, leaves a
    root-owned folder the sync pods cannot publish into (kubernetes pkg/kubelet/kubelet_pods.go makeMounts).
    Before the first sync there is no repository/ yet, so an init container creates it as the pods' user,
    with the volume writable to it alone; the server keeps the read-only subPath mount, so the contract
    that Triton never sees staging/ or state/ holds (mounting the whole PVC read-only instead would show it
    both, and move the repository away from ``triton_repository_path``, where the load overrides point).

    Probes: startup waits on /v2/health/ready once (the promoted models loading at start); afterwards
    readiness and liveness use /v2/health/live, because /v2/health/ready turns false while *any* model
    loads (triton-inference-server/server#7014), and a candidate load must not take the serving pod out
    of the Service or get it restarted.
    """
    kube = model.kubernetes
    labels = {specs.APP_LABEL: TRITON_NAME, specs.COMPONENT_LABEL: "serving"}
    repo_mount = kube.triton_repository_path
    make_repository = k8s.V1Container(
        name="repository-dir",
        image=kube.images.triton,  # the image the node pulls anyway; it has mkdir
        image_pull_policy="IfNotPresent",
        command=["mkdir", "-p", f"{kube.pvc_mount_path}/repository"],
        security_context=specs.container_security_context(),
        volume_mounts=[k8s.V1VolumeMount(name=specs.PVC_VOLUME, mount_path=kube.pvc_mount_path)],
        termination_message_policy="FallbackToLogsOnError",
    )
    container = k8s.V1Container(
        name="tritonserver",
        image=kube.images.triton,
        image_pull_policy="IfNotPresent",
        command=["tritonserver"],
        args=[
            f"--model-repository={repo_mount}",
            "--model-control-mode=explicit",
            "--load-model=*",  # at start, whatever is promoted (config.pbtxt pins the version)
            "--strict-readiness=true",
            "--exit-timeout-secs=30",
        ],
        ports=[k8s.V1ContainerPort(name=n, container_port=p) for n, p in TRITON_PORTS],
        env=[k8s.V1EnvVar(name="HOME", value="/tmp")],
        resources=specs.resource_requirements(kube.triton_resources, {GPU_RESOURCE: str(model.gpus)}),
        security_context=specs.container_security_context(),
        volume_mounts=[
            k8s.V1VolumeMount(name=specs.PVC_VOLUME, mount_path=repo_mount, sub_path="repository", read_only=True),
            k8s.V1VolumeMount(name=specs.TMP_VOLUME, mount_path="/tmp"),
            k8s.V1VolumeMount(name=specs.SHM_VOLUME, mount_path="/dev/shm"),
        ],
        startup_probe=k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path="/v2/health/ready", port="http"),
                                  period_seconds=10, failure_threshold=90, timeout_seconds=5),
        readiness_probe=k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path="/v2/health/live", port="http"),
                                    period_seconds=10, failure_threshold=3, timeout_seconds=5),
        liveness_probe=k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path="/v2/health/live", port="http"),
                                   period_seconds=20, failure_threshold=6, timeout_seconds=5),
    )
    selector = dict(kube.build_node_selector)
    if kube.gpu_product:
        selector[GPU_PRODUCT_LABEL] = kube.gpu_product
    pod_spec = _permissions_first(model, k8s.V1PodSpec(
        service_account_name=TRITON_SERVING_ACCOUNT,
        # tritonserver gets no token; the serving-gate sidecar mounts one of its own (serving_gate_token()).
        automount_service_account_token=False,
        # Out of the Service until the condition is True: the sidecar sets it for a new pod once Triton is
        # ready; a rollout sets it False to load a candidate in place on this replica (triton/fleet.py).
        readiness_gates=[k8s.V1PodReadinessGate(condition_type=SERVING_GATE)],
        security_context=specs.pod_security_context(model),
        node_selector=selector or None,
        tolerations=specs.tolerations(kube.tolerations),
        image_pull_secrets=specs.image_pull_secrets(model),
        termination_grace_period_seconds=60,
        init_containers=[make_repository],
        containers=[container, serving_gate_container(model)],
        volumes=[
            serving_gate_token(),
            # Not readOnly at the volume: the init container writes; the server's own mount is read-only.
            k8s.V1Volume(name=specs.PVC_VOLUME, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=kube.pvc_claim)),
            k8s.V1Volume(name=specs.TMP_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="1Gi")),
            k8s.V1Volume(name=specs.SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                                     size_limit=kube.shm_size)),
        ],
    ))
    deployment = k8s.V1Deployment(
        api_version="apps/v1", kind="Deployment",
        metadata=k8s.V1ObjectMeta(name=TRITON_NAME, namespace=kube.namespace, labels=labels),
        spec=k8s.V1DeploymentSpec(
            replicas=replicas,
            selector=k8s.V1LabelSelector(match_labels=labels),
            # No surge: a spare GPU node for a second replica is not assumed to exist.
            strategy=k8s.V1DeploymentStrategy(type="RollingUpdate", rolling_update=k8s.V1RollingUpdateDeployment(
                max_surge=0, max_unavailable=1)),
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod_spec),
        ),
    )
    service = k8s.V1Service(
        api_version="v1", kind="Service",
        metadata=k8s.V1ObjectMeta(name=TRITON_NAME, namespace=kube.namespace, labels=labels),
        spec=k8s.V1ServiceSpec(selector=labels, ports=[
            k8s.V1ServicePort(name=n, port=p, target_port=n, protocol="TCP") for n, p in TRITON_PORTS]),
    )
    return [deployment, service]


Docs = list[dict[str, Any]]


def render(model: ModelDeployment, options: RenderOptions | None = None) -> dict[str, Docs]:
    """File name -> the documents it holds (API-ready dicts), each in its Argo CD sync wave (WAVES)."""
    o = options or RenderOptions()
    sc = storage_class(model)
    files: dict[str, Sequence[object]] = {
        "namespace.yaml": [namespace(model)],
        "rbac.yaml": rbac(model, o.airflow_namespace, o.airflow_service_account),
        "pvc.yaml": [*([sc] if sc else []), model_repository_pvc(model)],
        "rollout-target.yaml": [rollout_target(model)],
    }
    if model.kubernetes.storage.permissions == "init-job":
        files["volume-permissions-job.yaml"] = [volume_permissions_job(model)]
    if o.include_triton:
        files["triton.yaml"] = triton(model, o.triton_replicas)
    files["deploy-job.yaml"] = [deploy_job(model, o.version, o.deploy_live_deadline_s)]
    files["reconcile-cronjob.yaml"] = [reconcile_cronjob(model, o.reconcile_schedule)]
    out: dict[str, Docs] = {}
    for name, objs in files.items():
        docs = [specs.to_dict(obj) for obj in objs]
        for doc in docs:
            doc["metadata"].setdefault("annotations", {})[ARGO_WAVE] = str(WAVES[name])
        out[name] = docs
    return out


def to_yaml(docs: Docs) -> str:
    import yaml

    return HEADER + "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in docs)


def overlays_dir(out: Path) -> Path:
    """Where the overlays of the base in ``out`` go: beside it, because Kustomize refuses an overlay inside
    its base's folder (a cycle: the base's root would contain the overlay's)."""
    return out.parent / f"{out.name}-overlays"


def write(model: ModelDeployment, out: Path, options: RenderOptions | None = None) -> list[Path]:
    """The Kustomize base (the manifests and their kustomization.yaml) in ``out``, its example overlays in
    :func:`overlays_dir`; rendered files no longer rendered are removed, nothing else is touched."""
    from triton_rollout.kube.kustomize import base_kustomization, overlay_files

    overlays = overlays_dir(out)
    base = {name: to_yaml(docs) for name, docs in render(model, options).items()}
    files = {out / name: text for name, text in base.items()}
    files[out / "kustomization.yaml"] = HEADER + base_kustomization(list(base))
    for overlay, overlay_text in overlay_files(model, options, base_path=f"../../{out.name}").items():
        for name, text in overlay_text.items():
            files[overlays / overlay / name] = HEADER + text
    for stale in [*out.glob("*.yaml"), *overlays.glob("*/*.yaml")]:
        if stale not in files and stale.read_text().startswith(HEADER):
            stale.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)
