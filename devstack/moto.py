"""A local S3 that sends bucket notifications to a local SQS: moto's server, on a free loopback port.

SeaweedFS (devstack/s3.py) is the real S3 server of the sync tests and benchmarks, but it has no bucket
notifications: 4.48 answers PutBucketNotificationConfiguration with 200 and keeps nothing (checked here).
moto's server is a MOCK of AWS (S3, SQS and IAM in one process, objects in memory), the only thing on
these machines that turns an S3 PUT into an SQS message in S3's own event format (``Records[].s3.object
.key`` URL-encoded, an ``s3:TestEvent`` when a notification is configured). So the local stack uses it
where events are the point (`make up`, `make demo`, the running-Airflow tests), with small objects only.

Looser than S3 in one way, said where it matters (README): it checks no credentials. moto can enforce
IAM (``INITIAL_NO_AUTH_ACTION_COUNT``) but only for header-signed requests; the sync engine's presigned
GETs then fail inside moto (KeyError 'HTTP_AUTHORIZATION', moto 5.2.5 iam/access_control.py), so
credential checks are proven against SeaweedFS (tests/test_airflow_connections.py, the sync tests).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import LOOPBACK, free_ports, spawn, stop_group, wait_until
from .s3 import ACCESS_KEY, SECRET_KEY, aws_env

REGION = "us-east-1"


@dataclass
class MotoS3:
    """moto's server: S3 and SQS on one loopback port (the same interface as SeaweedS3)."""

    data_dir: Path
    buckets: tuple[str, ...] = ()
    port: int = 0
    pid: int | None = None
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "moto.log"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client needs to reach this server (as SeaweedS3.env)."""
        return aws_env(self.endpoint, self.access_key, self.secret_key, REGION)

    def client(self, service: str, **overrides: Any) -> Any:
        import boto3

        kwargs = {"endpoint_url": self.endpoint, "region_name": REGION, "aws_access_key_id": self.access_key,
                  "aws_secret_access_key": self.secret_key, **overrides}
        return boto3.client(service, **kwargs)

    def start(self, timeout: float = 30.0) -> MotoS3:
        import os

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "false"}
        proc = spawn([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
                     log_path=self.log_path, env=env)
        self.pid = proc.pid
        try:
            wait_until(self._ready, timeout=timeout, what="moto server", proc=proc, log_path=self.log_path)
            for bucket in self.buckets:
                self.client("s3").create_bucket(Bucket=bucket)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        # moto's own API: answers once the server serves.
        try:
            urllib.request.urlopen(self.endpoint + "/moto-api/data.json", timeout=0.5)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def release_queue(self, bucket: str, prefix: str, name: str) -> str:
        """A queue that gets S3's ObjectCreated events for ``<prefix>/*manifest.json`` in ``bucket``
        (what a platform team configures per model: the release contract writes manifest.json last).
        Returns the queue URL. Adds to the bucket's notification configuration (S3 replaces it whole)."""
        sqs, s3 = self.client("sqs"), self.client("s3")
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        current = s3.get_bucket_notification_configuration(Bucket=bucket).get("QueueConfigurations", [])
        rules = [{"Name": "prefix", "Value": prefix.strip("/") + "/"}, {"Name": "suffix", "Value": "manifest.json"}]
        queues = [*current, {"Id": name, "QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
                             "Filter": {"Key": {"FilterRules": rules}}}]
        s3.put_bucket_notification_configuration(Bucket=bucket,
                                                 NotificationConfiguration={"QueueConfigurations": queues})
        # S3 answers a new configuration with an s3:TestEvent on the queue; the watcher would turn it into
        # a deploy run that finds nothing new. Read and deleted, as a platform team would after set-up.
        for _ in range(10):
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
            for m in messages:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            if any('"s3:TestEvent"' in m["Body"] for m in messages):
                break
        return str(url)

    def stop(self) -> None:
        if self.pid is not None:
            stop_group(self.pid, grace=3.0)
            self.pid = None

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
