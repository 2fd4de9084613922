"""Pod and Service addresses on loopback: each emulator gets its own 127.A.0.0/16.

With ``pod_ips`` (``KubeEmulator(pod_network=True)``), every pod has an address of its own; without it
every pod's IP is the node's, 127.0.0.1, as the emulator had before (processes binding 127.0.0.1 and probes
aimed there keep working, and two pods cannot both listen on one port). Services get a ClusterIP either way.

Linux routes all of 127.0.0.0/8 to the loopback interface, so a process can bind any 127.x.y.z without
configuration: that stands in for a pod network (each pod its own IP, every pod reaching every other)
without network namespaces. Pods get 127.A.B.C with B >= 1 (handed out in order, as host-local IPAM does,
an address coming back to the pool when its pod is gone); Services get their ClusterIP from 127.A.0.0/24.
127.0.0.1 is never handed out. A is picked at random among the second octets no socket on this machine
uses yet (/proc/net/tcp), so emulators started side by side (tests, `make up`) do not collide.
"""

from __future__ import annotations

import ipaddress
import random
import threading
from pathlib import Path

from .store import ApiError

PROC_NET_TCP = Path("/proc/net/tcp")
LOOPBACK_IP = "127.0.0.1"  # the node's address (hostIP), never a pod's
POD_IP_ENV = "DEVSTACK_POD_IP"  # emulator-only: every container's environment carries its pod's IP


def addresses_in_use() -> set[str]:
    """IPv4 local addresses of this machine's TCP sockets (listening or connected)."""
    used: set[str] = set()
    try:
        lines = PROC_NET_TCP.read_text().splitlines()[1:]
    except OSError:
        return used
    for line in lines:
        local = line.split()[1]  # "0100007F:1F40": address in host byte order (little-endian here), port
        hex_ip = local.split(":")[0]
        used.add(str(ipaddress.IPv4Address(bytes.fromhex(hex_ip)[::-1])))
    return used


class PodNetwork:
    """Hands out pod IPs and Service ClusterIPs from one 127.A.0.0/16."""

    def __init__(self, *, pod_ips: bool = True, second_octet: int | None = None) -> None:
        self.pod_ips = pod_ips
        if second_octet is None:
            taken = {int(ip.split(".")[1]) for ip in addresses_in_use() if ip.startswith("127.")}
            second_octet = random.choice([a for a in range(16, 250) if a not in taken] or list(range(16, 250)))
        self.prefix = f"127.{second_octet}"
        self._lock = threading.Lock()
        self._pods: dict[str, str] = {}  # pod uid -> IP
        self._next = 0  # index of the next pod address to try (host-local IPAM: round the range in order)
        self._services: set[str] = set()

    @property
    def pod_cidr(self) -> str:
        return f"{self.prefix}.0.0/16"

    def _pod_address(self, index: int) -> str:
        b, c = divmod(index, 254)
        return f"{self.prefix}.{1 + b % 255}.{1 + c}"

    def assign(self, uid: str) -> str:
        """The pod's IP (the same one on every call until ``release``)."""
        if not self.pod_ips:
            return LOOPBACK_IP
        with self._lock:
            if uid in self._pods:
                return self._pods[uid]
            held, busy = set(self._pods.values()), addresses_in_use()
            for _ in range(255 * 254):
                ip = self._pod_address(self._next)
                self._next = (self._next + 1) % (255 * 254)
                if ip not in held and ip not in busy:
                    self._pods[uid] = ip
                    return ip
        raise ApiError(500, "InternalError", f"no free pod IP left in {self.pod_cidr}")

    def release(self, uid: str) -> None:
        with self._lock:
            self._pods.pop(uid, None)

    def service_ip(self, *, hold: bool = True) -> str:
        """A free ClusterIP from 127.A.0.0/24 (``hold``: allocated to the caller until released)."""
        with self._lock:
            busy = addresses_in_use()
            for d in range(1, 255):
                ip = f"{self.prefix}.0.{d}"
                if ip not in self._services and ip not in busy:
                    if hold:
                        self._services.add(ip)
                    return ip
        raise ApiError(500, "InternalError", f"no free ClusterIP left in {self.prefix}.0.0/24")

    def claim_service_ip(self, ip: str, *, hold: bool = True) -> None:
        """A ClusterIP the client chose (spec.clusterIP set on create): it must be in range and free."""
        with self._lock:
            if not ip.startswith(self.prefix + ".0.") or ip in self._services:
                raise ApiError(422, "Invalid", f'Service is invalid: spec.clusterIPs: Invalid value: ["{ip}"]: '
                               f"failed to allocate IP {ip}: provided IP is not in the valid range or already "
                               f"allocated. The range of valid IPs is {self.prefix}.0.0/24")
            if hold:
                self._services.add(ip)

    def release_service_ip(self, ip: str) -> None:
        with self._lock:
            self._services.discard(ip)
