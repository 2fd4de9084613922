"""The kubelet's prober: readiness, liveness and startup probes of a running container.

One worker thread per probe of a container, as pkg/kubelet/prober/worker.go runs them: wait
initialDelaySeconds, then probe every periodSeconds with timeoutSeconds; a result only counts after
successThreshold successes / failureThreshold failures in a row. Startup gates the other two until it
succeeds. Readiness sets containerStatuses[].ready (and the pod's ContainersReady / Ready through
``pod_status.update_ready``); a liveness or startup failure kills the container, which the kubelet then
restarts unless the pod's restartPolicy is Never (``kubelet``: restartCount, lastState, back-off). Workers
belong to one container instance: they stop when it exits (a restarted instance gets new ones, as upstream
workers reset on a new container ID), the pod goes, or the kubelet stops.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from .events import record_pod_event
from .pod_status import update_ready
from .store import Obj, Store

POD_IP = "127.0.0.1"
NAMES = {"readinessProbe": "Readiness", "livenessProbe": "Liveness", "startupProbe": "Startup"}


def _port(c: Obj, port: Any) -> int:
    """A probe's port: a number, or the name of one of the container's ports (prober.go findPortByName)."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in c.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"couldn't find port: {port} in {c['name']}")


def http_probe(c: Obj, spec: Obj, timeout: float) -> tuple[bool, str]:
    """pkg/probe/http/http.go: 2xx and 3xx (redirects not followed) are success."""
    host = spec.get("host") or POD_IP
    port = _port(c, spec.get("port"))
    path = spec.get("path") or "/"
    path = path if path.startswith("/") else "/" + path
    scheme = (spec.get("scheme") or "HTTP").upper()
    url = f"{scheme.lower()}://{host}:{port}{path}"
    conn: http.client.HTTPConnection
    if scheme == "HTTPS":  # the kubelet does not verify the certificate
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"User-Agent": "kube-probe/1.31", "Accept": "*/*"}
    headers.update({h["name"]: h.get("value", "") for h in spec.get("httpHeaders") or []})
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read(10 * 1024)
    except TimeoutError:
        return False, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
    except OSError as exc:
        return False, f'Get "{url}": dial tcp {host}:{port}: connect: {_reason(exc)}'
    finally:
        conn.close()
    if 200 <= resp.status < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {resp.status}"


def tcp_probe(c: Obj, spec: Obj, timeout: float) -> tuple[bool, str]:
    """pkg/probe/tcp/tcp.go: success once a connection opens."""
    host = spec.get("host") or POD_IP
    port = _port(c, spec.get("port"))
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except TimeoutError:
        return False, f"dial tcp {host}:{port}: i/o timeout"
    except OSError as exc:
        return False, f"dial tcp {host}:{port}: connect: {_reason(exc)}"
    return True, ""


def _reason(exc: OSError) -> str:
    return (os.strerror(exc.errno).lower() if exc.errno else str(exc))


ExecRunner = Callable[[list[str]], subprocess.Popen[bytes]]


def exec_probe(run: ExecRunner, spec: Obj, timeout: float) -> tuple[bool, str]:
    """pkg/probe/exec/exec.go: exit 0 is success; the output is the failure message."""
    proc = run([str(a) for a in spec.get("command") or []])
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, f"command timed out: {' '.join(spec.get('command') or [])} timed out after {timeout:g}s"
    text = out.decode(errors="replace").strip()
    if proc.returncode == 0:
        return True, ""
    return False, text or f"command failed with exit code {proc.returncode}"


class ContainerProber:
    """The probe workers of one container (pkg/kubelet/prober/prober_manager.go AddPod / RemovePod)."""

    def __init__(self, store: Store, pod: Obj, c: Obj, exec_runner: ExecRunner,
                 kill: Callable[[], None], kubelet_stop: threading.Event) -> None:
        self.store, self.pod, self.c = store, pod, c
        self.exec_runner, self.kill = exec_runner, kill
        self.stopped = threading.Event()
        self.kubelet_stop = kubelet_stop
        self.started = threading.Event()  # the startup probe has succeeded (or there is none)
        if not c.get("startupProbe"):
            self.started.set()
        self.threads = [threading.Thread(target=self._work, args=(kind,), daemon=True,
                                         name=f"probe-{pod['metadata']['name']}-{c['name']}-{kind}")
                        for kind in NAMES if c.get(kind)]

    @staticmethod
    def wanted(c: Obj) -> bool:
        return any(c.get(kind) for kind in NAMES)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stopped.set()
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout=5)

    def _done(self) -> bool:
        return self.stopped.is_set() or self.kubelet_stop.is_set()

    def _sleep(self, seconds: float) -> bool:
        """Wait, waking early when stopped; True when the worker should end."""
        end = time.monotonic() + seconds
        while not self._done():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.stopped.wait(min(left, 0.1))
        return True

    def _probe(self, spec: Obj) -> tuple[bool, str]:
        timeout = float(spec.get("timeoutSeconds") or 1)
        # The host defaults to the pod's IP (network.py gives each pod its own), as the kubelet's does.
        host = {"host": (self.pod.get("status") or {}).get("podIP") or POD_IP}
        try:
            if "httpGet" in spec:
                return http_probe(self.c, {**host, **spec["httpGet"]}, timeout)
            if "tcpSocket" in spec:
                return tcp_probe(self.c, {**host, **spec["tcpSocket"]}, timeout)
            if "exec" in spec:
                return exec_probe(self.exec_runner, spec["exec"], timeout)
        except (OSError, ValueError) as exc:
            return False, str(exc)
        return False, "unsupported probe handler (grpc is not emulated)"

    def _work(self, kind: str) -> None:
        # pkg/kubelet/prober/worker.go run / doProbe.
        spec = self.c[kind]
        period = float(spec.get("periodSeconds") or 10)
        success_threshold = int(spec.get("successThreshold") or 1)
        failure_threshold = int(spec.get("failureThreshold") or 3)
        if kind != "startupProbe":
            while not self.started.is_set():  # startup gates readiness and liveness
                if self._sleep(0.1):
                    return
        if self._sleep(float(spec.get("initialDelaySeconds") or 0)):
            return
        last: bool | None = None
        run = 0
        while not self._done():
            ok, output = self._probe(spec)
            if self._done():
                return
            if not ok:
                # pkg/kubelet/prober/prober.go: every failed probe is an Unhealthy event.
                record_pod_event(self.store, self.pod, "Warning", "Unhealthy", f"{NAMES[kind]} probe failed: {output}",
                                 field_path=f"spec.containers{{{self.c['name']}}}")
            run = run + 1 if ok == last else 1
            last = ok
            settled = (ok and run >= success_threshold) or (not ok and run >= failure_threshold)
            if settled and self._result(kind, ok):
                return
            if self._sleep(period):
                return

    def _result(self, kind: str, ok: bool) -> bool:
        """Apply a settled result; True when the worker is finished."""
        if kind == "readinessProbe":
            self._set_ready(ok)
            return False
        if kind == "startupProbe" and ok:
            self._set_started()
            if not self.c.get("readinessProbe"):
                self._set_ready(True)
            return True  # upstream stops probing startup once it succeeded
        if ok:
            return False
        # pkg/kubelet/kuberuntime/kuberuntime_manager.go computePodActions: a failed liveness / startup
        # probe kills the container; the message says it will be restarted unless restartPolicy is Never.
        message = f"Container {self.c['name']} failed {NAMES[kind].lower()} probe"
        if (self.pod["spec"].get("restartPolicy") or "Always") != "Never":
            message += ", will be restarted"
        record_pod_event(self.store, self.pod, "Normal", "Killing", message,
                         field_path=f"spec.containers{{{self.c['name']}}}")
        self.kill()
        return True

    def _set_started(self) -> None:
        self.started.set()
        self._mutate(lambda st: st.__setitem__("started", True))

    def _set_ready(self, ready: bool) -> None:
        self._mutate(lambda st: st.__setitem__("ready", ready))

    def _mutate(self, change: Callable[[Obj], None]) -> None:
        meta = self.pod["metadata"]

        def upd(p: Obj) -> None:
            if p["metadata"]["uid"] != meta["uid"] or p["metadata"].get("deletionTimestamp"):
                return
            for st in p["status"].get("containerStatuses") or []:
                if st["name"] == self.c["name"] and "running" in (st.get("state") or {}):
                    change(st)
            update_ready(p)
        self.store.mutate("pods", meta["namespace"], meta["name"], upd)  # None when the pod is gone
