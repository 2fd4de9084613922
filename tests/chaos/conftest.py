"""Fixtures of the Airflow faults (test_chaos_airflow.py): one running Airflow on its own local stack, tuned so
that a killed component is noticed in seconds, and a bandwidth-limited S3 endpoint for the step pods so that a
sync runs long enough to be interrupted."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from devstack.procs import LOOPBACK
from tests.conftest import _retry_soon_policy
from tests.helpers import RUNNING_AIRFLOW_POD_RETENTION_S, RunningAirflow

# Per connection, S3 -> pod: a sync of the faults' padded release takes seconds (its big file arrives on one
# connection, ~2 MiB/s measured), the demo releases (kilobytes) are not slowed noticeably.
POD_S3_BYTES_PER_S = 2 * 1024 * 1024
# How long Airflow waits before it calls a task whose worker stopped heartbeating dead (300 s by default). The
# task supervisor heartbeats every [workers] min_heartbeat_interval (5 s) at most, so 20 s is four missed beats.
TASK_HEARTBEAT_TIMEOUT_S = 20
# A worker that dies with the scheduler leaves its task "running" under a dead scheduler job, which only the
# orphaned-task check resets (every orphaned_tasks_check_interval, 300 s by default, once the dead job's heartbeat
# is older than scheduler_health_check_threshold, 30 s): the heartbeat-timeout check only looks at tasks its own
# job queued (airflow/jobs/scheduler_job_runner.py _find_task_instances_without_heartbeats).
SCHEDULER_HEARTBEAT_S = 2
SCHEDULER_HEALTH_THRESHOLD_S = 15
ORPHANED_TASKS_CHECK_S = 5
# How long before a triggerer that stopped heartbeating (every job_heartbeat_sec) loses its triggers to another
# (30 s by default; Trigger.assign_unassigned in airflow/models/trigger.py reassigns after this threshold).
TRIGGERER_HEALTH_THRESHOLD_S = 8


class ThrottledRelay:
    """A loopback TCP relay that forwards to ``upstream_port`` and paces the answers (upstream -> client) to
    ``bytes_per_s`` per connection: a slow link to S3, nothing else changed (requests pass untouched)."""

    CHUNK = 64 * 1024

    def __init__(self, upstream_port: int, bytes_per_s: int) -> None:
        self.upstream_port = upstream_port
        self.bytes_per_s = bytes_per_s
        self._sock = socket.create_server((LOOPBACK, 0))
        self.port = self._sock.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self._closed.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection((LOOPBACK, self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.bytes_per_s), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: int | None) -> None:
        try:
            while data := src.recv(self.CHUNK):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


@pytest.fixture(scope="session")
def chaos_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAirflow]:
    """S3 + Triton + the Kubernetes emulator + Airflow's four components, as tests/conftest.py's
    ``running_airflow`` starts them, but: the step pods reach S3 through a :class:`ThrottledRelay` (the
    models' ``aws.endpoint_url`` comes from AWS_ENDPOINT_URL; Airflow itself reads S3 through the aws_default
    connection, unthrottled), a task whose heartbeat stops is failed after TASK_HEARTBEAT_TIMEOUT_S, one left
    by a dead scheduler is reset within ORPHANED_TASKS_CHECK_S of SCHEDULER_HEALTH_THRESHOLD_S, a dead
    triggerer's triggers move after TRIGGERER_HEALTH_THRESHOLD_S, and a retry waits 1 s."""
    from devstack.airflow import USERNAME, AirflowClient, AirflowServer
    from devstack.stack import LocalStack

    root = tmp_path_factory.mktemp("chaos-airflow")
    local = LocalStack(root / "stack").start()
    relay = ThrottledRelay(local.s3.port, POD_S3_BYTES_PER_S)
    try:
        home = root / "airflow"
        _retry_soon_policy(home)
        server = AirflowServer.for_stack(
            local, home, AWS_ENDPOINT_URL=relay.url, ROLLOUT_SENSOR_POKE_S="1", ROLLOUT_SCHEDULE="0 0 1 * *",
            ROLLOUT_SENSOR_TIMEOUT_S="180", ROLLOUT_FAILED_POD_RETENTION_S=str(RUNNING_AIRFLOW_POD_RETENTION_S),
            AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="0.2",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=str(TASK_HEARTBEAT_TIMEOUT_S),
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="2",
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC=str(SCHEDULER_HEARTBEAT_S),
            AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD=str(SCHEDULER_HEALTH_THRESHOLD_S),
            AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL=str(ORPHANED_TASKS_CHECK_S),
            AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="1",
            AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD=str(TRIGGERER_HEALTH_THRESHOLD_S),
        ).start()
        try:
            client = AirflowClient(server.url, USERNAME, server.password)
            client.wait_for_dag("deploy_demo-llm")
            airflow = RunningAirflow(local, server, client, root / "work")
            airflow.first_deploy_by_the_scheduler()
            yield airflow
        finally:
            server.stop()
    finally:
        relay.close()
        local.stop()
