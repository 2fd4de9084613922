"""Shared fixtures: one real SeaweedFS S3 server per test session, a fresh bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.s3 import SeaweedS3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    saved = {k: os.environ.get(k) for k in server.env()}
    # The library reads the standard AWS variables, exactly as a pod would.
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture()
def s3_client(s3_server: SeaweedS3):  # type: ignore[no-untyped-def]
    from triton_rollout.s3io import make_client

    return make_client()


@pytest.fixture()
def bucket(s3_client) -> str:  # type: ignore[no-untyped-def]
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture()
def pvc(tmp_path: Path) -> Path:
    path = tmp_path / "pvc"
    path.mkdir()
    return path
