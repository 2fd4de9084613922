"""Failed step pods are kept for inspection and swept after kubernetes.failed_pod_retention_s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kubernetes.client import models as k8s
from triton_rollout.config import ModelDeployment, read_config_file
from triton_rollout.errors import ConfigError
from triton_rollout.kube.cleanup import expired, failed_at

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def pod(name: str, phase: str, finished: datetime | None, created: datetime = NOW - timedelta(days=3)) -> k8s.V1Pod:
    state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=1, finished_at=finished)
                                 ) if finished else k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())
    status = k8s.V1ContainerStatus(name="base", image="i", image_id="", ready=False, restart_count=0, state=state)
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name, creation_timestamp=created),
                     status=k8s.V1PodStatus(phase=phase, container_statuses=[status]))


def test_only_failed_pods_past_their_retention_are_swept() -> None:
    pods = [pod("old-failed", "Failed", NOW - timedelta(hours=25)),
            pod("new-failed", "Failed", NOW - timedelta(hours=1)),
            pod("old-running", "Running", None), pod("old-succeeded", "Succeeded", NOW - timedelta(days=2))]
    assert [p.metadata.name for p in expired(pods, timedelta(hours=24), NOW)] == ["old-failed"]
    assert [p.metadata.name for p in expired(pods, timedelta(0), NOW)] == ["old-failed", "new-failed"]
    # Without a finish time (never started), the creation time counts.
    assert failed_at(pod("unstarted", "Failed", None)) == NOW - timedelta(days=3)


def test_the_retention_is_validated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = ModelDeployment.from_dict({"name": "m", "release_prefix": "s3://models/r",
                                       "kubernetes": {"failed_pod_retention_s": 60}})
    assert model.kubernetes.failed_pod_retention_s == 60
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  - name: m\n    release_prefix: s3://models/r\n"
                   "    kubernetes: {failed_pod_retention_s: -1}\n")
    with pytest.raises(ConfigError, match="failed_pod_retention_s"):
        read_config_file(bad)
