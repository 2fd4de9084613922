"""The reconcile DAG repairs a deleted file on the PVC and a Triton that lost the model."""

from __future__ import annotations

import pytest
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.triton.control import TritonControl

from devstack import demo_models
from tests.helpers import RolloutStack, golden, infer_llm, output, text_of

LLM = demo_models.LLM_MODEL


@pytest.mark.slow
def test_reconcile_repairs_a_deleted_file_and_a_triton_that_lost_the_model(
        rollout: RolloutStack, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    rollout.publish(LLM, 1)
    dr, states = rollout.run(f"deploy_{LLM}")
    assert dr.state == "success", states

    engine = rollout.pvc / "repository" / "tensorrt_llm" / "1" / "bigram.npy"
    original = engine.read_bytes()
    engine.unlink()
    with TritonControl(rollout.triton.url) as control:
        control.unload("ensemble", wait_s=10)
        assert control.ready_versions("ensemble") == []

    dr, states = rollout.run("reconcile_triton_models")
    out = output(capfd, caplog)
    assert dr.state == "success", (states, out[-3000:])
    assert states == {"reconcile_demo_llm": "success", "reconcile_demo_tensor": "success"}
    assert engine.read_bytes() == original
    answer = infer_llm(rollout.triton.http_url, 1)
    assert answer["model_version"] == "1" and text_of(answer) == golden(1)
    assert "SUMMARY reconcile demo-llm v1: drift repaired" in out

    # In sync now: a second pass (full sha256 this time) finds nothing and changes nothing.
    before = engine.stat().st_ino
    dr, states = rollout.run("reconcile_triton_models", full_verify=True)
    out = output(capfd, caplog)
    assert dr.state == "success", states
    assert "SUMMARY reconcile demo-llm v1: in sync" in out and engine.stat().st_ino == before
    assert PvcLayout.at(rollout.pvc, create=False).deployment(LLM).promoted == 1
