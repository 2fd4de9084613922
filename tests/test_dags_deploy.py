"""The deploy DAG end to end through real Airflow runs (dag.test()) on real S3, Triton and the emulator."""

from __future__ import annotations

from typing import Any

import pytest
from triton_rollout.pvc.layout import PvcLayout

from tests.helpers import DEPLOY_LLM, LLM, RolloutStack, golden, infer_llm, output, text_of


@pytest.mark.slow
def test_deploy_llm_then_redeploy_transfers_nothing(rollout: RolloutStack, capfd: pytest.CaptureFixture[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    rollout.publish(LLM, 1)
    dr, states = rollout.run(DEPLOY_LLM)
    out = output(capfd, caplog)
    assert dr.state == "success", (states, out[-4000:])
    assert states == {"wait_for_release": "success", "resolve": "success", "build_engine": "skipped",
                      "sync": "success", "load": "success", "smoke": "success", "promote": "success",
                      "announce": "success", "rollback": "skipped"}
    answer = infer_llm(rollout.triton.http_url, 1)
    assert answer["model_version"] == "1" and text_of(answer) == golden(1)
    assert PvcLayout.at(rollout.pvc, create=False).deployment(LLM).promoted == 1
    assert "SUMMARY sync demo-llm v1: published" in out and "SUMMARY announce demo-llm v1" in out

    # The same version again: verified by stat, nothing downloaded, still serving v1.
    dr, states = rollout.run(DEPLOY_LLM, version=1)
    out = output(capfd, caplog)
    assert dr.state == "success", (states, out[-4000:])
    assert "SUMMARY sync demo-llm v1: unchanged, 0 of" in out and "bytes=0;" in out
    assert text_of(infer_llm(rollout.triton.http_url, 1)) == golden(1)


@pytest.mark.slow
def test_sensor_skips_when_nothing_new_and_bad_releases_roll_back(
        rollout: RolloutStack, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import ClientLoop, post

    rollout.publish(LLM, 1)
    dr, states = rollout.run(DEPLOY_LLM)
    assert dr.state == "success", (states, output(capfd, caplog)[-4000:])

    # Nothing newer than what Triton serves (v1): the sensor waits (deferred) and soft-fails to skipped.
    monkeypatch.setenv("ROLLOUT_SENSOR_TIMEOUT_S", "2")
    dr, states = rollout.run(DEPLOY_LLM, only_if_new=True)
    out = output(capfd, caplog)
    assert dr.state == "success", (states, out[-4000:])
    assert set(states.values()) == {"skipped"}, states
    assert "newer than v1" in out
    monkeypatch.delenv("ROLLOUT_SENSOR_TIMEOUT_S")

    base = rollout.triton.http_url

    def ask() -> dict[str, Any]:
        # What clients call: the unversioned endpoint. (A candidate is served in place of the promoted
        # version while it is smoke-tested, so /versions/1/ answers 503 in that window; see promote.py.)
        return post(f"{base}/v2/models/ensemble/generate", {"text_input": "the ", "max_tokens": 12})

    # v2 loads but answers wrongly: smoke fails, rollback restores v1, the run fails.
    rollout.publish(LLM, 2, variant="wrong")
    with ClientLoop(ask) as loop:
        dr, states = rollout.run(DEPLOY_LLM)
    out = output(capfd, caplog)
    assert dr.state == "failed"
    assert states["smoke"] == "failed" and states["rollback"] == "success", states
    assert states["promote"] == "upstream_failed" and states["announce"] == "upstream_failed"
    assert "differs from the golden" in out and "SUMMARY smoke demo-llm v2: FAILED" in out
    assert loop.ok > 0 and loop.failed == [], loop.failed[:3]
    # Every request was answered; the candidate's engine is visible only during its load/smoke window
    # (promote.py swaps composing models in place), and v1 answers again once rolled back.
    assert golden(1) in {a["text_output"] for a in loop.answers}
    assert (loop.answers[-1]["model_version"], loop.answers[-1]["text_output"]) == ("1", golden(1))
    assert text_of(infer_llm(base, 1)) == golden(1)

    # v3 fails to load at all: the load restores v1 itself, rollback records it, the run fails.
    rollout.publish(LLM, 3, variant="init_error")
    dr, states = rollout.run(DEPLOY_LLM)
    out = output(capfd, caplog)
    assert dr.state == "failed"
    assert states["load"] == "failed" and states["smoke"] == "upstream_failed" and states["rollback"] == "success"
    assert text_of(infer_llm(base, 1)) == golden(1)
    state = PvcLayout.at(rollout.pvc, create=False).deployment(LLM)
    assert state.promoted == 1
    assert [h.details["from_version"] for h in state.history if h.event == "rollback"] == [2, 3]
