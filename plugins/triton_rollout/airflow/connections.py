"""Airflow connections for what the Airflow side reads: S3 (``aws_conn_id``) through the amazon provider.

The sensor, its trigger and the resolve task list releases and read manifests. They take the model's
``aws_conn_id`` (default ``aws_default``) the way Airflow users expect: credentials, region and
``endpoint_url`` (connection extra) from the connection; where a field is not in the connection, or
the connection does not exist, the amazon provider falls back to boto3's own chain (the environment,
a profile, IRSA, an instance role) and so do we. The pods never use an S3 connection: they keep
their Secret / IRSA path (config.kubernetes.aws). The Triton endpoint is the model's ``triton_url``, or
the connection ``triton_conn_id`` names, for the tasks and the pods they start.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from triton_rollout.config import ModelDeployment
from triton_rollout.release.s3 import S3Access

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AirflowS3:
    """A boto3 client the amazon provider built from the connection (for listing) and the same connection's
    endpoint, region and keys (for signing manifest reads)."""

    client: Any
    access: S3Access


def s3_from_connection(conn_id: str | None) -> AirflowS3:
    """The S3 of ``conn_id`` (None: boto3's chain only, as the provider does for a missing connection)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=conn_id)
    client = hook.get_conn()
    # The provider resolves the keys (connection login/password, role assumption, or boto3's chain).
    frozen = hook.get_credentials()
    keys = (frozen.access_key, frozen.secret_key, frozen.token or None) if frozen and frozen.access_key else None
    config = hook.conn_config
    endpoint = getattr(config, "endpoint_url", None) or client.meta.endpoint_url
    style = ((getattr(config, "botocore_config", None) and config.botocore_config.s3) or {}).get("addressing_style")
    access = S3Access(endpoint_url=endpoint if endpoint and not _is_aws_default(endpoint) else None,
                      region=hook.conn_region_name or client.meta.region_name, credentials=keys,
                      addressing_style=style)
    log.info("S3 from Airflow connection %r: %r", conn_id, access)
    return AirflowS3(client=client, access=access)


def _is_aws_default(endpoint: str) -> bool:
    """boto3 fills in AWS's own endpoint when none is configured: that is "no custom endpoint"."""
    return endpoint.rstrip("/").endswith(".amazonaws.com")


def triton_url_from_connection(conn_id: str) -> str:
    """The Triton HTTP endpoint of an Airflow connection: its host (a full URL, or a name with ``schema``
    as the scheme, http by default) and port."""
    from airflow.sdk import BaseHook

    from triton_rollout.errors import ConfigError

    conn = BaseHook.get_connection(conn_id)
    host = (conn.host or "").rstrip("/")
    if not host:
        raise ConfigError(f"Airflow connection {conn_id!r} has no host: it should name the Triton HTTP endpoint",
                          hint=f"set its host (and port), e.g. airflow connections add {conn_id} "
                               "--conn-type http --conn-host triton.triton.svc --conn-port 8000")
    if "://" not in host:
        host = f"{conn.schema or 'http'}://{host}"
    return f"{host}:{conn.port}" if conn.port and host.count(":") < 2 else host


def runtime_model(model: ModelDeployment) -> ModelDeployment:
    """``model`` as its tasks see it when they run: the Triton URL from ``triton_conn_id`` when set.
    Connections are read at run time only (never while the DAG file is parsed)."""
    if model.triton_conn_id is None:
        return model
    return dataclasses.replace(model, triton_url=triton_url_from_connection(model.triton_conn_id))
