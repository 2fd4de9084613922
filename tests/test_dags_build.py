"""Checkpoint release -> build pod (CPU demo builder) -> engine release -> deploy, through real Airflow runs
(dag.test()) on real S3, Triton and the Kubernetes emulator; and the compatibility gate in the sync pod."""

from __future__ import annotations

from pathlib import Path

import pytest
from triton_rollout.pvc.layout import PvcLayout

from devstack import demo_models
from tests.helpers import DEPLOY_LLM, LLM, ROLLOUT_NS, RolloutStack, golden, infer_llm, output, text_of


def sync_exit_codes(kubeconfig: Path, version: int) -> list[int]:
    """Exit codes of the failed sync pods of demo-llm ``version`` (failed pods are kept for inspection)."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    pods = api.list_namespaced_pod(ROLLOUT_NS, label_selector=(f"triton-rollout/model={LLM},triton-rollout/version="
                                                               f"{version},app.kubernetes.io/component=sync"))
    return [c.state.terminated.exit_code for p in pods.items if p.status.phase == "Failed"
            for c in p.status.container_statuses or [] if c.state.terminated]


@pytest.mark.slow
def test_checkpoint_builds_in_a_pod_deploys_and_a_mismatched_engine_never_reaches_the_pvc(
        rollout: RolloutStack, kube_emulator, capfd: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from triton_rollout.release.s3 import ReleaseUri, fetch_manifest

    # v1 is a checkpoint (corpus + vocab + the python ensemble): only a build makes it servable.
    ckpt = demo_models.publish_demo_checkpoint(rollout.bucket, rollout.work, 1, prefix="releases")
    engine = ReleaseUri.parse(ckpt).engine_release()
    dr, states = rollout.run(DEPLOY_LLM)
    out = output(capfd, caplog)
    assert dr.state == "success", (states, out[-4000:])
    assert states == {"wait_for_release": "success", "resolve": "success", "build_engine": "success",
                      "sync": "success", "load": "success", "smoke": "success", "promote": "success",
                      "announce": "success", "rollback": "skipped"}, out[-8000:]
    # The build pod ran the CPU demo builder's two steps, their output streamed into the task log.
    assert "[convert]" in out and "[build]" in out, out[-4000:]
    assert f"SUMMARY build demo-llm v1: engine release published at {engine}" in out
    built = fetch_manifest(engine)
    assert built.kind == "engine" and built.compat is not None
    assert (built.compat.trtllm_version, built.compat.compute_capability) == ("cpu-demo", "cpu")
    # The sync published the ENGINE release (its manifest, compat included), not the checkpoint.
    layout = PvcLayout.at(rollout.pvc, create=False)
    record = layout.publish_record(LLM, 1)
    assert record is not None and record.manifest.kind == "engine" and record.manifest.compat is not None
    assert record.manifest.compat.trtllm_version == "cpu-demo"
    assert "SUMMARY sync demo-llm v1: published" in out
    answer = infer_llm(rollout.triton.http_url, 1)
    assert answer["model_version"] == "1" and text_of(answer) == golden(1)

    # Triton now "serves TensorRT-LLM 0.17.0 on compute capability 9.0": the v2 engine built by the CPU
    # demo builder does not fit, and the sync pod refuses it (exit 15) before a byte reaches the PVC.
    models = rollout.work / "models-mismatch.yaml"
    text = (rollout.dags / "models.yaml").read_text()
    serving = "serving: {trtllm_version: cpu-demo, compute_capability: cpu}"
    assert serving in text
    models.write_text(text.replace(serving, 'serving: {trtllm_version: 0.17.0, compute_capability: "9.0"}'))
    monkeypatch.setenv("TRITON_ROLLOUT_MODELS", str(models))
    before = layout.deployment(LLM)
    demo_models.publish_demo_checkpoint(rollout.bucket, rollout.work, 2, prefix="releases")
    dr, states = rollout.run(DEPLOY_LLM)
    out = output(capfd, caplog)
    assert dr.state == "failed", (states, out[-4000:])
    assert states["build_engine"] == "success" and states["sync"] == "failed", states
    assert states["load"] == "upstream_failed" and states["promote"] == "upstream_failed", states
    assert "cannot be served by this Triton" in out and "built with cpu-demo, Triton serves with 0.17.0" in out
    assert "not retried" in out  # exit 15 is permanent: no retries of the sync
    assert sync_exit_codes(kube_emulator.kubeconfig, 2) == [15]
    assert not list(rollout.pvc.glob("repository/*/2")) and not list(rollout.pvc.glob("staging/*/2"))
    assert layout.publish_record(LLM, 2) is None
    assert layout.deployment(LLM) == before
    answer = infer_llm(rollout.triton.http_url, 1)
    assert answer["model_version"] == "1" and text_of(answer) == golden(1)
