"""Pod specs (kubernetes client models) for the rollout steps: one pod per step request (steps.py).

Driven by :class:`~triton_rollout.config.ModelDeployment` and a step's typed request, whose fields become
the container args. The same pods are handed to KubernetesPodOperator (airflow/operators.py) and wrapped
into Job / CronJob manifests (kube/manifests.py), so Airflow and GitOps users run identical containers.

Security posture every pod shares: non-root uid, read-only root filesystem with a writable ``/tmp``
emptyDir, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp. S3 credentials
come from a Secret by reference (``secretKeyRef``) or from the service account (IRSA); no builder takes
a credential value, so one cannot end up in a rendered manifest or a task log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kubernetes.client import models as k8s

from triton_rollout.config import GPU_PRODUCT_LABEL, GPU_RESOURCE, ModelDeployment, ResourceSpec, Toleration
from triton_rollout.release.signing import BUILD_KEY_SECRET_KEY, SIGNING_KEY_ENV
from triton_rollout.steps import BuildRequest, StepRequest

APP_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
MODEL_LABEL = "triton-rollout/model"
VERSION_LABEL = "triton-rollout/version"
APP_NAME = "triton-rollout"
CLI = ("python", "-m", "triton_rollout")
TMP_VOLUME = "tmp"
PVC_VOLUME = "model-repository"
SHM_VOLUME = "dshm"
SCRATCH_VOLUME = "scratch"
SCRATCH_PATH = "/scratch"
SIGNING_KEY_DIR = "/var/run/secrets/triton-rollout/signing"


def labels(model: ModelDeployment, component: str, version: int | None = None) -> dict[str, str]:
    out = {APP_LABEL: APP_NAME, COMPONENT_LABEL: component, MODEL_LABEL: model.name}
    if version is not None:
        out[VERSION_LABEL] = str(version)
    return out


def resource_requirements(spec: ResourceSpec, extra: Mapping[str, str] | None = None) -> k8s.V1ResourceRequirements:
    """requests/limits; ``extra`` (e.g. GPUs) goes into both, as extended resources must match."""
    requests = dict(spec.requests)
    limits = dict(spec.limits)
    for name, qty in (extra or {}).items():
        requests[name] = qty
        limits[name] = qty
    return k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None)


def pod_security_context(model: ModelDeployment) -> k8s.V1PodSecurityContext:
    kube = model.kubernetes
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=kube.run_as_user,
        run_as_group=kube.run_as_group,
        # Files written to the PVC get this group so the Triton pod (same fsGroup) can read them.
        fs_group=kube.fs_group,
        fs_group_change_policy=kube.storage.fs_group_change_policy,  # config/storage.py
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        run_as_non_root=True,
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        privileged=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def aws_env(model: ModelDeployment) -> list[k8s.V1EnvVar]:
    """S3 settings for the container: key references only; IRSA needs nothing here (the SA carries it)."""
    aws = model.kubernetes.aws
    env: list[k8s.V1EnvVar] = []
    if aws.secret_name:
        for var, key in (("AWS_ACCESS_KEY_ID", aws.access_key_id_key),
                         ("AWS_SECRET_ACCESS_KEY", aws.secret_access_key_key)):
            env.append(k8s.V1EnvVar(
                name=var,
                value_from=k8s.V1EnvVarSource(
                    secret_key_ref=k8s.V1SecretKeySelector(name=aws.secret_name, key=key, optional=False)
                ),
            ))
    if aws.region:
        env.append(k8s.V1EnvVar(name="AWS_DEFAULT_REGION", value=aws.region))
    if aws.endpoint_url:
        env.append(k8s.V1EnvVar(name="AWS_ENDPOINT_URL", value=aws.endpoint_url))
    return env


def common_env(model: ModelDeployment) -> list[k8s.V1EnvVar]:
    return [
        # Python must not try to write .pyc files into the read-only root filesystem.
        k8s.V1EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
        k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
        k8s.V1EnvVar(name="HOME", value="/tmp"),
        k8s.V1EnvVar(name="TMPDIR", value="/tmp"),
        *aws_env(model),
    ]


def tmp_volume() -> tuple[k8s.V1Volume, k8s.V1VolumeMount]:
    return (
        k8s.V1Volume(name=TMP_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="1Gi")),
        k8s.V1VolumeMount(name=TMP_VOLUME, mount_path="/tmp"),
    )


def pvc_volume(model: ModelDeployment, *, read_only: bool = False) -> tuple[k8s.V1Volume, k8s.V1VolumeMount]:
    kube = model.kubernetes
    return (
        k8s.V1Volume(
            name=PVC_VOLUME,
            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=kube.pvc_claim),
        ),
        k8s.V1VolumeMount(name=PVC_VOLUME, mount_path=kube.pvc_mount_path, read_only=read_only or None),
    )


def image_pull_secrets(model: ModelDeployment) -> list[k8s.V1LocalObjectReference] | None:
    """The registry Secrets (type kubernetes.io/dockerconfigjson) a pod pulls its images with."""
    return [k8s.V1LocalObjectReference(name=n) for n in model.kubernetes.image_pull_secrets] or None


def tolerations(items: Sequence[Toleration]) -> list[k8s.V1Toleration] | None:
    out = [k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect) for t in items]
    return out or None


def _pod(
    model: ModelDeployment,
    *,
    component: str,
    container: k8s.V1Container,
    volumes: list[k8s.V1Volume],
    version: int | None,
    name: str | None,
    node_selector: Mapping[str, str] | None,
    pod_tolerations: list[k8s.V1Toleration] | None = None,
    api_access: bool = False,
) -> k8s.V1Pod:
    kube = model.kubernetes
    return k8s.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=k8s.V1ObjectMeta(
            name=name, namespace=kube.namespace, labels=labels(model, component, version)
        ),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            service_account_name=kube.service_account,
            # Only a fleet rollout's steps call the Kubernetes API (RBAC: k8s/rbac.yaml triton-rollout-fleet);
            # IRSA uses its own projected token, not this one.
            automount_service_account_token=api_access,
            security_context=pod_security_context(model),
            node_selector=dict(node_selector) if node_selector else None,
            tolerations=pod_tolerations,
            image_pull_secrets=image_pull_secrets(model),
            containers=[container],
            volumes=volumes,
        ),
    )


def step_pod(model: ModelDeployment, request: StepRequest, *, name: str | None = None) -> k8s.V1Pod:
    """The pod that runs one rollout step: ``python -m triton_rollout <request as args>``.

    Build requests get a GPU build pod (:func:`build_pod`); every other step runs in the sync image with
    the PVC mounted. The component label is the step's command (sync, load, smoke, ...)."""
    if isinstance(request, BuildRequest):
        return build_pod(model, request, name=name)
    kube = model.kubernetes
    tmp, tmp_mount = tmp_volume()
    pvc, pvc_mount = pvc_volume(model)
    container = k8s.V1Container(
        name=request.command,
        image=kube.images.sync,
        image_pull_policy="IfNotPresent",
        command=list(CLI),
        args=request.to_argv(),
        env=common_env(model),
        resources=resource_requirements(kube.sync_resources),
        security_context=container_security_context(),
        volume_mounts=[tmp_mount, pvc_mount],
        termination_message_policy="FallbackToLogsOnError",
    )
    # A fleet rollout (--triton-service) finds and drains the Triton replicas through the API (kube/fleet_api.py).
    api_access = getattr(request, "triton_service", None) is not None
    return _pod(model, component=request.command, container=container, volumes=[tmp, pvc],
                version=request.pod_version, name=name, node_selector=kube.node_selector, api_access=api_access)


def build_pod(model: ModelDeployment, request: BuildRequest, *, name: str | None = None) -> k8s.V1Pod:
    """An engine build on GPU nodes: ``nvidia.com/gpu`` = the spec's GPU count (tp x pp; 0 for a builder
    that needs none, which then asks for no GPU node either), shared memory, scratch space.

    The build pod does not mount the model repository: it reads a checkpoint from S3 and publishes an
    engine release back to S3.
    """
    kube = model.kubernetes
    spec = model.build.build_spec
    gpus = spec.gpus if spec is not None else model.gpus
    tmp, tmp_mount = tmp_volume()
    volumes = [
        tmp,
        # NCCL and the TensorRT-LLM runtime use /dev/shm; the container default (64 MiB) is far too small.
        k8s.V1Volume(name=SHM_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                           size_limit=kube.shm_size)),
        # Checkpoints and engines are large: scratch on node-local ephemeral storage, counted in requests.
        k8s.V1Volume(name=SCRATCH_VOLUME, empty_dir=k8s.V1EmptyDirVolumeSource()),
    ]
    mounts = [
        tmp_mount,
        k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"),
        k8s.V1VolumeMount(name=SCRATCH_VOLUME, mount_path=SCRATCH_PATH),
    ]
    env = [*common_env(model), k8s.V1EnvVar(name="SCRATCH_DIR", value=SCRATCH_PATH)]
    if model.signing.build_key_secret:
        # The engine release is signed with this key (release/signing.py): a file from the Secret, never an
        # env value; group-readable for fsGroup, since the pod runs as non-root.
        volumes.append(k8s.V1Volume(name="signing-key", secret=k8s.V1SecretVolumeSource(
            secret_name=model.signing.build_key_secret, default_mode=0o440)))
        mounts.append(k8s.V1VolumeMount(name="signing-key", mount_path=SIGNING_KEY_DIR, read_only=True))
        env.append(k8s.V1EnvVar(name=SIGNING_KEY_ENV, value=f"{SIGNING_KEY_DIR}/{BUILD_KEY_SECRET_KEY}"))
    container = k8s.V1Container(
        name="build",
        image=kube.images.build,
        image_pull_policy="IfNotPresent",
        command=list(CLI),
        args=request.to_argv(),
        env=env,
        resources=resource_requirements(kube.build_resources, {GPU_RESOURCE: str(gpus)} if gpus else None),
        security_context=container_security_context(),
        volume_mounts=mounts,
        termination_message_policy="FallbackToLogsOnError",
    )
    selector = dict(kube.build_node_selector)
    if kube.gpu_product and gpus:
        selector[GPU_PRODUCT_LABEL] = kube.gpu_product
    return _pod(model, component="build", container=container, volumes=volumes, version=request.pod_version,
                name=name, node_selector=selector, pod_tolerations=tolerations(kube.tolerations) if gpus else None)


def to_dict(obj: object) -> dict[str, object]:
    """A model as the API would receive it (camelCase keys, no None values)."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)
