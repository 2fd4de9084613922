"""The API server's listeners, and restarting them without the rest of the emulator (the faults suite's
"API server restarted while a pod runs").

On a cluster kube-apiserver restarts on its own (an upgrade, a crash, a control-plane node replaced): etcd keeps
every object, the kubelets keep their pods running and report to the new process once it answers, and every
client connection (watches, followed logs, keep-alive) is cut. The emulator is one process (the store stands for
etcd; the kubelet and the controllers run beside the API), so restarting that process would be a whole-cluster
power cut, not an apiserver restart. ``ApiServers.restart`` restarts the API alone: it closes the plain and TLS
listening sockets and shuts every open connection, stays down for the outage asked for (connections are refused
meanwhile), rebuilds the watch cache (``Store.reset_watch_cache``: a watch from a resourceVersion before the
restart is 410 Gone, as a fresh apiserver's cacher answers until the client re-lists) and listens again on the
same ports. Objects and tokens live in the store and survive, as in etcd.

Looser than a cluster, and said so: the in-process controllers (Deployments, Jobs, EndpointSlices, the Service
proxy) keep working during the outage, where a controller-manager would wait for the apiserver; kube-proxy keeps
forwarding either way.

Triggered from outside as a fault is: ``KubeEmulator.restart_api_server`` writes :data:`REQUEST_FILE` (the outage)
and sends SIGUSR1; the emulator writes :data:`DONE_FILE` (restarts so far, seconds down) once it listens again.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .store import Store

REQUEST_FILE = "apiserver-restart.json"  # {"outage_s": seconds}, written by the one who injects the restart
DONE_FILE = "apiserver-restarts.json"  # {"restarts": n, "down_s": seconds}, written after each restart


class TrackingServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its open connections, so a restart can cut them as a dying process does."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class ApiServers:
    """The listeners ``make`` builds (plain HTTP, then TLS), each served from its own thread."""

    def __init__(self, make: Callable[[], list[TrackingServer]], store: Store, state_dir: Path) -> None:
        self._make, self._store, self._state_dir = make, store, state_dir
        self._servers: list[TrackingServer] = []
        self._lock = threading.Lock()  # one start / stop / restart at a time
        self.restarts = 0

    @property
    def port(self) -> int:
        return int(self._servers[0].server_address[1])

    def start(self) -> None:
        with self._lock:
            self._start()

    def stop(self) -> None:
        with self._lock:
            self._stop()

    def restart(self) -> None:
        """Down for the outage :data:`REQUEST_FILE` names (default 1 s), then up again on the same ports."""
        try:
            outage = float(json.loads((self._state_dir / REQUEST_FILE).read_text()).get("outage_s", 1.0))
        except (OSError, ValueError):
            outage = 1.0
        with self._lock:
            if not self._servers:
                return  # stopping for good
            t0 = time.monotonic()
            self._stop()
            self._store.reset_watch_cache()
            time.sleep(outage)
            self._start()
            self.restarts += 1
            (self._state_dir / DONE_FILE).write_text(json.dumps(
                {"restarts": self.restarts, "down_s": round(time.monotonic() - t0, 3)}))

    def _start(self) -> None:
        self._servers = self._make()
        for server in self._servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    def _stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
            server.cut_connections()
        self._servers = []
