"""The local real stack the demo and `make up` share: S3, Triton and the Kubernetes emulator, wired up.

S3 holds the demo releases; Triton serves ``<pvc>/repository`` (explicit mode); the emulator has the
namespace, the PVC claim (backed by the same host folder) and the S3 Secret the models config names.
``env()`` is what the DAGs and the CLI need to reach all three (the variables dags/models.yaml reads).

S3 is moto's server by default (devstack/moto.py): the one local S3 that sends bucket notifications, so
the models in ``event_models`` get their own SQS queue with ObjectCreated events for their manifest.json
(``ROLLOUT_EVENTS_QUEUE_<MODEL>`` in env(), read by dags/models.yaml). ``s3_kind="seaweedfs"`` runs the
real SeaweedFS server instead (credentials checked, no notifications: every model polls).
"""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triton_rollout.build.builders import BUILDERS_ENV
from triton_rollout.config import KubernetesConfig
from triton_rollout.kube.manifests import RenderOptions

from .kube import KubeEmulator, default_runtime
from .moto import MotoS3
from .s3 import SeaweedS3
from .triton import TritonServer

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
            self.triton = TritonServer(self.pvc / "repository", self.root / "triton").start()
            self.started.append("triton")
            self.kube = KubeEmulator(self.root / "kube", images=[image_runtime()]).start()
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
        except BaseException:
            self.stop()
            raise
        return self

    def env(self) -> dict[str, str]:
        assert self.s3 and self.triton and self.kube, "start() the stack first"
        return {
            **self.s3.env(), **self.kube.env(), **DEMO_BUILDERS,
            "TRITON_URL": self.triton.http_url,
            "TRITON_MODEL_REPOSITORY": str(self.pvc / "repository"),
            "PVC_DIR": str(self.pvc),
            "ROLLOUT_BUCKET": BUCKET,
            **{events_queue_variable(m): url for m, url in self.queues.items()},
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
