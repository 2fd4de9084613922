"""Shared fixtures: one real SeaweedFS S3 server per test session, a fresh bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.s3 import SeaweedS3
from devstack.triton import TritonServer


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


# -- Triton: the real tritonserver from the nvidia-pytriton wheel (make triton-server installs it) --------


@pytest.fixture(scope="session")
def triton_install() -> Path:
    """The unpacked server, installed once per machine (idempotent: a stamp check when present)."""
    from devstack.triton import install

    return install()


@pytest.fixture()
def triton(triton_install: Path, pvc: Path, tmp_path: Path) -> Iterator[TritonServer]:
    """A tritonserver serving this test's PVC repository/ (explicit mode). Starting one takes ~0.1 s,
    so each test gets its own and no loaded model leaks between tests; stopped (group, SIGKILL fallback)
    at the end."""
    from triton_rollout.pvc import PvcLayout

    layout = PvcLayout.at(pvc)
    server = TritonServer(layout.repository, tmp_path / "triton-log", install_dir=triton_install).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube_emulator(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The Kubernetes API emulator (devstack.kube): one CPU node, no GPUs; pods run the project's venv.

    Tests add what they need through it: ``create_pvc(ns, claim, host_folder)``, ``create_secret(...)``.
    """
    from devstack.kube import KubeEmulator

    emulator = KubeEmulator(tmp_path_factory.mktemp("kube-emulator")).start()
    try:
        yield emulator
    finally:
        emulator.stop()
