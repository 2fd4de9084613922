"""The local real stack the demo and `make up` share: S3, Triton and the Kubernetes emulator, wired up.

S3 holds the demo releases; Triton serves ``<pvc>/repository`` (explicit mode); the emulator has the
namespace, the PVC claim (backed by the same host folder) and the S3 Secret the models config names.
``env()`` is what the DAGs and the CLI need to reach all three (the variables dags/models.yaml reads).

``triton_replicas`` N >= 1 runs Triton as the project's Triton Deployment + Service (manifests.py ``triton()``
rendered for dags/models.yaml's first model, as on a cluster) inside the emulator: N real tritonservers,
each on its own loopback pod IP, behind the Service's loopback ClusterIP proxy, which is then TRITON_URL.
The emulator gets a node with GPUs (a number: nothing is attached) for them, since the pods ask for
``nvidia.com/gpu``. 0 (the default here) keeps the single tritonserver process; ``make up`` asks for
``TRITON_REPLICAS`` (default 2). With a fleet, env() names the Service (ROLLOUT_TRITON_SERVICE, TRITON_SERVICE):
the rollout steps then address each replica at its pod IP (triton/fleet.py).

S3 is moto's server by default (devstack/moto.py): the one local S3 that sends bucket notifications, so
the models in ``event_models`` get their own SQS queue with ObjectCreated events for their manifest.json
(``ROLLOUT_EVENTS_QUEUE_<MODEL>`` in env(), read by dags/models.yaml). ``s3_kind="seaweedfs"`` runs the
real SeaweedFS server instead (credentials checked, no notifications: every model polls).
"""

from __future__ import annotations

import importlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triton_rollout.build.builders import BUILDERS_ENV
from triton_rollout.config import GPU_PRODUCT_LABEL, KubernetesConfig, ModelDeployment, read_config_file
from triton_rollout.kube import specs
from triton_rollout.kube.manifests import TRITON_NAME, RenderOptions, triton

from .kube import KubeEmulator, default_node, default_runtime
from .kube.rbac import ADMIN_TOKEN
from .kube.scheduler import pod_requests
from .moto import MotoS3
from .s3 import SeaweedS3
from .triton import TritonServer
from .triton import image_runtime as triton_image_runtime

BUCKET = "models"
NAMESPACE = "triton"
PVC_CLAIM = "triton-model-repository"
S3_SECRET = "triton-rollout-s3"
# What dags/models.yaml's pods need to exist and to write as, as on a cluster: their ServiceAccount (the
# emulator refuses pods naming a missing one) and a PVC folder owned by their uid / fsGroup (the claim is
# ReadWriteMany, to which kubelet does not apply fsGroup: the provisioner hands it to that user).
SERVICE_ACCOUNT = KubernetesConfig().service_account
PVC_OWNER = (KubernetesConfig().run_as_user, KubernetesConfig().fs_group)
REPO = Path(__file__).resolve().parent.parent
# The RBAC a platform team applies (rendered by `make manifests`), and the ServiceAccount it binds: the
# identity of Airflow's workers and triggerer, which launch and watch the step pods.
RBAC_MANIFEST = REPO / "k8s" / "rbac.yaml"
AIRFLOW_IDENTITY = (RenderOptions().airflow_namespace, RenderOptions().airflow_service_account)
# The CPU demo builder (backend cpu-demo in dags/models.yaml) lives here, outside the product: every
# process that validates or runs its specs names it. Airflow and the CLI get it from env(), the pods from
# their image (image_runtime()), the tests from tests/conftest.py.
DEMO_BUILDERS = {BUILDERS_ENV: "devstack.demo_builder"}
RELEASE_PREFIX = "releases"
# The models whose deploys S3 events start on the local stack (dags/models.yaml: models[].events).
EVENT_MODELS = ("demo-tensor",)
S3_KINDS = ("moto", "seaweedfs")
MODELS_CONFIG = REPO / "dags" / "models.yaml"
# What `make up` and `make demo` run: two replicas, rolled one at a time (triton/fleet.py), the smallest fleet
# where a replica can leave the Service while another serves.
DEFAULT_TRITON_REPLICAS = 2
FLEET_GPUS = 8  # the emulator's GPU node (more when the replicas need more): room to add replicas


def events_queue_variable(model: str) -> str:
    """The environment variable dags/models.yaml reads the model's SQS queue URL from."""
    return "ROLLOUT_EVENTS_QUEUE_" + model.upper().replace("-", "_").replace(".", "_")


def apply_manifest(kube: KubeEmulator, path: Path) -> list[str]:
    """Create each object of a manifest file as the admin (what `kubectl apply -f` does for new objects;
    an object that exists already is left as it is). Returns "kind/name" of each object created."""
    import yaml

    created = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        group_version, kind, meta = doc["apiVersion"], doc["kind"], doc["metadata"]
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        namespace = meta.get("namespace")
        if namespace:
            kube.create_namespace(namespace)
            base += f"/namespaces/{namespace}"
        try:
            kube.post(f"{base}/{kind.lower()}s", doc)  # ServiceAccount, Role, RoleBinding: regular plurals
            created.append(f"{kind}/{meta['name']}")
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
    return created


def airflow_kubeconfig(kube: KubeEmulator) -> Path:
    """The project's RBAC applied, and a kubeconfig for the ServiceAccount it binds (over the emulator's
    TLS port, with a TokenRequest token): Airflow then gets exactly the verbs k8s/rbac.yaml grants, so a
    missing one fails here as it would on a cluster."""
    apply_manifest(kube, RBAC_MANIFEST)
    return kube.service_account_kubeconfig(*AIRFLOW_IDENTITY)


def image_runtime() -> dict[str, Any]:
    """The emulator's image runtime: the project's virtualenv and library (default_runtime) plus devstack,
    so the build pod finds the demo builder as a demo build image would ship it (ENV TRITON_ROLLOUT_BUILDERS)."""
    runtime = default_runtime()
    runtime["env"] = {**runtime["env"], **DEMO_BUILDERS,
                      "PYTHONPATH": os.pathsep.join([runtime["env"]["PYTHONPATH"], str(REPO)])}
    runtime["binds"] = sorted({*runtime["binds"], str(REPO / "devstack")})
    return runtime


def fleet_model(environ: dict[str, str]) -> ModelDeployment:
    """The model the stack renders the Triton Deployment for: dags/models.yaml's first (one Triton serves
    every model; its Kubernetes settings come from the config's defaults)."""
    importlib.import_module(DEMO_BUILDERS[BUILDERS_ENV])  # registers the cpu-demo backend the config names
    return read_config_file(MODELS_CONFIG, environ={**os.environ, **environ}).models[0]


def gpu_node(model: ModelDeployment, replicas: int) -> dict[str, Any]:
    """A node the Triton pods fit on: their node selector's labels, and room for max(replicas, FLEET_GPUS /
    GPUs per replica) of them (GPUs are a count in the emulator; CPU and memory are the pods' requests)."""
    node = default_node()
    selector = dict(model.kubernetes.build_node_selector)
    if model.kubernetes.gpu_product:
        selector[GPU_PRODUCT_LABEL] = model.kubernetes.gpu_product
    slots = max(replicas, FLEET_GPUS // model.gpus)
    pod = {"spec": specs.to_dict(triton(model, replicas)[0])["spec"]["template"]["spec"]}  # type: ignore[index]
    requests = pod_requests(pod)
    node["name"] = "devstack-gpu-node"
    node["labels"] = {**node["labels"], **selector}
    node["capacity"] = {**node["capacity"], **{k: str(v * slots) for k, v in requests.items()}}
    return node


def _admin_get(kube: KubeEmulator, path: str) -> dict[str, Any]:
    req = urllib.request.Request(kube.server + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def start_triton_fleet(kube: KubeEmulator, model: ModelDeployment, replicas: int, timeout: float = 120.0) -> str:
    """Create the rendered Triton Deployment + Service, wait until every replica's server is ready, and
    return the Service's address (``http://<ClusterIP>:<http port>``).

    Waits for Ready: each pod's serving-gate sidecar sets its readiness gate once its Triton is ready, as on a
    cluster (kube/manifests.py triton())."""
    deployment, service = (specs.to_dict(obj) for obj in triton(model, replicas))
    ns = model.kubernetes.namespace
    kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)
    created = kube.post(f"/api/v1/namespaces/{ns}/services", service)
    selector = ",".join(f"{k}={v}" for k, v in sorted(deployment["spec"]["selector"]["matchLabels"].items()))
    deadline = time.monotonic() + timeout
    ready = 0
    while time.monotonic() < deadline:
        pods = _admin_get(kube, f"/api/v1/namespaces/{ns}/pods?labelSelector={urllib.parse.quote(selector)}")
        ready = sum(1 for p in pods["items"] if any(c["type"] == "Ready" and c["status"] == "True"
                                                     for c in p["status"].get("conditions") or []))
        if ready >= replicas:
            break
        time.sleep(0.5)
    else:
        name = deployment["metadata"]["name"]
        raise RuntimeError(f"the Triton Deployment {ns}/{name} has {ready} of {replicas} replicas ready after "
                           f"{timeout:.0f} s: see `kubectl -n {ns} describe pods` and {kube.log_path}")
    http = next(p for p in created["spec"]["ports"] if p.get("name") == "http")
    return f"http://{created['spec']['clusterIP']}:{http['port']}"


@dataclass
class LocalStack:
    root: Path
    s3_kind: str = "moto"
    event_models: tuple[str, ...] = EVENT_MODELS
    s3: MotoS3 | SeaweedS3 | None = None
    queues: dict[str, str] = field(default_factory=dict)  # model -> SQS queue URL
    # What Airflow talks to the emulator as (airflow_kubeconfig); env()'s KUBECONFIG stays the admin's.
    airflow_kube: Path | None = None
    triton: TritonServer | None = None
    # N >= 1: Triton as a Deployment of N in the emulator (the module docstring), else the single process.
    triton_replicas: int = 0
    triton_service_url: str | None = None
    kube: KubeEmulator | None = None
    started: list[str] = field(default_factory=list)

    @property
    def pvc(self) -> Path:
        return self.root / "pvc"

    def start(self) -> LocalStack:
        """Start all three; on any failure, stop what was started and re-raise."""
        try:
            self.pvc.mkdir(parents=True, exist_ok=True)
            (self.pvc / "repository").mkdir(exist_ok=True)
            if self.s3_kind not in S3_KINDS:
                raise ValueError(f"s3_kind must be one of {S3_KINDS}, got {self.s3_kind!r}")
            if self.s3_kind == "moto":
                moto = MotoS3(self.root / "s3", buckets=(BUCKET,)).start()
                self.s3 = moto
                self.queues = {m: moto.release_queue(BUCKET, f"{RELEASE_PREFIX}/{m}", f"rollout-releases-{m}")
                               for m in self.event_models}
            else:
                self.s3 = SeaweedS3(self.root / "s3", buckets=(BUCKET,)).start()
            self.started.append("s3")
            nodes, images = [default_node()], [image_runtime()]
            model = fleet_model(self._base_env()) if self.triton_replicas > 0 else None
            if model is None:
                self.triton = TritonServer(self.pvc / "repository", self.root / "triton").start()
                self.started.append("triton")
            else:
                nodes.append(gpu_node(model, self.triton_replicas))
                # Before the catch-all mapping: the Triton image runs the real server (devstack/triton.py).
                images.insert(0, triton_image_runtime(model.kubernetes.images.triton))
            self.kube = KubeEmulator(self.root / "kube", nodes=nodes, images=images,
                                     pod_network=model is not None).start()
            self.started.append("kube")
            self.kube.create_pvc(NAMESPACE, PVC_CLAIM, self.pvc, owner=PVC_OWNER)
            self.kube.create_service_account(NAMESPACE, SERVICE_ACCOUNT)
            self.airflow_kube = airflow_kubeconfig(self.kube)
            try:
                self.kube.create_secret(NAMESPACE, S3_SECRET, {"AWS_ACCESS_KEY_ID": self.s3.access_key,
                                                               "AWS_SECRET_ACCESS_KEY": self.s3.secret_key})
            except urllib.error.HTTPError as exc:
                if exc.code != 409:
                    raise
            if model is not None:
                self.triton_service_url = start_triton_fleet(self.kube, model, self.triton_replicas)
                self.started.append("triton")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def triton_url(self) -> str:
        """What clients use: the Triton Service's address (fleet), or the single server's."""
        url = self.triton_service_url or (self.triton.http_url if self.triton else None)
        assert url, "start() the stack first"
        return url

    @property
    def triton_repository(self) -> str:
        if self.triton_service_url:
            return fleet_model(self._base_env()).kubernetes.triton_repository_path
        return str(self.pvc / "repository")

    def _base_env(self) -> dict[str, str]:
        """What dags/models.yaml reads before Triton and the emulator exist (the PVC claim, images)."""
        return {**DEMO_BUILDERS, "PVC_DIR": str(self.pvc), "ROLLOUT_BUCKET": BUCKET}

    def env(self) -> dict[str, str]:
        assert self.s3 and self.kube and (self.triton or self.triton_service_url), "start() the stack first"
        return {
            **self.s3.env(), **self.kube.env(), **DEMO_BUILDERS,
            "TRITON_URL": self.triton_url,
            # Where Triton sees repository/ (engine paths are written for it): the Deployment's mount in a fleet.
            "TRITON_MODEL_REPOSITORY": self.triton_repository,
            "PVC_DIR": str(self.pvc),
            "ROLLOUT_BUCKET": BUCKET,
            **{events_queue_variable(m): url for m, url in self.queues.items()},
            # A fleet: the steps address each replica (dags/models.yaml kubernetes.triton_service; the CLI's flag).
            **({"ROLLOUT_TRITON_SERVICE": TRITON_NAME, "TRITON_SERVICE": f"{NAMESPACE}/{TRITON_NAME}"}
               if self.triton_service_url else {}),
        }

    def airflow_connections(self) -> dict[str, dict[str, object]]:
        """The Airflow connections the DAGs use on this stack: ``aws_default`` for the local S3 (keys,
        endpoint and region in the connection, as the amazon provider reads them)."""
        assert self.s3, "start() the stack first"
        return {"aws_default": {"conn_type": "aws", "login": self.s3.access_key, "password": self.s3.secret_key,
                                "extra": {"endpoint_url": self.s3.endpoint, "region_name": "us-east-1"}}}

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in (("s3", self.s3), ("triton", self.triton), ("kube", self.kube))
                if proc is not None and proc.pid is not None}

    def stop(self) -> None:
        for proc in (self.kube, self.triton, self.s3):
            if proc is not None:
                proc.stop()
