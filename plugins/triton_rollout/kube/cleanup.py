"""Failed step pods are kept for inspection (`kubectl logs`, `describe`), then deleted after a retention age.

The step operators keep a failed pod (``on_finish_action=delete_succeeded_pod``) so someone can read it;
without a sweep they pile up, one per failed try. Each step task of a model sweeps that model's failed
pods older than ``kubernetes.failed_pod_retention_s`` before it starts its own, with the Kubernetes
client the operator already holds (list and delete pods: verbs the Airflow service account has for
KubernetesPodOperator anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from triton_rollout.config import ModelDeployment

from .specs import APP_LABEL, APP_NAME, MODEL_LABEL

log = logging.getLogger(__name__)


def failed_at(pod: Any) -> datetime | None:
    """When a Failed pod stopped: its containers' latest finish, else its creation; None if not Failed."""
    status = pod.status
    if status is None or status.phase != "Failed":
        return None
    finished = [c.state.terminated.finished_at for c in (status.container_statuses or [])
                if c.state and c.state.terminated and c.state.terminated.finished_at]
    when = max(finished) if finished else pod.metadata.creation_timestamp
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def expired(pods: Iterable[Any], retention: timedelta, now: datetime) -> list[Any]:
    """The Failed pods that stopped longer than ``retention`` before ``now``."""
    out = []
    for pod in pods:
        when = failed_at(pod)
        if when is not None and now - when >= retention:
            out.append(pod)
    return out


def sweep_failed_pods(core_v1: Any, model: ModelDeployment, *, now: datetime | None = None) -> list[str]:
    """Delete ``model``'s failed step pods past their retention; returns the names deleted.

    A pod that is gone already (another task swept it) is not an error."""
    from kubernetes.client.exceptions import ApiException

    kube = model.kubernetes
    selector = f"{APP_LABEL}={APP_NAME},{MODEL_LABEL}={model.name}"
    pods = core_v1.list_namespaced_pod(kube.namespace, label_selector=selector).items
    deleted = []
    for pod in expired(pods, timedelta(seconds=kube.failed_pod_retention_s), now or datetime.now(UTC)):
        name = pod.metadata.name
        try:
            core_v1.delete_namespaced_pod(name, kube.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
        deleted.append(name)
    if deleted:
        log.info("deleted %d failed pod(s) of %s older than %ss (kubernetes.failed_pod_retention_s): %s",
                 len(deleted), model.name, kube.failed_pod_retention_s, ", ".join(deleted))
    return deleted
