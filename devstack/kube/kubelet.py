"""The emulator's kubelet: really run a scheduled pod's containers and report them on the pod.

Init containers run one by one, then the containers together, each as ``bwrap`` sandbox (or a plain
process when bubblewrap is missing) with the pod's volumes bind-mounted and its env resolved;
stdout+stderr are captured line by line with RFC 3339 nano timestamps into the pod log, exit codes
into ``containerStatuses[].state.terminated``. Deletion is SIGTERM, then SIGKILL after the grace period.

Containers restart in place as restartPolicy says (kuberuntime computePodActions / doBackOff): Always
restarts every exit, OnFailure a non-zero one, Never none; init containers only when they failed (and
not under Never, which fails the pod). The first restart is immediate, later ones wait the back-off (10 s
doubling to 5 min; ``restart_backoff`` shortens it for tests) in ``waiting`` CrashLoopBackOff with the
kubelet's message, and a BackOff warning event; each instance bumps ``restartCount``, the one it replaces
becomes ``lastState.terminated``, its log becomes the ``previous`` one, and it gets Pulled / Created /
Started events and probe workers of its own. The phase stays Running (Pending for init containers) while
a container will run again, and is Succeeded / Failed once none will.

As strict as a cluster's kubelet where a pod depends on it: the process runs as the securityContext's
user and groups (runAsNonRoot checked against the image's USER), fsGroup is applied only to volumes that
support ownership management, an image no mapping matches cannot be "pulled", a missing ConfigMap /
Secret blocks the pod (FailedMount / CreateContainerConfigError), a subPath is created as kubelet does.

In-cluster access: projected volumes (the ``kube-api-access-*`` one admission.py adds among them) get their
secret / configMap / downwardAPI files and a TokenRequest token bound to the pod, and every container the
``kubernetes`` Service's env vars naming the emulator's TLS port (``api_endpoint``).
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .admission import SA_TOKEN_MOUNT_PATH, SA_TOKEN_VOLUME_PREFIX
from .events import record_pod_event
from .network import LOOPBACK_IP, POD_IP_ENV, PodNetwork
from .pod_status import set_condition, update_ready
from .prober import ContainerProber
from .store import ApiError, Obj, Store, now_iso

# The emulator-only PVC annotation naming the host folder behind the claim (api.py sets it on create).
HOST_PATH_ANNOTATION = "devstack.kube/host-path"
# The emulator-only PVC annotation standing in for the CSIDriver's spec.fsGroupPolicy of the claim's
# storage: ReadWriteOnceWithFSType (the default: fsGroup applies to RWO claims only), File (always), None.
FS_GROUP_POLICY_ANNOTATION = "devstack.kube/fs-group-policy"
FS_GROUP_POLICIES = ("ReadWriteOnceWithFSType", "File", "None")
SETPRIV = shutil.which("setpriv")
# How often an unpullable image is retried (kubelet backs off 10 s doubling to 5 min; one step is enough here).
IMAGE_BACKOFF_S = 2.0
# Container restart back-off: pkg/kubelet/kubelet.go backOffPeriod and MaxContainerBackOff (no jitter).
RESTART_BACKOFF_S = 10.0
RESTART_BACKOFF_MAX_S = 300.0
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# Host entries bound read-only into every sandbox: enough for a dynamically linked runtime.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


def rfc3339_nano(ns: int | None = None) -> str:
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


@dataclass
class Runtime:
    """What an image means locally: PATH entries, extra env, host paths the sandbox needs to see."""

    pattern: str
    path: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    binds: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    # The image's USER (uid, gid); None: root, as an image without USER runs (what runAsNonRoot checks).
    user: int | None = None
    group: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Runtime:
        return cls(data["pattern"], list(data.get("path", [])), dict(data.get("env", {})),
                   list(data.get("binds", [])), list(data.get("entrypoint", [])),
                   data.get("user"), data.get("group"))


@dataclass
class RestartBackoff:
    """k8s.io/client-go/util/flowcontrol Backoff for one container, as kuberuntime's doBackOff uses it.

    The first restart is immediate and arms ``base``; an instance that exits while the armed delay has not
    passed since its finish is held back (CrashLoopBackOff) until it has, and each restart after a hold
    doubles the delay, up to ``cap``. A container that ran more than twice the cap since the last restart
    starts over at ``base`` (flowcontrol hasExpired)."""

    base: float
    cap: float
    delay: float | None = None
    last_update: float = 0.0

    def _expired(self, finished: float) -> bool:
        return self.delay is None or finished - self.last_update > 2 * self.cap

    def hold(self, finished: float) -> float:
        """Seconds after ``finished`` (monotonic) before the next instance may start; 0: at once."""
        return 0.0 if self.delay is None or self._expired(finished) else self.delay

    def next(self, finished: float, now: float) -> None:
        """A restart happens now (flowcontrol Backoff.Next with the finish as the event time)."""
        self.delay = self.base if self.delay is None or self._expired(finished) else min(self.delay * 2, self.cap)
        self.last_update = now


@dataclass
class _Instance:
    """One container of a pod across its restarts: its live process (None between instances) and counts."""

    spec: Obj
    backoff: RestartBackoff
    proc: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    prober: ContainerProber | None = None
    started: str = ""  # startedAt of the latest instance
    restarts: int = 0
    finished_at: float = 0.0  # monotonic finish of the latest instance
    last_exit: int = 0
    restart_at: float | None = None  # monotonic time the next instance starts
    exit_code: int | None = None  # set once the container will not run again


def _restarts(policy: str, exit_code: int, *, init: bool) -> bool:
    """Whether an exited container runs again (kuberuntime computePodActions / computeInitContainerActions):
    never under Never; a failed one under OnFailure; every exit of a regular container under Always, while
    init containers, which run to completion once, are restarted only when they failed."""
    if policy == "Never":
        return False
    if policy == "OnFailure" or init:
        return exit_code != 0
    return True


def go_duration(seconds: float) -> str:
    """Go's time.Duration String, as kubelet's back-off message prints it: 500ms, 10s, 1m20s, 5m0s."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{secs:.6f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


@dataclass(frozen=True)
class Identity:
    """Who a container's process is: uid, primary gid, supplementary groups (fsGroup + supplementalGroups)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    no_new_privs: bool = False


class Kubelet:
    """A runner thread per scheduled pod, and the live processes of each, for deletion and shutdown."""

    def __init__(self, store: Store, *, runtimes: list[Runtime], state_dir: Path,
                 use_bwrap: bool | None = None,
                 restart_backoff: tuple[float, float] = (RESTART_BACKOFF_S, RESTART_BACKOFF_MAX_S),
                 network: PodNetwork | None = None,
                 token_issuer: Callable[[str, str, Obj], Obj] | None = None,
                 api_endpoint: tuple[str, int] | None = None) -> None:
        self.store = store
        # TokenRequest (rbac.Rbac.token_request: namespace, ServiceAccount, body) for projected tokens, and
        # where the `kubernetes` Service's env vars point (the emulator's TLS port); None: neither is offered.
        self.token_issuer = token_issuer
        self.api_endpoint = api_endpoint
        self.restart_backoff = restart_backoff  # (base, cap) seconds; the emulator's settings may shorten it
        self.runtimes = runtimes
        self.state_dir = state_dir
        self.bwrap = shutil.which("bwrap") if use_bwrap in (None, True) else None
        if use_bwrap is True and not self.bwrap:
            raise RuntimeError("bwrap was required but is not installed (apt-get install bubblewrap)")
        self._procs: dict[str, list[subprocess.Popen[bytes]]] = {}  # pod uid -> live processes
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._pulled: set[str] = set()  # "<pod uid>/<container>" whose image was looked up once
        self._mount_failures: set[tuple[str, str]] = set()  # FailedMount events already written
        self._stop = threading.Event()  # ends the probe workers at shutdown
        # Pod IPs (network.py): the scheduler assigns one at bind, the runner releases it when the pod ends.
        self.network = network or PodNetwork(pod_ips=False)

    def shutdown(self) -> None:
        self._stop.set()
        self._kill_all()

    def _kill_all(self) -> None:
        with self._lock:
            procs = [p for ps in self._procs.values() for p in ps]
        for p in procs:
            _kill_group(p, signal.SIGKILL)

    # -- running -------------------------------------------------------------------------------------

    def launch(self, pod: Obj) -> None:
        """Run a bound pod on its own thread; once per pod uid, later calls for it do nothing."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid in self._running:
                return
            self._running.add(uid)
        threading.Thread(target=self._run_pod, args=(pod,), name=f"pod-{pod['metadata']['name']}",
                         daemon=True).start()

    def pod_dir(self, uid: str) -> Path:
        return self.state_dir / "pods" / uid

    def log_path(self, uid: str, container: str, previous: bool = False) -> Path:
        """The log of a container's latest instance, or (``previous``) of the instance before it."""
        return self.pod_dir(uid) / "logs" / f"{container}{'.previous' if previous else ''}.log"

    def _run_pod(self, pod: Obj) -> None:
        ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
        try:
            self._run_pod_inner(pod)
        except Exception as exc:  # an emulator bug must show on the pod, not vanish in a thread
            message = f"{type(exc).__name__}: {exc}"

            def broken(p: Obj) -> None:
                p["status"]["phase"] = "Failed"
                p["status"]["reason"] = "EmulatorError"
                p["status"]["message"] = message
            self.store.mutate("pods", ns, name, broken)
        finally:
            with self._lock:
                self._procs.pop(uid, None)
            self.network.release(uid)  # the sandbox is gone: its IP goes back to the pool
            self._finish_deletion(ns, name, uid)

    def _current(self, pod: Obj) -> Obj | None:
        p = self.store.find("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        return p if p is not None and p["metadata"]["uid"] == pod["metadata"]["uid"] else None

    def _deleting(self, pod: Obj) -> bool:
        p = self._current(pod)
        return p is None or bool(p["metadata"].get("deletionTimestamp"))

    def _run_pod_inner(self, pod: Obj) -> None:
        ns, name, uid = pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"]["uid"]
        spec = pod["spec"]
        volumes = self._prepare_volumes(pod)
        if volumes is None:
            return
        # Environment problems (missing Secret or key) keep the pod Pending and are retried, as kubelet does.
        launch: dict[str, tuple[list[str], dict[str, str], Runtime, Identity]] = {}
        self._warn_pull_secrets(pod)

        def prepare(status_key: str, batch: list[Obj]) -> bool:
            for c in batch:
                while True:
                    if self._deleting(pod):
                        return False
                    problem, reason = None, ""
                    try:
                        launch[c["name"]] = self._prepare_container(pod, c, volumes, status_key)
                    except ImagePullError:
                        time.sleep(IMAGE_BACKOFF_S)  # Pending in ImagePullBackOff; retried until deleted
                        continue
                    except ContainerConfigError as exc:
                        problem, reason = exc.message, exc.reason
                    if problem is None:
                        break
                    self._set_waiting(pod, status_key, c["name"], reason, problem)
                    if reason == "CreateContainerError":
                        return False  # permanent here: no command, an unsupported volume, no bwrap for mounts
                    time.sleep(1.0)
            return True

        # The app containers are created (their subPath folders made) only once the init containers are
        # done, as kubelet's makeMounts runs at each container's start: an init container may create them.
        if not prepare("initContainerStatuses", spec.get("initContainers") or []):
            return
        deadline = spec.get("activeDeadlineSeconds")
        deadline_at = time.monotonic() + deadline if deadline else None
        for c in spec.get("initContainers") or []:
            code = self._run_containers(pod, [c], launch, volumes, "initContainerStatuses", deadline_at)
            if code is None:
                return
            if code[c["name"]] != 0:
                self._complete(pod, "Failed", init_failed=True)
                return
        if spec.get("initContainers"):
            self.store.mutate("pods", ns, name, lambda p: set_condition(p, "Initialized", "True"))
        if not prepare("containerStatuses", spec["containers"]):
            return
        codes = self._run_containers(pod, spec["containers"], launch, volumes, "containerStatuses", deadline_at)
        if codes is None:
            return
        self._complete(pod, "Succeeded" if all(v == 0 for v in codes.values()) else "Failed")
        del uid

    def _set_waiting(self, pod: Obj, key: str, cname: str, reason: str, message: str,
                     events: list[tuple[str, str, str]] | None = None) -> bool:
        """Set a container's waiting state; on a change record ``events`` (type, reason, message), by
        default the kubelet's "Failed" / "Error: <message>" (pkg/kubelet/kuberuntime/kuberuntime_container.go)."""
        def upd(p: Obj) -> None:
            for st in p["status"].get(key) or []:
                if st["name"] == cname:
                    st["state"] = {"waiting": {"reason": reason, "message": message}}
        before = self._current(pod)
        after = self.store.mutate("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], upd)
        changed = bool(before and after and
                       before["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"])
        if changed:
            for type_, why, text in events if events is not None else [("Warning", "Failed", f"Error: {message}")]:
                record_pod_event(self.store, pod, type_, why, text, field_path=_field_path(key, cname))
        return changed

    def _warn_pull_secrets(self, pod: Obj) -> None:
        # pkg/kubelet/kubelet_pods.go getPullSecretsForPod: a missing pull Secret is only a warning.
        ns = pod["metadata"]["namespace"]
        missing = [ref.get("name", "") for ref in pod["spec"].get("imagePullSecrets") or []
                   if self.store.find("secrets", ns, ref.get("name", "")) is None]
        if missing:
            record_pod_event(self.store, pod, "Warning", "FailedToRetrieveImagePullSecret",
                             f"Unable to retrieve some image pull secrets ({', '.join(missing)}); attempting to "
                             "pull the image may not succeed.")

    def _image_runtime(self, pod: Obj, c: Obj, key: str) -> Runtime:
        """The local runtime an image maps to, with the events of a pull (pkg/kubelet/images/image_manager.go):
        an unmapped image is ErrImagePull, then ImagePullBackOff, and the pod stays Pending."""
        image = c.get("image", "")
        runtime = next((r for r in self.runtimes if fnmatch.fnmatchcase(image, r.pattern)), None)
        fp = _field_path(key, c["name"])
        attempt_key = f"{pod['metadata']['uid']}/{c['name']}"
        if runtime is not None:
            if attempt_key not in self._pulled:
                self._pulled.add(attempt_key)
                record_pod_event(self.store, pod, "Normal", "Pulled",
                                 f'Container image "{image}" already present on machine', field_path=fp)
            return runtime
        error = (f'failed to pull and unpack image "{image}": no image mapping of the emulator matches it '
                 "(devstack: add a pattern to KubeEmulator images)")
        if attempt_key not in self._pulled:
            self._pulled.add(attempt_key)
            self._set_waiting(pod, key, c["name"], "ErrImagePull", error, [
                ("Normal", "Pulling", f'Pulling image "{image}"'),
                ("Warning", "Failed", f'Failed to pull image "{image}": {error}'),
                ("Warning", "Failed", "Error: ErrImagePull")])
        else:
            self._set_waiting(pod, key, c["name"], "ImagePullBackOff",
                              f'Back-off pulling image "{image}": ErrImagePull: {error}', [
                                  ("Normal", "BackOff", f'Back-off pulling image "{image}"'),
                                  ("Warning", "Failed", "Error: ImagePullBackOff")])
        raise ImagePullError(error)

    def _complete(self, pod: Obj, phase: str, init_failed: bool = False, reason: str | None = None,
                  message: str | None = None) -> None:
        def upd(p: Obj) -> None:
            p["status"]["phase"] = phase
            if reason:
                p["status"]["reason"] = reason
                p["status"]["message"] = message or reason
            for st in p["status"].get("containerStatuses") or []:
                st["ready"] = False
                if init_failed or "waiting" in st.get("state", {}):
                    why = "PodInitializing" if init_failed else "ContainerStatusUnknown"
                    st["state"] = {"terminated": {"exitCode": 137 if reason else 1, "reason": why,
                                                 "startedAt": None, "finishedAt": now_iso()}}
            set_condition(p, "Ready", "False", "PodCompleted")
            set_condition(p, "ContainersReady", "False", "PodCompleted")
        self.store.mutate("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], upd)

    def _finish_deletion(self, ns: str, name: str, uid: str) -> None:
        p = self.store.find("pods", ns, name)
        if p is not None and p["metadata"]["uid"] == uid and p["metadata"].get("deletionTimestamp"):
            with contextlib.suppress(Exception):
                self.store.delete("pods", ns, name)
            shutil.rmtree(self.pod_dir(uid) / "volumes", ignore_errors=True)

    # -- volumes, env, sandbox -----------------------------------------------------------------------

    def _prepare_volumes(self, pod: Obj) -> dict[str, Path] | None:
        while True:
            if self._deleting(pod):
                return None
            try:
                return self._prepare_volumes_once(pod)
            except VolumeMountError as exc:
                # Pending in ContainerCreating with FailedMount events, retried, as the volume manager does.
                self._failed_mount(pod, str(exc))
                time.sleep(1.0)

    def _failed_mount(self, pod: Obj, message: str) -> None:
        key = (pod["metadata"]["uid"], message)
        if key not in self._mount_failures:
            self._mount_failures.add(key)
            record_pod_event(self.store, pod, "Warning", "FailedMount", message)

    def _prepare_volumes_once(self, pod: Obj) -> dict[str, Path] | None:
        ns, uid = pod["metadata"]["namespace"], pod["metadata"]["uid"]
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        policy = (pod["spec"].get("securityContext") or {}).get("fsGroupChangePolicy") or "Always"
        out: dict[str, Path] = {}
        for vol in pod["spec"].get("volumes") or []:
            vname = vol["name"]
            owned = False  # whether kubelet applies fsGroup to this volume type (volume ownership management)
            if "emptyDir" in vol:
                path = self.pod_dir(uid) / "volumes" / vname
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o777)  # pkg/volume/emptydir/empty_dir.go: created 0777, whatever the umask
                owned = True
            elif "persistentVolumeClaim" in vol:
                claim = self.store.find("persistentvolumeclaims", ns, vol["persistentVolumeClaim"]["claimName"])
                if claim is None:
                    return None  # deleted after scheduling; the pod stays as it is
                path = Path(claim["metadata"].get("annotations", {}).get(HOST_PATH_ANNOTATION)
                            or self.state_dir / "pvcs" / ns / claim["metadata"]["name"])
                path.mkdir(parents=True, exist_ok=True)
                owned = pvc_supports_fs_group(claim, self.store)
            elif "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
            elif "secret" in vol or "configMap" in vol:
                path = self.pod_dir(uid) / "volumes" / vname
                src = vol.get("secret") or vol.get("configMap")
                kind = "secrets" if "secret" in vol else "configmaps"
                ref = src.get("secretName") or src.get("name")
                obj = self.store.find(kind, ns, ref)
                if obj is None and not src.get("optional"):
                    # pkg/kubelet/volumemanager: MountVolume.SetUp fails while the object is missing.
                    raise VolumeMountError(f'MountVolume.SetUp failed for volume "{vname}" : '
                                           f'{kind[:-1]} "{ref}" not found')
                path.mkdir(parents=True, exist_ok=True)
                mode = int(src.get("defaultMode", 0o644))
                data = (obj or {}).get("data") or {}
                for key, value in data.items():
                    raw = base64.b64decode(value) if kind == "secrets" else str(value).encode()
                    (path / key).write_bytes(raw)
                    (path / key).chmod(mode)
                owned = True
            elif "projected" in vol:
                path = self.pod_dir(uid) / "volumes" / vname
                self._project(pod, vname, vol["projected"], path)
                owned = True
            else:
                path = Path("/nonexistent-unsupported-volume")  # reported per container below
            if owned and fs_group is not None:
                set_volume_ownership(path, int(fs_group), on_root_mismatch=policy == "OnRootMismatch",
                                     read_only=_read_only_volume(vol))
            out[vname] = path
        return out

    def _project(self, pod: Obj, vname: str, src: Obj, path: Path) -> None:
        """pkg/volume/projected collectData: the files of every source (secret and configMap keys or items,
        downwardAPI fields, a serviceAccountToken bound to the pod) with defaultMode or an item's mode. A
        missing Secret / ConfigMap / key fails MountVolume.SetUp unless the source is optional."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        default_mode = int(src.get("defaultMode", 0o644))
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        fs_user = _fs_user(pod)
        files: dict[str, tuple[bytes, int, int | None]] = {}  # relative path -> data, mode, owner uid
        errors: list[str] = []
        for source in src.get("sources") or []:
            if "secret" in source or "configMap" in source:
                ref = source.get("secret") or source.get("configMap") or {}
                kind = "secrets" if "secret" in source else "configmaps"
                obj = self.store.find(kind, ns, ref.get("name", ""))
                if obj is None:
                    if not ref.get("optional"):
                        errors.append(f'{kind[:-1]} "{ref.get("name", "")}" not found')
                    continue
                data = {k: base64.b64decode(v) if kind == "secrets" else str(v).encode()
                        for k, v in (obj.get("data") or {}).items()}
                for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                    if item["key"] not in data:
                        if not ref.get("optional"):  # pkg/volume/secret and configmap MakePayload
                            errors.append(f"references non-existent secret key: {item['key']}" if kind == "secrets"
                                          else f"configmap references non-existent config key: {item['key']}")
                        continue
                    files[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)), None)
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items") or []:
                    if "fieldRef" not in item:
                        errors.append(f"downwardAPI item {item.get('path')}: only fieldRef is emulated")
                        continue
                    try:
                        value = _volume_field(pod, item["fieldRef"]["fieldPath"])
                    except ValueError as exc:
                        errors.append(str(exc))
                        continue
                    files[item["path"]] = (value.encode(), int(item.get("mode", default_mode)), None)
            elif "serviceAccountToken" in source:
                tp = source["serviceAccountToken"]
                if self.token_issuer is None:
                    errors.append("the emulator runs without a TLS port, so it issues no ServiceAccount tokens")
                    continue
                spec: Obj = {"expirationSeconds": tp.get("expirationSeconds", 3600),
                             "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name,
                                                "uid": pod["metadata"]["uid"]}}
                if tp.get("audience"):
                    spec["audiences"] = [tp["audience"]]
                try:
                    review = self.token_issuer(ns, pod["spec"].get("serviceAccountName") or "default",
                                               {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                                "spec": spec})
                except ApiError as exc:  # the ServiceAccount (or the pod) went away since admission
                    errors.append(f"failed to fetch token: {exc.message}")
                    continue
                # With fsGroup or one runAsUser for the pod, 0600 (owned by that user); SetVolumeOwnership
                # then makes it 0640 for the group (projected.go, volume_linux.go).
                mode = 0o600 if fs_user is not None or fs_group is not None else default_mode
                files[tp["path"]] = (review["status"]["token"].encode(), mode, fs_user)
            else:
                errors.append(f"projected source {sorted(source)} is not emulated")
        if errors:
            # pkg/volume/projected: every source is tried, the errors aggregated (utilerrors.NewAggregate).
            reason = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
            raise VolumeMountError(f'MountVolume.SetUp failed for volume "{vname}" : {reason}')
        path.mkdir(parents=True, exist_ok=True)
        for rel, (raw, mode, owner) in files.items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
            target.chmod(mode)
            if owner is not None and os.geteuid() == 0:
                os.chown(target, owner, -1)

    def _prepare_container(
        self, pod: Obj, c: Obj, volumes: dict[str, Path], key: str = "containerStatuses"
    ) -> tuple[list[str], dict[str, str], Runtime, Identity]:
        runtime = self._image_runtime(pod, c, key)
        identity = _identity(pod, c, runtime)
        env = self._container_env(pod, c)
        cmd = [_expand(a, env) for a in (c.get("command") or runtime.entrypoint)] + \
              [_expand(a, env) for a in c.get("args") or []]
        if not cmd:
            raise ContainerConfigError("CreateContainerError", "no command: the emulator cannot read an image's "
                                       "entrypoint; set command (or an entrypoint in the image mapping)")
        for m in c.get("volumeMounts") or []:
            if m["name"] not in volumes or str(volumes[m["name"]]).startswith("/nonexistent"):
                raise ContainerConfigError("CreateContainerError", f'volume "{m["name"]}" is missing or of a '
                                           "type the emulator does not support")
            if not self.bwrap and m["mountPath"] == SA_TOKEN_MOUNT_PATH and m["name"].startswith(
                    SA_TOKEN_VOLUME_PREFIX):
                continue  # a plain process sees no mounts: the admission's token mount is left out, not fatal
            if not self.bwrap and str(volumes[m["name"]] / m.get("subPath", "")).rstrip("/") != m["mountPath"]:
                raise ContainerConfigError("CreateContainerError", f"volume mount at {m['mountPath']} needs "
                                           "bubblewrap (apt-get install bubblewrap); without it only mounts "
                                           "whose host path equals mountPath work")
            if m.get("subPath"):
                self._make_sub_path(pod, c, m, volumes[m["name"]])
        return cmd, env, runtime, identity

    @staticmethod
    def _make_sub_path(pod: Obj, c: Obj, m: Obj, root: Path) -> None:
        """pkg/kubelet/kubelet_pods.go makeMounts: a missing subPath folder is created (mode of the volume's
        root, owned by the kubelet's user); on a volume mounted read-only that fails container creation."""
        target = root / m["subPath"]
        if target.exists():
            return
        vol = next((v for v in pod["spec"].get("volumes") or [] if v["name"] == m["name"]), {})
        if bool((vol.get("persistentVolumeClaim") or {}).get("readOnly")) or _read_only_volume(vol):
            raise ContainerConfigError("CreateContainerConfigError", f'failed to create subPath directory for '
                                       f'volumeMount "{m["name"]}" of container "{c["name"]}"')
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(root.stat().st_mode & 0o7777)

    def _container_env(self, pod: Obj, c: Obj) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        # kubelet_pods.go makeEnvironmentVariables: the service variables are there for $(VAR) expansion, and
        # envFrom / env of the same name win over them.
        env = self._service_env()
        for src in c.get("envFrom") or []:
            ref = src.get("secretRef") or src.get("configMapRef")
            kind = "secrets" if "secretRef" in src else "configmaps"
            obj = self.store.find(kind, ns, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError("CreateContainerConfigError", f'{kind[:-1]} "{ref["name"]}" not found')
            for k, v in (obj.get("data") or {}).items():
                env[src.get("prefix", "") + k] = base64.b64decode(v).decode() if kind == "secrets" else str(v)
        for e in c.get("env") or []:
            if "valueFrom" not in e:
                env[e["name"]] = _expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                kind = "secrets" if "secretKeyRef" in vf else "configmaps"
                obj = self.store.find(kind, ns, ref["name"])
                data = (obj or {}).get("data") or {}
                if obj is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    what = (f'{kind[:-1]} "{ref["name"]}" not found' if obj is None
                            else f"couldn't find key {ref['key']} in {kind[:-1].capitalize()} {ns}/{ref['name']}")
                    raise ContainerConfigError("CreateContainerConfigError", what)
                raw = data[ref["key"]]
                env[e["name"]] = base64.b64decode(raw).decode() if kind == "secrets" else str(raw)
            elif "fieldRef" in vf:
                env[e["name"]] = _field_ref(pod, vf["fieldRef"]["fieldPath"])
            else:
                raise ContainerConfigError("CreateContainerConfigError",
                                           f"env {e['name']}: valueFrom type not supported by the emulator")
        return env

    def _service_env(self) -> dict[str, str]:
        """The `kubernetes` Service's variables (kubelet_pods.go getServiceEnvVarMap adds the master Service
        whatever enableServiceLinks says; pkg/kubelet/envvars FromServices names them), pointing at the
        emulator's TLS port. Other Services' variables are not emulated."""
        if self.api_endpoint is None:
            return {}
        host, port = self.api_endpoint
        addr = f"tcp://{host}:{port}"
        prefix = f"KUBERNETES_PORT_{port}_TCP"
        return {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(port),  # the port is named "https"
                "KUBERNETES_PORT": addr, prefix: addr, f"{prefix}_PROTO": "tcp", f"{prefix}_PORT": str(port),
                f"{prefix}_ADDR": host}

    @staticmethod
    def _rebind(runtime: Runtime, mount_points: list[str]) -> list[str]:
        """The runtime (the project's venv and code) may itself live under /tmp or a mount path (a
        checkout in /tmp, as in CI): bind it again on top so those mounts do not hide it."""
        argv: list[str] = []
        for host in runtime.binds:
            if os.path.exists(host) and any(host == p or host.startswith(p.rstrip("/") + "/") for p in mount_points):
                argv += [*_parent_dirs(host), "--ro-bind", host, host]
        return argv

    def _sandbox_argv(
        self, pod: Obj, c: Obj, cmd: list[str], runtime: Runtime, volumes: dict[str, Path]
    ) -> list[str]:
        if not self.bwrap:
            return cmd
        sc = c.get("securityContext") or {}
        argv = [self.bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--hostname", pod["metadata"]["name"][:63]]
        for entry in SYSTEM_PATHS:
            if os.path.islink(entry):
                argv += ["--symlink", os.readlink(entry), entry]
            elif os.path.exists(entry):
                argv += ["--ro-bind", entry, entry]
        for host in runtime.binds:
            if os.path.exists(host):
                argv += [*_parent_dirs(host), "--ro-bind", host, host]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        mounts = sorted(c.get("volumeMounts") or [], key=lambda m: m["mountPath"].count("/"))
        if not any(m["mountPath"] == "/tmp" for m in mounts):
            # A writable root is not emulated; the nearest honest thing is a scratch /tmp, read-only if asked.
            # 1777 as an image's /tmp is, so a non-root uid can write there.
            argv += ["--perms", "1777", "--tmpfs", "/tmp", *self._rebind(runtime, ["/tmp"])]
            if sc.get("readOnlyRootFilesystem"):
                argv += ["--remount-ro", "/tmp"]
        for m in mounts:
            host = volumes[m["name"]] / m["subPath"] if m.get("subPath") else volumes[m["name"]]
            if m.get("subPath"):
                host.mkdir(parents=True, exist_ok=True)
            argv += [*_parent_dirs(m["mountPath"]), "--ro-bind" if m.get("readOnly") else "--bind", str(host),
                     m["mountPath"]]
        argv += self._rebind(runtime, [m["mountPath"] for m in mounts])
        argv += ["--remount-ro", "/", "--chdir", c.get("workingDir") or "/", "--", *cmd]
        return argv

    def _run_containers(self, pod: Obj, containers: list[Obj], launch: dict[str, Any], volumes: dict[str, Path],
                        status_key: str, deadline_at: float | None) -> dict[str, int] | None:
        """Run ``containers`` together until none will run again, restarting them as the pod's restartPolicy
        says (pkg/kubelet/kuberuntime computePodActions / doBackOff); their final exit codes, or None when
        the pod was deleted or ran past activeDeadlineSeconds."""
        uid = pod["metadata"]["uid"]
        policy = pod["spec"].get("restartPolicy") or "Always"
        base, cap = self.restart_backoff
        insts = {c["name"]: _Instance(c, RestartBackoff(base, cap)) for c in containers}
        for inst in insts.values():
            if self._deleting(pod):
                self._kill_pod(uid)
                return None
            if not self._spawn(pod, inst, launch[inst.spec["name"]], volumes, status_key):
                return None
        self._mark_running(pod, list(insts.values()), launch, volumes, status_key)
        timed_out = False
        while any(i.exit_code is None for i in insts.values()):
            stopping = timed_out or self._stop.is_set() or self._deleting(pod)
            for inst in insts.values():
                if inst.proc is not None and inst.proc.poll() is not None:
                    self._exited(pod, inst, insts, status_key, policy, restart_allowed=not stopping)
                elif inst.proc is None and inst.exit_code is None and inst.restart_at is not None:
                    if stopping:  # held back in CrashLoopBackOff: nothing to stop, it just will not start
                        inst.exit_code = inst.last_exit
                    elif time.monotonic() >= inst.restart_at:
                        inst.backoff.next(inst.finished_at, time.monotonic())
                        if not self._spawn(pod, inst, launch[inst.spec["name"]], volumes, status_key):
                            return None
                        self._mark_running(pod, [inst], launch, volumes, status_key)
            if self._deleting(pod):
                self._kill_pod(uid)
            if deadline_at is not None and time.monotonic() > deadline_at and not timed_out:
                timed_out = True
                self._kill_pod(uid, grace=0)
            time.sleep(0.05)
        if timed_out:
            self._complete(pod, "Failed", reason="DeadlineExceeded",
                           message="Pod was active on the node longer than the specified deadline")
            return None
        if self._deleting(pod):
            return None
        return {name: int(inst.exit_code or 0) for name, inst in insts.items()}

    def _spawn(self, pod: Obj, inst: _Instance, launch: tuple[list[str], dict[str, str], Runtime, Identity],
               volumes: dict[str, Path], status_key: str) -> bool:
        """Start a new instance of a container, with the events kubelet's startContainer records; False (and
        the pod Failed) when the process cannot start at all."""
        uid, c = pod["metadata"]["uid"], inst.spec
        cmd, env, runtime, identity = launch
        full_env = {"PATH": ":".join([*runtime.path, "/usr/local/bin:/usr/bin:/bin"]),
                    "HOSTNAME": pod["metadata"]["name"], **runtime.env, **env}
        # Emulator-only: the pod's IP, for image mappings that must bind it where a container would bind
        # 0.0.0.0 in its own network namespace (devstack/triton.py's tritonserver entrypoint).
        full_env[POD_IP_ENV] = (pod.get("status") or {}).get("podIP") or LOOPBACK_IP
        fp = _field_path(status_key, c["name"])
        log = self.log_path(uid, c["name"])
        log.parent.mkdir(parents=True, exist_ok=True)
        restart = inst.proc is None and bool(inst.started)
        if restart:
            # Each instance has a log of its own; the one before is what `kubectl logs --previous` reads.
            with contextlib.suppress(FileNotFoundError):
                log.replace(self.log_path(uid, c["name"], previous=True))
            # EnsureImageExists runs before every start (pkg/kubelet/images/image_manager.go).
            record_pod_event(self.store, pod, "Normal", "Pulled",
                             f'Container image "{c.get("image", "")}" already present on machine', field_path=fp)
        log.touch()
        try:
            proc = subprocess.Popen(
                self._sandbox_argv(pod, c, _as_identity(identity, cmd), runtime, volumes), env=full_env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=None if self.bwrap else (c.get("workingDir") or None),
            )
        except OSError as exc:
            self._set_waiting(pod, status_key, c["name"], "StartError", str(exc))
            self._complete(pod, "Failed")
            return False
        with self._lock:
            self._procs.setdefault(uid, []).append(proc)
        if self._stop.is_set():  # the emulator is stopping: _kill_all may have listed the processes before this one
            _kill_group(proc, signal.SIGKILL)
        inst.proc, inst.started, inst.restart_at = proc, now_iso(), None
        inst.restarts += int(restart)
        inst.reader = threading.Thread(target=_pump, args=(proc, log, self.store), daemon=True)
        inst.reader.start()
        # pkg/kubelet/kuberuntime/kuberuntime_container.go startContainer: Created, then Started.
        record_pod_event(self.store, pod, "Normal", "Created", f"Created container {c['name']}", field_path=fp)
        record_pod_event(self.store, pod, "Normal", "Started", f"Started container {c['name']}", field_path=fp)
        return True

    def _mark_running(self, pod: Obj, started: list[_Instance], launch: dict[str, Any], volumes: dict[str, Path],
                      status_key: str) -> None:
        """Report freshly started instances as running (the one they replace becomes lastState) and start their
        probe workers."""
        by_name = {i.spec["name"]: i for i in started}

        def running(p: Obj) -> None:
            for st in p["status"].get(status_key) or []:
                inst = by_name.get(st["name"])
                if inst is None:
                    continue
                c = inst.spec
                if "terminated" in (st.get("state") or {}):  # restarted at once, without a back-off wait
                    st["lastState"] = {"terminated": st["state"]["terminated"]}
                st["state"] = {"running": {"startedAt": inst.started}}
                st["restartCount"] = inst.restarts
                # pkg/kubelet/prober/prober_manager.go UpdatePodStatus: started once the startup probe
                # passes, ready once the readiness probe does (without probes: at once).
                st["started"] = not c.get("startupProbe")
                st["ready"] = status_key == "containerStatuses" and not c.get("startupProbe") and \
                    not c.get("readinessProbe")
            if status_key == "containerStatuses":
                p["status"]["phase"] = "Running"
                update_ready(p)
        self.store.mutate("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], running)
        if status_key != "containerStatuses":
            return
        for inst in started:
            if ContainerProber.wanted(inst.spec) and inst.proc is not None:
                inst.prober = ContainerProber(self.store, pod, inst.spec,
                                              self._exec_runner(pod, inst.spec, launch[inst.spec["name"]], volumes),
                                              self._killer(pod, inst.proc), self._stop)
                inst.prober.start()

    def _exited(self, pod: Obj, inst: _Instance, insts: dict[str, _Instance], status_key: str, policy: str, *,
                restart_allowed: bool) -> None:
        """An instance ended: report it, and either hold the container for good or schedule its restart, at
        once or after the back-off (CrashLoopBackOff) as kubelet's doBackOff decides."""
        proc, cname = inst.proc, inst.spec["name"]
        assert proc is not None
        if inst.prober is not None:
            inst.prober.stop()
            inst.prober = None
        if self.bwrap and proc.returncode < 0:
            # bwrap killed by a signal can leave its pid-namespace init behind (seen here once, after a liveness
            # kill): that is still in the group, so the group id cannot have been reused; end it for good.
            _kill_group(proc, signal.SIGKILL)
        # As a kubelet does: the log is complete before the status says terminated.
        if inst.reader is not None:
            inst.reader.join(timeout=5)
        with self._lock:
            live = self._procs.get(pod["metadata"]["uid"], [])
            if proc in live:
                live.remove(proc)  # later kills of the pod must not signal a reaped (reusable) pid
        inst.proc = None
        inst.finished_at = time.monotonic()
        # A signal death shows as 128+N, as container runtimes report it.
        inst.last_exit = 128 - proc.returncode if proc.returncode < 0 else proc.returncode
        term = {"exitCode": inst.last_exit, "reason": "Completed" if inst.last_exit == 0 else "Error",
                "startedAt": inst.started, "finishedAt": now_iso(),
                "containerID": f"bwrap://{pod['metadata']['uid']}/{cname}/{inst.restarts}"}
        waiting: Obj | None = None
        if restart_allowed and _restarts(policy, inst.last_exit, init=status_key == "initContainerStatuses"):
            hold = inst.backoff.hold(inst.finished_at)
            inst.restart_at = inst.finished_at + hold
            if hold:
                meta = pod["metadata"]
                waiting = {"reason": "CrashLoopBackOff",
                           "message": f"back-off {go_duration(hold)} restarting failed container={cname} "
                                      f"pod={meta['name']}_{meta['namespace']}({meta['uid']})"}
        else:
            inst.exit_code = inst.last_exit
        # The last container's termination and the pod's phase land in one update, so a client that saw
        # "terminated" never reads a Running phase.
        last = status_key == "containerStatuses" and all(i.exit_code is not None for i in insts.values())
        phase = ("Succeeded" if all(i.exit_code == 0 for i in insts.values()) else "Failed") if last else None
        self._terminated(pod, status_key, cname, term, waiting, phase)
        if waiting is not None:
            meta = pod["metadata"]
            record_pod_event(self.store, pod, "Warning", "BackOff",
                             f"Back-off restarting failed container {cname} in pod "
                             f"{meta['name']}_{meta['namespace']}({meta['uid']})",
                             field_path=_field_path(status_key, cname))

    def _exec_runner(self, pod: Obj, c: Obj, launch: tuple[list[str], dict[str, str], Runtime, Identity],
                     volumes: dict[str, Path]) -> Any:
        """An exec probe's process: the container's user, env and mounts, in a sandbox of its own (the
        emulator cannot enter the container's namespaces, so it sees the same files but not its processes)."""
        _, env, runtime, identity = launch

        def run(cmd: list[str]) -> subprocess.Popen[bytes]:
            full_env = {"PATH": ":".join([*runtime.path, "/usr/local/bin:/usr/bin:/bin"]),
                        "HOSTNAME": pod["metadata"]["name"], **runtime.env, **env}
            return subprocess.Popen(self._sandbox_argv(pod, c, _as_identity(identity, cmd), runtime, volumes),
                                    env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=None if self.bwrap else (c.get("workingDir") or None))
        return run

    @staticmethod
    def _killer(pod: Obj, proc: subprocess.Popen[bytes]) -> Any:
        """Stop one container as kubelet's killContainer does: SIGTERM, SIGKILL after the grace period (capped)."""
        grace = pod["spec"].get("terminationGracePeriodSeconds")
        grace = min(float(30 if grace is None else grace), 10.0)

        def kill() -> None:
            _kill_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            if proc.poll() is None:
                _kill_group(proc, signal.SIGKILL)
        return kill

    def _terminated(self, pod: Obj, key: str, cname: str, term: Obj, waiting: Obj | None,
                    phase: str | None) -> None:
        """A container instance ended: its state is ``term``, or, held back before a restart, ``waiting``
        (CrashLoopBackOff) with ``term`` as lastState."""
        def upd(p: Obj) -> None:
            for st in p["status"].get(key) or []:
                if st["name"] == cname:
                    st["ready"] = False
                    st["started"] = False
                    if waiting is not None:
                        st["lastState"] = {"terminated": term}
                        st["state"] = {"waiting": waiting}
                    else:
                        st["state"] = {"terminated": term}
            if phase is not None:
                p["status"]["phase"] = phase
                set_condition(p, "ContainersReady", "False", "ContainersNotReady")
                set_condition(p, "Ready", "False", "ContainersNotReady")
            elif key == "containerStatuses":
                update_ready(p)
        self.store.mutate("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], upd)

    def delete_pod(self, pod: Obj, grace: int) -> None:
        """Called by the API on DELETE: SIGTERM now, SIGKILL after the grace period (capped for tests)."""
        uid = pod["metadata"]["uid"]
        with self._lock:
            running = uid in self._running and uid in self._procs
        if not running:
            return
        threading.Thread(target=self._kill_pod, args=(uid, grace), daemon=True).start()

    def is_active(self, uid: str) -> bool:
        with self._lock:
            return uid in self._procs

    def _kill_pod(self, uid: str, grace: float = 2.0) -> None:
        with self._lock:
            procs = list(self._procs.get(uid, []))
        for p in procs:
            _kill_group(p, signal.SIGTERM)
        deadline = time.monotonic() + min(grace, 10.0)
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                _kill_group(p, signal.SIGKILL)


class VolumeMountError(Exception):
    """A volume cannot be set up yet (its ConfigMap / Secret is missing): FailedMount, retried."""


class ImagePullError(Exception):
    """The image maps to no local runtime: the container waits in ErrImagePull / ImagePullBackOff."""


class ContainerConfigError(Exception):
    """A container that cannot be created yet; ``reason`` is the waiting reason its status shows."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def pvc_supports_fs_group(claim: Obj, store: Store | None = None) -> bool:
    """Whether kubelet applies fsGroup to a claim's volume, per the CSIDriver fsGroupPolicy the claim's storage
    stands for (pkg/volume/csi/csi_mounter.go supportsFSGroup): File always, None never, and the default
    ReadWriteOnceWithFSType only when the access modes include ReadWriteOnce (RWX claims are left alone)."""
    policy = (claim["metadata"].get("annotations") or {}).get(FS_GROUP_POLICY_ANNOTATION)
    class_name = (claim.get("spec") or {}).get("storageClassName")
    if not policy and store is not None and class_name:
        # Or the claim's StorageClass parameter of the same name (the emulator's stand-in for its CSIDriver).
        sc = store.find("storageclasses", "", class_name) or {}
        policy = (sc.get("parameters") or {}).get(FS_GROUP_POLICY_ANNOTATION)
    policy = policy or FS_GROUP_POLICIES[0]
    if policy == "File":
        return True
    if policy == "None":
        return False
    modes = (claim.get("status") or {}).get("accessModes") or (claim.get("spec") or {}).get("accessModes") or []
    return "ReadWriteOnce" in modes


def set_volume_ownership(root: Path, fs_group: int, *, on_root_mismatch: bool, read_only: bool) -> None:
    """pkg/volume/volume_linux.go SetVolumeOwnership: every file gets group fsGroup and group rw (r only on
    read-only volumes), folders also x and setgid so new files inherit the group. OnRootMismatch skips the
    walk when the root already has that group and those bits."""
    file_mask = 0o440 if read_only else 0o660
    dir_mask = file_mask | 0o110 | stat.S_ISGID
    st = root.stat()
    if on_root_mismatch and st.st_gid == fs_group and (st.st_mode & dir_mask) == dir_mask:
        return
    for dirpath, _, filenames in os.walk(root):
        for path, mask in [(dirpath, dir_mask), *((os.path.join(dirpath, f), file_mask) for f in filenames)]:
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                continue  # symlinks are not followed, as kubelet's walk does not
            os.chown(path, -1, fs_group)
            os.chmod(path, stat.S_IMODE(info.st_mode) | mask)


def _parent_dirs(target: str) -> list[str]:
    """bwrap makes the missing parents of a mount point 0700, which a non-root uid cannot cross (say
    /root/.pyenv for the interpreter): create them 0755 first, as an image's folders are."""
    argv: list[str] = []
    parts = Path(target).parts[1:-1]
    for i in range(len(parts)):
        parent = "/" + "/".join(parts[: i + 1])
        if not any(parent == s or parent.startswith(s + "/") for s in SYSTEM_PATHS):
            argv += ["--perms", "0755", "--dir", parent]
    return argv


def _read_only_volume(vol: Obj) -> bool:
    """Volume types kubelet always mounts read-only (their contents are the API objects')."""
    return "secret" in vol or "configMap" in vol or "projected" in vol


def _fs_user(pod: Obj) -> int | None:
    """pkg/volume/util FsUserFrom: the runAsUser every (init) container runs as (the container's over the
    pod's), or None when one has none or they differ."""
    psc = pod["spec"].get("securityContext") or {}
    users = set()
    for c in [*(pod["spec"].get("initContainers") or []), *(pod["spec"].get("containers") or [])]:
        uid = (c.get("securityContext") or {}).get("runAsUser")
        uid = psc.get("runAsUser") if uid is None else uid
        if uid is None:
            return None
        users.add(int(uid))
    return users.pop() if len(users) == 1 else None


def _volume_field(pod: Obj, path: str) -> str:
    """A downwardAPI volume file's content: metadata fields only (validVolumeDownwardAPIFieldPathExpressions);
    whole labels / annotations as fieldpath.FormatMap prints them (sorted key="value" lines)."""
    if path in ("metadata.labels", "metadata.annotations"):
        fields = pod["metadata"].get(path.removeprefix("metadata.")) or {}
        # Go's %q, as near as Python gets: JSON string escapes, non-ASCII kept.
        return "\n".join(f"{k}={json.dumps(str(v), ensure_ascii=False)}" for k, v in sorted(fields.items()))
    if path.startswith("metadata.") and (path in ("metadata.name", "metadata.namespace", "metadata.uid")
                                         or re.match(r"^metadata\.(labels|annotations)\['.+'\]$", path)):
        return _field_ref(pod, path)
    raise ValueError(f"downwardAPI volume field {path} is not supported (metadata fields only)")


def _field_path(key: str, cname: str) -> str:
    return f"spec.{'initContainers' if key == 'initContainerStatuses' else 'containers'}{{{cname}}}"


def _identity(pod: Obj, c: Obj, runtime: Runtime) -> Identity:
    """The container's uid/gid/groups: the container's securityContext wins over the pod's, then the
    image's USER (root when it has none), as pkg/kubelet/kuberuntime/security_context.go merges them; and
    runAsNonRoot checked as security_context_others.go verifyRunAsNonRoot does."""
    psc = pod["spec"].get("securityContext") or {}
    csc = c.get("securityContext") or {}

    def pick(key: str) -> Any:
        return csc[key] if csc.get(key) is not None else psc.get(key)
    explicit_uid = pick("runAsUser")
    uid = int(explicit_uid) if explicit_uid is not None else int(runtime.user or 0)
    gid_value = pick("runAsGroup")
    gid = int(gid_value) if gid_value is not None else int(runtime.group or 0)
    if pick("runAsNonRoot"):
        who = f'(pod: "{pod["metadata"]["name"]}_{pod["metadata"]["namespace"]}({pod["metadata"]["uid"]})", ' \
              f'container: {c["name"]})'
        if explicit_uid is not None and uid == 0:
            raise ContainerConfigError("CreateContainerConfigError",
                                       f"container's runAsUser breaks non-root policy {who}")
        if explicit_uid is None and uid == 0:
            raise ContainerConfigError("CreateContainerConfigError",
                                       f"container has runAsNonRoot and image will run as root {who}")
    # fsGroup and supplementalGroups become supplementary groups of every container (and the primary gid).
    extra = [int(g) for g in psc.get("supplementalGroups") or []]
    if psc.get("fsGroup") is not None:
        extra.append(int(psc["fsGroup"]))
    groups = tuple(dict.fromkeys([gid, *extra]))
    return Identity(uid, gid, groups, no_new_privs=csc.get("allowPrivilegeEscalation") is False)


def _as_identity(identity: Identity, cmd: list[str]) -> list[str]:
    """Prefix cmd with setpriv (util-linux) so the process runs as the pod's user; leaving uid 0 drops
    every capability. Only root can switch users: an emulator run by anyone else runs pods as itself."""
    if os.geteuid() != 0 or not SETPRIV or (identity.uid == 0 and identity.gid == 0 and not identity.no_new_privs
                                            and identity.groups in ((), (0,))):
        return cmd
    groups = ["--groups", ",".join(str(g) for g in identity.groups)] if identity.groups else ["--clear-groups"]
    return [SETPRIV, f"--reuid={identity.uid}", f"--regid={identity.gid}", *groups,
            *(["--no-new-privs"] if identity.no_new_privs else []), "--", *cmd]


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _pump(proc: subprocess.Popen[bytes], log: Path, store: Store) -> None:
    """Copy a container's output into its log, one timestamped line at a time."""
    assert proc.stdout is not None
    with open(log, "ab") as out:
        for line in iter(proc.stdout.readline, b""):
            if not line.endswith(b"\n"):
                line += b"\n"
            out.write(rfc3339_nano().encode() + b" " + line)
            out.flush()
            with store.cond:  # wake log followers
                store.cond.notify_all()
    proc.stdout.close()


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined variables are replaced, $$ escapes, unknown stay as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _VAR_REF.sub(sub, str(text))


def _field_ref(pod: Obj, path: str) -> str:
    m = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if m:
        return str((pod["metadata"].get(m[1]) or {}).get(m[2], ""))
    simple = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
              "metadata.uid": pod["metadata"]["uid"], "spec.nodeName": pod["spec"].get("nodeName", ""),
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
              "status.podIP": (pod.get("status") or {}).get("podIP") or LOOPBACK_IP, "status.hostIP": LOOPBACK_IP}
    if path not in simple:
        raise ContainerConfigError("CreateContainerConfigError", f"fieldRef {path} not supported by the emulator")
    return simple[path]
