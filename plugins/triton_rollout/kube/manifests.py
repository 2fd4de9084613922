"""Manifests for teams that deploy without Airflow (kubectl / Argo CD), rendered from the pod builders.

The Jobs wrap exactly the pods KubernetesPodOperator runs (kube/specs.py), so GitOps and Airflow users
get the same containers, security context and credential handling. Rendered files are committed under
k8s/ and a test fails when they drift from what this module renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client import models as k8s

from triton_rollout.config import GPU_PRODUCT_LABEL, GPU_RESOURCE, KubernetesConfig, ModelDeployment
from triton_rollout.kube import specs
from triton_rollout.steps import ReconcileRequest, SyncRequest

HEADER = "# Rendered by `python -m triton_rollout render-manifests`; edit the config or the code, not this file.\n"
ARGO_HOOK = "argocd.argoproj.io/hook"
ARGO_HOOK_DELETE = "argocd.argoproj.io/hook-delete-policy"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
TRITON_NAME = "triton"
TRITON_PORTS = (("http", 8000), ("grpc", 8001), ("metrics", 8002))


@dataclass(frozen=True)
class RenderOptions:
    """Cluster facts that are not per-model config."""

    version: int = 1  # the release the one-off and PreSync Jobs sync
    storage: str = "500Gi"
    storage_class: str | None = None
    reconcile_schedule: str = "*/30 * * * *"
    airflow_namespace: str = "airflow"
    airflow_service_account: str = "airflow-worker"
    triton_replicas: int = 1


def example_deployment() -> ModelDeployment:
    """The model the committed k8s/ files are rendered for; real teams render from their own config file."""
    return ModelDeployment(
        name="llama3-8b",
        release_prefix="s3://model-releases/prod",
        triton_url="http://triton.triton.svc.cluster.local:8000",
        keep=2,
        tp_size=1,
        pp_size=1,
        kubernetes=KubernetesConfig(gpu_product="NVIDIA-H100-80GB-HBM3"),
    )


def _meta(model: ModelDeployment, name: str, component: str, *, annotations: dict[str, str] | None = None,
          version: int | None = None) -> k8s.V1ObjectMeta:
    return k8s.V1ObjectMeta(name=name, namespace=model.kubernetes.namespace,
                            labels=specs.labels(model, component, version), annotations=annotations)


def _job_spec(pod: k8s.V1Pod, *, backoff_limit: int, deadline_s: int, ttl_s: int | None) -> k8s.V1JobSpec:
    return k8s.V1JobSpec(
        backoff_limit=backoff_limit,
        active_deadline_seconds=deadline_s,
        ttl_seconds_after_finished=ttl_s,
        template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=pod.metadata.labels), spec=pod.spec),
    )


def _sync_pod(model: ModelDeployment, version: int) -> k8s.V1Pod:
    return specs.step_pod(model, SyncRequest.for_model(model, model.release(version)))


def sync_job(model: ModelDeployment, version: int) -> k8s.V1Job:
    """One-off sync of one release (kubectl apply); cleaned up a day after it finishes."""
    pod = _sync_pod(model, version)
    return k8s.V1Job(api_version="batch/v1", kind="Job",
                     metadata=_meta(model, f"{model.name}-sync-v{version}", "sync", version=version),
                     spec=_job_spec(pod, backoff_limit=3, deadline_s=6 * 3600, ttl_s=86400))


def reconcile_cronjob(model: ModelDeployment, schedule: str) -> k8s.V1CronJob:
    """Periodic reconcile, the same step the reconcile DAG runs: check the promoted version's files on the
    PVC (stat records) and in Triton, repair drift through staging and reload (no-op when intact)."""
    pod = specs.step_pod(model, ReconcileRequest.for_model(model))
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
                spec=_job_spec(pod, backoff_limit=1, deadline_s=3 * 3600, ttl_s=86400),
            ),
        ),
    )


def argocd_presync_job(model: ModelDeployment, version: int) -> k8s.V1Job:
    """Sync the release before Argo CD applies the rest of the app (e.g. a Triton spec change).

    BeforeHookCreation deletes the previous run's Job first, so a lingering Job never makes Argo CD skip
    the hook or fail on the Job's immutable template (argoproj/argo-cd#25475, #14929); HookSucceeded
    removes it once done, a failed one stays for inspection until the next sync. No
    ttlSecondsAfterFinished: the TTL controller can delete the Job before Argo CD has seen it complete,
    and the sync then waits forever (argoproj/argo-cd#4979, #6880). A short backoff and a deadline keep a
    failing hook from holding the sync for hours.
    """
    pod = _sync_pod(model, version)
    annotations = {ARGO_HOOK: "PreSync", ARGO_HOOK_DELETE: "BeforeHookCreation,HookSucceeded"}
    return k8s.V1Job(api_version="batch/v1", kind="Job",
                     metadata=_meta(model, f"{model.name}-presync-sync", "presync", annotations=annotations,
                                    version=version),
                     spec=_job_spec(pod, backoff_limit=1, deadline_s=2 * 3600, ttl_s=None))


def model_repository_pvc(
    model: ModelDeployment, storage: str, storage_class: str | None
) -> k8s.V1PersistentVolumeClaim:
    # ReadWriteMany: sync pods and Triton pods run on different nodes and share the repository.
    return k8s.V1PersistentVolumeClaim(
        api_version="v1", kind="PersistentVolumeClaim",
        metadata=k8s.V1ObjectMeta(name=model.kubernetes.pvc_claim, namespace=model.kubernetes.namespace,
                                  labels={specs.APP_LABEL: specs.APP_NAME, specs.COMPONENT_LABEL: "storage"}),
        spec=k8s.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteMany"],
            storage_class_name=storage_class,
            resources=k8s.V1VolumeResourceRequirements(requests={"storage": storage}),
        ),
    )


def rbac(model: ModelDeployment, airflow_namespace: str, airflow_service_account: str) -> list[object]:
    """The pods' own service account, and what Airflow's needs to run them: pods + pods/log in one namespace.

    Events are read-only because KubernetesPodOperator reports a pod's events when it does not start.
    No pods/exec: the xcom sidecar is not used (results go to the log and the PVC's state/).
    """
    kube = model.kubernetes
    ns = kube.namespace
    aws = kube.aws
    sa = k8s.V1ServiceAccount(
        api_version="v1", kind="ServiceAccount",
        metadata=k8s.V1ObjectMeta(
            name=kube.service_account, namespace=ns,
            labels={specs.APP_LABEL: specs.APP_NAME, specs.COMPONENT_LABEL: "rbac"},
            annotations={IRSA_ANNOTATION: aws.irsa_role_arn} if aws.irsa_role_arn else None),
        automount_service_account_token=False,
    )
    role_name = "airflow-pod-launcher"
    role = k8s.V1Role(
        api_version="rbac.authorization.k8s.io/v1", kind="Role",
        metadata=k8s.V1ObjectMeta(name=role_name, namespace=ns,
                                  labels={specs.APP_LABEL: specs.APP_NAME, specs.COMPONENT_LABEL: "rbac"}),
        rules=[
            k8s.V1PolicyRule(api_groups=[""], resources=["pods"],
                             verbs=["create", "get", "list", "watch", "delete", "patch"]),
            k8s.V1PolicyRule(api_groups=[""], resources=["pods/log"], verbs=["get"]),
            k8s.V1PolicyRule(api_groups=[""], resources=["events"], verbs=["get", "list", "watch"]),
        ],
    )
    binding = k8s.V1RoleBinding(
        api_version="rbac.authorization.k8s.io/v1", kind="RoleBinding",
        metadata=k8s.V1ObjectMeta(name=role_name, namespace=ns,
                                  labels={specs.APP_LABEL: specs.APP_NAME, specs.COMPONENT_LABEL: "rbac"}),
        role_ref=k8s.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=role_name),
        subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=airflow_service_account,
                                    namespace=airflow_namespace)],
    )
    return [sa, role, binding]


def triton(model: ModelDeployment, replicas: int) -> list[object]:
    """Triton in explicit model-control mode, seeing only the PVC's repository/ (never staging/).

    Probes: startup waits on /v2/health/ready once (the promoted models loading at start); afterwards
    readiness and liveness use /v2/health/live, because /v2/health/ready turns false while *any* model
    loads (triton-inference-server/server#7014), and a candidate load must not take the serving pod out
    of the Service or get it restarted.
    """
    kube = model.kubernetes
    labels = {specs.APP_LABEL: TRITON_NAME, specs.COMPONENT_LABEL: "serving"}
    repo_mount = kube.triton_repository_path
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
    pod_spec = k8s.V1PodSpec(
        # Triton needs neither the Kubernetes API nor S3: the namespace's default account, no token.
        automount_service_account_token=False,
        security_context=specs.pod_security_context(model),
        node_selector=selector or None,
        tolerations=specs.tolerations(kube.tolerations),
        termination_grace_period_seconds=60,
        containers=[container],
        volumes=[
            k8s.V1Volume(name=specs.PVC_VOLUME, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                claim_name=kube.pvc_claim, read_only=True)),
            k8s.V1Volume(name=specs.TMP_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="1Gi")),
            k8s.V1Volume(name=specs.SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                                     size_limit=kube.shm_size)),
        ],
    )
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


def render(model: ModelDeployment, options: RenderOptions | None = None) -> dict[str, list[dict[str, object]]]:
    """File name -> the documents it holds (API-ready dicts)."""
    o = options or RenderOptions()
    files: dict[str, Sequence[object]] = {
        "pvc.yaml": [model_repository_pvc(model, o.storage, o.storage_class)],
        "rbac.yaml": rbac(model, o.airflow_namespace, o.airflow_service_account),
        "triton.yaml": triton(model, o.triton_replicas),
        "sync-job.yaml": [sync_job(model, o.version)],
        "reconcile-cronjob.yaml": [reconcile_cronjob(model, o.reconcile_schedule)],
        "argocd-presync-job.yaml": [argocd_presync_job(model, o.version)],
    }
    return {name: [specs.to_dict(doc) for doc in docs] for name, docs in files.items()}


def to_yaml(docs: list[dict[str, object]]) -> str:
    import yaml

    return HEADER + "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in docs)


def write(model: ModelDeployment, out: Path, options: RenderOptions | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, docs in render(model, options).items():
        path = out / name
        path.write_text(to_yaml(docs))
        written.append(path)
    return written
