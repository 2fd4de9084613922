"""The deploy DAG end to end through real Airflow runs (dag.test()) on real S3, Triton and the emulator."""

from __future__ import annotations

from pathlib import Path
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


# -- what the step operators are given (no stack needed) ---------------------------------------------------


def _deploy_dag(monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    from pathlib import Path

    from triton_rollout.airflow.factory import deploy_dags, load_config

    monkeypatch.setenv("TRITON_URL", "http://127.0.0.1:8000")
    monkeypatch.setenv("TRITON_ROLLOUT_MODELS", str(Path(__file__).resolve().parents[1] / "dags" / "models.yaml"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = load_config()
    return config.model(LLM), deploy_dags(config)[DEPLOY_LLM.replace("-", "_")]


def test_step_operators_get_the_start_timeouts_of_their_pod_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    model, dag = _deploy_dag(monkeypatch)
    kube = model.kubernetes
    build = dag.get_task("build_engine")
    assert (build.schedule_timeout_seconds, build.startup_timeout_seconds) == (
        kube.build_start_timeouts.schedule_s, kube.build_start_timeouts.startup_s)
    for task_id in ("sync", "load", "smoke", "promote", "rollback"):
        op = dag.get_task(task_id)
        assert (op.schedule_timeout_seconds, op.startup_timeout_seconds) == (
            kube.sync_start_timeouts.schedule_s, kube.sync_start_timeouts.startup_s), task_id
    # A node scale-up plus a ~30 GB pull: the build waits longer than the provider's 120 s and the sync pods.
    assert build.schedule_timeout_seconds > dag.get_task("sync").schedule_timeout_seconds > 120


def test_step_operators_reach_the_api_the_config_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from airflow.providers.common.compat.sdk import TaskDeferred
    from kubernetes.client import models as k8s

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text('{"apiVersion": "v1", "kind": "Config", "current-context": "c", "contexts": []}')
    # On the cluster (no KUBECONFIG at parse): in-cluster, and a KUBECONFIG the worker happens to have set
    # does not travel to the triggerer besides it (the async hook would refuse two configurations).
    _, dag = _deploy_dag(monkeypatch)
    build = dag.get_task("build_engine")
    assert (build.in_cluster, build.config_file, build.kubernetes_conn_id) == (True, None, None)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    build.pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="p", namespace="triton"))
    with pytest.raises(TaskDeferred) as deferred:
        build.invoke_defer_method()
    kwargs = deferred.value.trigger.serialize()[1]
    assert (kwargs["in_cluster"], kwargs["config_dict"]) == (True, None)
    # The local stack (KUBECONFIG at parse): that file, read into the trigger.
    _, dag = _deploy_dag(monkeypatch, KUBECONFIG=str(kubeconfig))
    build = dag.get_task("build_engine")
    assert (build.in_cluster, build.config_file) == (False, str(kubeconfig))
    build.pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="p", namespace="triton"))
    with pytest.raises(TaskDeferred) as deferred:
        build.invoke_defer_method()
    kwargs = deferred.value.trigger.serialize()[1]
    assert kwargs["in_cluster"] is False and kwargs["config_dict"]["current-context"] == "c"


def test_the_operators_pod_pulls_with_the_configured_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from triton_rollout.airflow.operators import SyncOperator
    from triton_rollout.kube.specs import step_pod
    from triton_rollout.steps import SyncRequest

    model, _ = _deploy_dag(monkeypatch)
    model = dataclasses.replace(model, kubernetes=dataclasses.replace(model.kubernetes,
                                                                      image_pull_secrets=("ngc-pull",)))
    op = SyncOperator(task_id="sync", model=model)
    op.full_pod_spec = step_pod(model, SyncRequest.for_model(model, model.release(1)))
    pod = op.build_pod_request_obj(dry_run=True)  # the provider's merge of the step pod with its own settings
    assert [s.name for s in pod.spec.image_pull_secrets] == ["ngc-pull"]
    # What the README says of Airflow's pods (issue 13 item 8): the provider renames the step's container
    # `base` and sets its own termination message policy; the rest of the container is the step's.
    (container,) = pod.spec.containers
    step = op.full_pod_spec.spec.containers[0]
    assert (step.name, step.termination_message_policy) == ("sync", "FallbackToLogsOnError")
    assert (container.name, container.termination_message_policy) == ("base", "File")
    assert (container.image, container.args) == (step.image, step.args)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "`kubectl logs <pod> -c base`" in readme and "terminationMessagePolicy: File" in readme


def test_placeholder_images_fail_the_dag_files_naming_the_field(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Any) -> None:
    from pathlib import Path

    from triton_rollout.airflow.factory import load_config
    from triton_rollout.errors import ConfigError

    text = (Path(__file__).resolve().parents[1] / "dags" / "models.yaml").read_text()
    models = tmp_path / "models.yaml"
    models.write_text(text.replace('build: "${ROLLOUT_BUILD_IMAGE:-localhost/triton-rollout-build:dev}"',
                                   'build: "ghcr.io/example/triton-rollout-build:0.1.0"'))
    monkeypatch.setenv("TRITON_ROLLOUT_MODELS", str(models))
    monkeypatch.setenv("TRITON_URL", "http://127.0.0.1:8000")
    with pytest.raises(ConfigError, match=r"models\.yaml: config field 'models\[0\]\.kubernetes\.images\.build': "
                                          r"is the placeholder"):
        load_config()
