"""Start / stop the Kubernetes API emulator as a background process, and the kubeconfig that reaches it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..procs import LOOPBACK, free_ports, spawn, stop_group, wait_until
from .kubelet import FS_GROUP_POLICY_ANNOTATION, HOST_PATH_ANNOTATION, RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S
from .rbac import ADMIN_TOKEN
from .restart import DONE_FILE, REQUEST_FILE

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTEXT = "devstack"


def default_runtime() -> dict[str, Any]:
    """Every image runs on the project's virtualenv with the library importable, as the sync image would."""
    venv = Path(sys.prefix)
    plugins = PROJECT_ROOT / "plugins"
    return {
        "pattern": "*",
        "path": [str(venv / "bin")],
        "env": {"PYTHONPATH": str(plugins), "VIRTUAL_ENV": str(venv)},
        # The sandbox sees only system dirs plus these, read-only: the venv, the interpreter it links to.
        "binds": sorted({str(venv), os.path.realpath(sys.base_prefix), str(plugins)}),
    }


def default_node() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "name": "devstack-node",
        "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
        "capacity": {"cpu": str(os.cpu_count() or 1), "memory": f"{mem // 1024}Ki", "pods": "110",
                     "ephemeral-storage": "100Gi"},
    }


@dataclass
class KubeEmulator:
    """The API-server emulator in its own process group.

    ``nodes``: dicts of name, labels, capacity (e.g. ``{"nvidia.com/gpu": "4"}``) and taints.
    ``images``: ordered runtime mappings (``pattern`` fnmatch on the image, ``path``, ``env``, ``binds``,
    optional ``entrypoint``); default: every image is the project's virtualenv.
    ``pvcs``: ``"namespace/claim"`` (or ``"claim"`` for default) -> host folder; created as Bound PVCs.
    ``secrets``: Secret objects created at start.
    ``storage_classes``: StorageClass objects created at start (default: one default class ``standard``
    offering ReadWriteOnce and ReadWriteMany); the emulator-only parameter ``devstack.kube/access-modes``
    lists the modes a class offers.
    ``bwrap``: None = use bubblewrap when installed, True = require it, False = plain processes.
    ``fake_cron_clock``: the CronJob controller's "now" is what ``set_cron_now`` last wrote (the real
    clock until then), so tests can step through schedules; Jobs always run on the real clock.
    ``pod_network``: each pod gets its own loopback IP (127.A.B.C, network.py) that its processes bind (the
    downward API's status.podIP, or DEVSTACK_POD_IP in every container) and probes aim at, so pods of one
    Deployment can listen on the same port; False (the default, as before): every pod's IP is 127.0.0.1.
    Services get a loopback ClusterIP proxy either way (services.py).
    ``restart_backoff``: (base, cap) seconds of the kubelet's container restart back-off; the default is the
    kubelet's 10 s doubling to 5 min, tests may shorten it (an emulator setting, no kubelet flag upstream).
    """

    state_dir: Path
    nodes: list[dict[str, Any]] = field(default_factory=lambda: [default_node()])
    images: list[dict[str, Any]] = field(default_factory=lambda: [default_runtime()])
    pvcs: dict[str, str] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    secrets: list[dict[str, Any]] = field(default_factory=list)
    storage_classes: list[dict[str, Any]] = field(default_factory=list)
    bwrap: bool | None = None
    fake_cron_clock: bool = False
    restart_backoff: tuple[float, float] = (RESTART_BACKOFF_S, RESTART_BACKOFF_MAX_S)
    pod_network: bool = False
    port: int = 0
    tls_port: int = 0  # the same API over TLS, for ServiceAccount kubeconfigs and pods' in-cluster config
    pid: int | None = None

    @property
    def server(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "apiserver.log"

    @property
    def cron_clock_file(self) -> Path:
        return self.state_dir / "cron-now"

    def set_cron_now(self, when: datetime) -> None:
        """Move the CronJob controller's clock (only with ``fake_cron_clock``)."""
        self.cron_clock_file.write_text(when.isoformat())

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def start(self, timeout: float = 20.0) -> KubeEmulator:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            (self.port,) = free_ports(1)
        if not self.tls_port:
            self.tls_port = next(p for p in free_ports(2) if p != self.port)
        config = {"port": self.port, "host": LOOPBACK, "state_dir": str(self.state_dir), "nodes": self.nodes,
                  "images": self.images, "pvcs": self.pvcs, "namespaces": self.namespaces,
                  "secrets": self.secrets, "storage_classes": self.storage_classes, "bwrap": self.bwrap,
                  "tls_port": self.tls_port, "restart_backoff": list(self.restart_backoff),
                  "pod_network": self.pod_network,
                  "cron_clock_file": str(self.cron_clock_file) if self.fake_cron_clock else None}
        config_path = self.state_dir / "emulator.json"
        config_path.write_text(json.dumps(config, indent=1))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
        proc = spawn([sys.executable, "-m", "devstack.kube", "--config", str(config_path)],
                     log_path=self.log_path, env=env, cwd=PROJECT_ROOT)
        self.pid = proc.pid
        try:
            wait_until(self._ready, timeout=timeout, what="Kubernetes API emulator", proc=proc,
                       log_path=self.log_path)
        except Exception:
            self.stop()
            raise
        self.write_kubeconfig(self.kubeconfig)
        # For `make down` and other processes that did not start it: stop_recorded(state_dir).
        (self.state_dir / "apiserver.pid").write_text(f"{self.pid}\n")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.server + "/version", timeout=0.5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def write_kubeconfig(self, path: Path, namespace: str = "default", token: str = ADMIN_TOKEN,
                         tls: bool = False) -> Path:
        """A kubeconfig for this emulator. The default token is the cluster admin's (rbac.py:
        system:masters), over plain HTTP. kubectl sends a kubeconfig's credentials only over TLS, so
        ``tls`` points at the TLS port, trusting the emulator's self-signed certificate."""
        cluster: dict[str, Any] = {"server": self.server}
        if tls:
            ca = (self.state_dir / "apiserver.crt").read_bytes()
            cluster = {"server": f"https://{LOOPBACK}:{self.tls_port}",
                       "certificate-authority-data": base64.b64encode(ca).decode()}
        doc = {  # JSON is valid YAML
            "apiVersion": "v1", "kind": "Config", "current-context": CONTEXT, "preferences": {},
            "clusters": [{"name": CONTEXT, "cluster": cluster}],
            "users": [{"name": CONTEXT, "user": {"token": token}}],
            "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT,
                                                       "namespace": namespace}}],
        }
        path.write_text(json.dumps(doc, indent=1) + "\n")
        return path

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path | None = None) -> Path:
        """A kubeconfig acting as ServiceAccount namespace/name (created if missing), with a token from
        the TokenRequest API, as a pod's projected token would be: RBAC decides what it may do."""
        self.create_service_account(namespace, name)
        review = self.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                           {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
        path = path or self.state_dir / f"kubeconfig-sa-{namespace}-{name}"
        return self.write_kubeconfig(path, namespace=namespace, token=review["status"]["token"], tls=True)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST an object as the admin (no client library needed); raises urllib.error.HTTPError on API
        errors."""
        req = urllib.request.Request(self.server + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def create_namespace(self, name: str) -> None:
        try:
            self.post("/api/v1/namespaces", {"metadata": {"name": name}})
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def create_pvc(self, namespace: str, claim: str, host_path: str | os.PathLike[str], *,
                   owner: tuple[int, int] | None = None, access_modes: tuple[str, ...] = ("ReadWriteMany",),
                   fs_group_policy: str | None = None) -> dict[str, Any]:
        """A PVC backed by a host folder (the annotations are the emulator's own, ignored elsewhere).

        ``owner`` (uid, gid): the folder and what is in it are handed to that user first, as a provisioner
        configured for the pods' user does (e.g. an EFS access point's posixUser / root directory owner).
        Without it the folder keeps its owner: pods running as another uid cannot write to it, as on a
        cluster. ``fs_group_policy`` stands for the storage's CSIDriver fsGroupPolicy (kubelet.py)."""
        self.create_namespace(namespace)
        if owner is not None:
            uid, gid = owner
            for dirpath, _, files in os.walk(host_path):
                for path in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
                    os.lchown(path, uid, gid)
        annotations = {HOST_PATH_ANNOTATION: str(host_path)}
        if fs_group_policy:
            annotations[FS_GROUP_POLICY_ANNOTATION] = fs_group_policy
        return self.post(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
            "metadata": {"name": claim, "annotations": annotations},
            "spec": {"accessModes": list(access_modes), "resources": {"requests": {"storage": "10Gi"}}},
        })

    def create_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ServiceAccount (pods naming a missing one are refused, as by the ServiceAccount admission
        plugin); None when it already exists."""
        self.create_namespace(namespace)
        try:
            return self.post(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
            return None

    def create_secret(self, namespace: str, name: str, string_data: dict[str, str]) -> dict[str, Any]:
        self.create_namespace(namespace)
        return self.post(f"/api/v1/namespaces/{namespace}/secrets",
                         {"metadata": {"name": name}, "stringData": string_data})

    def restart_api_server(self, outage_s: float = 2.0, timeout: float = 30.0) -> float:
        """Restart the API server alone (restart.py): every connection cut, refused for ``outage_s``, then back on
        the same ports with every object kept; pods keep running. Returns the seconds it was down."""
        assert self.pid is not None, "the emulator is not running"
        done = self.state_dir / DONE_FILE
        before = json.loads(done.read_text())["restarts"] if done.exists() else 0
        (self.state_dir / REQUEST_FILE).write_text(json.dumps({"outage_s": outage_s}))
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + outage_s + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                report = json.loads(done.read_text())
                if report["restarts"] > before:
                    return float(report["down_s"])
            time.sleep(0.05)
        raise TimeoutError(f"the API emulator did not come back within {outage_s + timeout:.0f}s of a restart "
                           f"(log: {self.log_path})")

    def stop(self) -> None:
        if self.pid is not None:
            # The server kills its pods on SIGTERM; the group kill after the grace catches anything left.
            stop_group(self.pid, grace=5.0)
            self.pid = None
            (self.state_dir / "apiserver.pid").unlink(missing_ok=True)

    @staticmethod
    def stop_recorded(state_dir: Path) -> bool:
        """Stop an emulator started by another process from its pid file; False if none was recorded."""
        pid_file = state_dir / "apiserver.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return False
        try:
            # A stale pid file must not stop whatever process reused the pid.
            alive = b"devstack.kube" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            alive = False
        if alive:
            stop_group(pid, grace=5.0)
        pid_file.unlink(missing_ok=True)
        return True

    def core_v1(self):  # type: ignore[no-untyped-def]
        """A kubernetes CoreV1Api client for this emulator (imported lazily: the server needs no client)."""
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        return client.CoreV1Api(api_client)

    def batch_v1(self):  # type: ignore[no-untyped-def]
        """A kubernetes BatchV1Api client for this emulator (Jobs, CronJobs)."""
        from kubernetes import client, config

        return client.BatchV1Api(config.new_client_from_config(config_file=str(self.kubeconfig)))

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
