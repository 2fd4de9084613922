"""The local real tritonserver: installed from the wheel without touching .venv, started and stopped whole."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from triton_rollout.errors import TritonError
from triton_rollout.triton.control import TritonControl

from devstack import triton as dt
from devstack.procs import free_ports


def test_install_is_idempotent_and_apart_from_the_venv(triton_install: Path) -> None:
    stamp = json.loads((triton_install / ".installed.json").read_text())
    assert stamp["pytriton"] == dt.PYTRITON_VERSION
    mtime = dt.server_binary(triton_install).stat().st_mtime_ns
    t0 = time.monotonic()
    assert dt.install(triton_install) == triton_install
    assert time.monotonic() - t0 < 2.0  # a stamp check, not a second unpack
    assert dt.server_binary(triton_install).stat().st_mtime_ns == mtime
    # The stub's numpy 1.x lives in its own venv; the project's numpy is untouched.
    import numpy

    assert ".devstack" not in numpy.__file__
    assert list((triton_install / "stub-venv").rglob(f"numpy-{dt.STUB_NUMPY}.dist-info"))


def test_server_starts_answers_and_leaves_no_process(triton: dt.TritonServer) -> None:
    pid = triton.pid
    assert pid is not None and triton.alive()
    with TritonControl(triton.url, timeout=5) as control:
        assert control.is_live()
        assert control.repository_index() == []
    pgid = os.getpgid(pid)
    triton.stop()
    assert triton.pid is None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_a_triton_that_is_down_fails_after_the_deadline() -> None:
    (port,) = free_ports(1)
    control = TritonControl(f"http://127.0.0.1:{port}/", timeout=1)
    t0 = time.monotonic()
    with pytest.raises(TritonError, match=f"127.0.0.1:{port} did not answer .* within 1s; nothing was changed"):
        control.wait_live(1.0)
    assert 0.9 < time.monotonic() - t0 < 5
    with pytest.raises(TritonError, match="repository index failed"):
        control.repository_index()
    control.close()
