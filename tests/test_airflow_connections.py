"""Airflow connections for the Airflow side: S3 through the amazon provider's hook (the connection's keys,
endpoint and region win over the environment, which is the fallback), and the Triton URL of a connection.
Real provider hooks against the session's real S3 server; connections as Airflow reads them from AIRFLOW_CONN_*."""

from __future__ import annotations

import json

import pytest
from triton_rollout.airflow.connections import runtime_model, s3_from_connection, triton_url_from_connection
from triton_rollout.config import ModelDeployment
from triton_rollout.errors import ConfigError
from triton_rollout.release.resolve import find_release
from triton_rollout.release.s3 import S3Access

from devstack import demo_models
from devstack.s3 import SeaweedS3
from tests.helpers import LLM


def test_s3_comes_from_the_connection_not_the_environment(s3_server: SeaweedS3, bucket: str, tmp_path,  # type: ignore[no-untyped-def]
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    demo_models.publish_version(bucket, tmp_path, LLM, 1)
    model = ModelDeployment(name=LLM, release_prefix=f"s3://{bucket}/releases", aws_conn_id="rollout_s3")
    monkeypatch.setenv("AIRFLOW_CONN_ROLLOUT_S3", json.dumps({
        "conn_type": "aws", "login": s3_server.access_key, "password": s3_server.secret_key,
        "extra": {"endpoint_url": s3_server.endpoint, "region_name": "us-east-1"}}))
    # The environment points elsewhere, with keys S3 refuses: only the connection can make this work.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-the-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3 = s3_from_connection(model.aws_conn_id)
    assert s3.access.endpoint == s3_server.endpoint and s3.access.credentials is not None
    assert s3_server.secret_key not in repr(s3.access)
    found = find_release(model, client=s3.client, access=s3.access)
    assert found is not None and found.version == 1
    assert find_release(model, version=1, client=s3.client, access=s3.access) is not None


def test_without_the_connection_the_environment_is_the_fallback(s3_server: SeaweedS3, bucket: str, tmp_path,  # type: ignore[no-untyped-def]
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    demo_models.publish_version(bucket, tmp_path, LLM, 3)
    monkeypatch.delenv("AIRFLOW_CONN_AWS_DEFAULT", raising=False)
    model = ModelDeployment(name=LLM, release_prefix=f"s3://{bucket}/releases")
    assert model.aws_conn_id == "aws_default"
    s3 = s3_from_connection(model.aws_conn_id)  # no such connection: boto3's chain (the environment)
    found = find_release(model, client=s3.client, access=s3.access)
    assert found is not None and found.version == 3


def test_the_triton_endpoint_from_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TRITON_A", json.dumps({"conn_type": "http", "host": "triton.triton.svc",
                                                            "port": 8000}))
    monkeypatch.setenv("AIRFLOW_CONN_TRITON_B", json.dumps({"conn_type": "http", "host": "https://triton.example"}))
    monkeypatch.setenv("AIRFLOW_CONN_TRITON_EMPTY", json.dumps({"conn_type": "http"}))
    assert triton_url_from_connection("triton_a") == "http://triton.triton.svc:8000"
    assert triton_url_from_connection("triton_b") == "https://triton.example"
    with pytest.raises(ConfigError, match="has no host"):
        triton_url_from_connection("triton_empty")
    model = ModelDeployment(name=LLM, release_prefix="s3://models/releases", triton_conn_id="triton_a")
    assert runtime_model(model).triton_url == "http://triton.triton.svc:8000"
    assert runtime_model(ModelDeployment(name=LLM, release_prefix="s3://models/releases")).triton_url == \
        "http://triton.triton.svc.cluster.local:8000"


def test_connection_ids_are_validated() -> None:
    with pytest.raises(ConfigError, match="aws_conn_id"):
        ModelDeployment(name=LLM, release_prefix="s3://models/releases", aws_conn_id="no spaces")
    assert "credentials=chain" in repr(S3Access())
