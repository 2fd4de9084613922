"""The Kubeflow Pipelines (KFP v2) pipeline: compiled for real by the kfp SDK in .venv-kfp, its IR checked against
the pods the project's own code builds (kube/specs.py) for the same model, and the committed compiled YAML kept
up to date. Nothing here runs the pipeline: there is no KFP backend or cluster on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from triton_rollout.config import GPU_RESOURCE, ModelDeployment, read_config_file
from triton_rollout.errors import ConfigError
from triton_rollout.kube import kfp_steps, specs
from triton_rollout.steps import BuildRequest, LoadRequest, PromoteRequest, RollbackRequest, SmokeRequest, SyncRequest

ROOT = Path(__file__).resolve().parents[1]
KFP_PYTHON = ROOT / ".venv-kfp" / "bin" / "python"
COMMITTED = ROOT / "kubeflow" / "triton_rollout_pipeline.yaml"
EXAMPLE_CONFIG = ROOT / "kubeflow" / "example-models.yaml"
VERSION = 42
RUN_ID = "triton-rollout-run-7"
VERSION_PH = "{{$.inputs.parameters['version']}}"
RUN_ID_PH = "{{$.inputs.parameters['run_id']}}"
STATUS_PH = "{{$.inputs.parameters['status']}}"
# Not the example's values anywhere: another namespace, claim, mount, prefix, IRSA, scheduling, 4 GPUs.
WIDE_CONFIG = """
models:
  - name: wide-llm
    release_prefix: s3://acme-models/releases
    triton_url: http://triton.llm.svc:8000
    tp_size: 2
    pp_size: 2
    build:
      engine_prefix: built/engines
      timeout_s: 7200
      spec: {backend: tensorrt-llm, family: mistral, dtype: float16}
    kubernetes:
      namespace: llm
      pvc_claim: llm-repository
      pvc_mount_path: /mnt/repo
      triton_repository_path: /srv/models
      aws: {irsa_role_arn: "arn:aws:iam::123456789012:role/triton-rollout", region: eu-west-1,
            endpoint_url: "https://s3.eu-west-1.amazonaws.com"}
      images: {sync: registry.acme.io/rollout/sync:1.2.3, build: registry.acme.io/rollout/build:1.2.3}
      node_selector: {pool: cpu}
      build_node_selector: {pool: gpu}
      tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]
      gpu_product: NVIDIA-A100-SXM4-80GB
      run_as_user: 2000
      run_as_group: 2000
"""


def _needs_kfp() -> None:
    if not KFP_PYTHON.exists():
        pytest.skip(".venv-kfp is missing: `make venv` (which `make test` runs) creates it from requirements-kfp.txt")


def compile_pipeline(model: ModelDeployment, out: Path) -> str:
    """The pipeline kubeflow/pipeline.py compiles, in .venv-kfp, from the steps rendered here for ``model``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # it needs nothing of the project
    done = subprocess.run([str(KFP_PYTHON), "-m", "kubeflow.pipeline", "--steps", "-", "--out", str(out)],
                          input=json.dumps(kfp_steps.render(model)), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out.read_text()


@dataclass
class Compiled:
    model: ModelDeployment
    text: str
    spec: dict[str, Any]
    platform: dict[str, Any]

    def component(self, step: str) -> dict[str, Any]:
        return self.spec["components"][f"comp-{step}"]

    def container(self, step: str) -> dict[str, Any]:
        return self.spec["deploymentSpec"]["executors"][self.component(step)["executorLabel"]]["container"]

    def kubernetes(self, step: str) -> dict[str, Any]:
        return self.platform.get(self.component(step)["executorLabel"], {})

    def steps(self) -> set[str]:
        return {name.removeprefix("comp-") for name, c in self.spec["components"].items() if "executorLabel" in c}


def expected_pods(model: ModelDeployment) -> dict[str, dict[str, Any]]:
    """What the project's pod builders give for each step of release VERSION, as Airflow's operators ask."""
    release = model.release(VERSION)
    requests: dict[str, Any] = {
        "sync": SyncRequest.for_model(model, release),
        "load": LoadRequest.for_model(model, VERSION, RUN_ID),
        "smoke": SmokeRequest.for_model(model, VERSION, RUN_ID),
        "promote": PromoteRequest.for_model(model, VERSION, RUN_ID),
        "rollback": RollbackRequest.for_model(model, VERSION, RUN_ID),
    }
    if model.build.build_spec is not None:
        built = release.engine_release(model.build.engine_prefix)
        requests["build"] = BuildRequest.for_model(model, release, built)
        requests["sync-built"] = SyncRequest.for_model(model, built)
    return {name: specs.to_dict(specs.step_pod(model, request)) for name, request in requests.items()}


def _filled(values: list[str]) -> list[str]:
    return [v.replace(VERSION_PH, str(VERSION)).replace(RUN_ID_PH, RUN_ID) for v in values]


def _models(tmp: Path) -> dict[str, ModelDeployment]:
    wide = tmp / "wide.yaml"
    wide.write_text(WIDE_CONFIG)
    return {
        # The committed example: a TensorRT-LLM build on one H100.
        "example": read_config_file(EXAMPLE_CONFIG, environ={}).model("llama3-8b"),
        # From dags/models.yaml: the CPU demo build (no GPU) and an engine-only model (no build step).
        "demo-llm": read_config_file(ROOT / "dags" / "models.yaml", environ={}).model("demo-llm"),
        "demo-tensor": read_config_file(ROOT / "dags" / "models.yaml", environ={}).model("demo-tensor"),
        "wide": read_config_file(wide, environ={}).model("wide-llm"),
    }


@pytest.fixture(scope="module", params=["example", "demo-llm", "demo-tensor", "wide"])
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    _needs_kfp()
    tmp = tmp_path_factory.mktemp(f"kfp-{request.param}")
    model = _models(tmp)[request.param]
    text = compile_pipeline(model, tmp / "pipeline.yaml")
    spec, platform = yaml.safe_load_all(text)
    return Compiled(model, text, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"])


def test_images_commands_and_args_are_the_project_pods(compiled: Compiled) -> None:
    pods = expected_pods(compiled.model)
    assert compiled.steps() == set(pods)
    assert ("build" in pods) == (compiled.model.build.build_spec is not None)
    for step, pod in pods.items():
        (want,) = pod["spec"]["containers"]
        got = compiled.container(step)
        assert got["image"] == want["image"], step
        assert _filled(got["args"]) == want["args"], step
        if step == "rollback":
            # The exit task's guard, then the project's rollback command unchanged.
            assert got["command"][:4] == ["python", "-c", kfp_steps.ROLLBACK_GUARD, STATUS_PH]
            assert got["command"][4:] == want["command"]
        else:
            assert got["command"] == want["command"] == list(specs.CLI), step
        assert compiled.kubernetes(step).get("imagePullPolicy") == want["imagePullPolicy"]
        assert [s["secretName"] for s in compiled.kubernetes(step).get("imagePullSecret", [])] == \
            [s["name"] for s in pod["spec"].get("imagePullSecrets", [])]
    # The run-time values really are the pipeline's: a version or run id baked in would pin one release.
    sync_args = compiled.container("sync")["args"]
    assert f"{compiled.model.release_prefix}/{compiled.model.name}/{VERSION_PH}" in sync_args
    assert RUN_ID_PH in compiled.container("promote")["args"]
    assert not any(str(kfp_steps.VERSION_SENTINEL) in a for s in pods for a in compiled.container(s)["args"])


def test_env_and_the_aws_secret_come_by_reference(compiled: Compiled) -> None:
    aws = compiled.model.kubernetes.aws
    for step, pod in expected_pods(compiled.model).items():
        (want,) = pod["spec"]["containers"]
        plain = [{"name": e["name"], "value": e["value"]} for e in want["env"] if "value" in e]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in want["env"] if "valueFrom" in e}
        assert compiled.container(step).get("env", []) == plain, step
        secrets = compiled.kubernetes(step).get("secretAsEnv", [])
        got_refs = {m["envVar"]: {"name": s["secretName"], "key": m["secretKey"], "optional": s["optional"]}
                    for s in secrets for m in s["keyToEnv"]}
        assert got_refs == refs, step
        if aws.secret_name:
            assert set(got_refs) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
            assert {s["secretName"] for s in secrets} == {aws.secret_name}
        else:  # IRSA: the run's service account carries the role, no keys at all
            assert secrets == []
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & {e["name"] for e in plain}
    assert ("AWS_DEFAULT_REGION" in {e["name"] for e in compiled.container("sync").get("env", [])}) == bool(aws.region)


def test_pvc_mount_and_scratch_volumes(compiled: Compiled) -> None:
    kube = compiled.model.kubernetes
    for step, pod in expected_pods(compiled.model).items():
        (want,) = pod["spec"]["containers"]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = compiled.kubernetes(step)
        pvcs = [m for m in want["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
        if step == "build":
            assert pvcs == [] and "pvcMount" not in mounts  # it reads and writes S3 only
        else:
            assert [(m["constant"], m["mountPath"]) for m in mounts["pvcMount"]] == [(kube.pvc_claim,
                                                                                      kube.pvc_mount_path)]
            assert [p["mountPath"] for p in pvcs] == [kube.pvc_mount_path]
        empties = [{"volumeName": m["name"], "mountPath": m["mountPath"],
                    **{k: v for k, v in volumes[m["name"]]["emptyDir"].items()}}
                   for m in want["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
        assert mounts["emptyDirMounts"] == empties, step
        assert "/tmp" in [e["mountPath"] for e in empties]


def test_gpu_request_resources_and_scheduling(compiled: Compiled) -> None:
    spec = compiled.model.build.build_spec
    for step, pod in expected_pods(compiled.model).items():
        (want,) = pod["spec"]["containers"]
        res = compiled.container(step).get("resources", {})
        limits, requests = want["resources"]["limits"], want["resources"]["requests"]
        if GPU_RESOURCE in limits:
            assert step == "build" and spec is not None and spec.gpus > 0
            assert res["accelerator"]["resourceType"] == GPU_RESOURCE
            assert res["accelerator"]["resourceCount"] == limits[GPU_RESOURCE] == str(spec.gpus)
        else:
            assert "accelerator" not in res, step
        assert res.get("resourceCpuRequest") == requests.get("cpu")
        assert res.get("resourceCpuLimit") == limits.get("cpu")
        assert res.get("resourceMemoryRequest") == requests.get("memory")
        assert res.get("resourceMemoryLimit") == limits.get("memory")
        # KFP tasks have no ephemeral-storage setter; nothing else of the pods' resources is dropped.
        assert set(limits) | set(requests) <= {"cpu", "memory", GPU_RESOURCE, "ephemeral-storage"}
        k = compiled.kubernetes(step)
        assert k.get("nodeSelector", {}).get("labels", {}) == pod["spec"].get("nodeSelector", {}), step
        assert k.get("tolerations", []) == pod["spec"].get("tolerations", []), step
        ctx = pod["spec"]["securityContext"]
        assert k["securityContext"] == {"runAsUser": str(ctx["runAsUser"]), "runAsGroup": str(ctx["runAsGroup"]),
                                        "runAsNonRoot": True}
        labels = {n: v for n, v in pod["metadata"]["labels"].items() if n != specs.VERSION_LABEL}
        assert k["podMetadata"]["labels"] == labels
    if spec is not None:
        assert compiled.kubernetes("build")["activeDeadlineSeconds"] == str(int(compiled.model.build.timeout_s))


def _tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of every DAG (the root's and each component's), by task name."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return {name: task for dag in dags for name, task in dag["tasks"].items()}


def _dag_of(spec: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    return spec["components"][task["componentRef"]["name"]]["dag"]["tasks"]


def test_caching_is_off_for_every_step(compiled: Compiled) -> None:
    tasks = _tasks(compiled.spec)
    runs = {n: t for n, t in tasks.items() if "executorLabel" in compiled.spec["components"][t["componentRef"]["name"]]}
    assert set(runs) == compiled.steps()
    for name, task in [*runs.items(), ("load-smoke-promote", tasks["load-smoke-promote"])]:
        # A cached step would be skipped on a re-deploy of the same version: Triton would never load it.
        assert task["cachingOptions"].get("enableCache") is not True, name


def test_topology_build_sync_then_load_smoke_promote_with_rollback_on_failure(compiled: Compiled) -> None:
    spec = compiled.spec
    root = spec["root"]["dag"]["tasks"]
    serve = root["load-smoke-promote"]
    inner = _dag_of(spec, serve)
    (handler_name,) = [n for n, t in inner.items() if t["taskInfo"]["name"] == "roll-back-on-failure"]
    group = _dag_of(spec, inner[handler_name])
    assert set(group) == {"load", "smoke", "promote"}
    assert group["smoke"]["dependentTasks"] == ["load"] and group["promote"]["dependentTasks"] == ["smoke"]
    rollback = inner["rollback"]
    assert rollback["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert rollback["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == handler_name
    assert group["promote"]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["version"]["parameterType"] == "NUMBER_INTEGER"
    if compiled.model.build.build_spec is None:
        assert set(root) == {"sync", "load-smoke-promote"} and "kind" not in inputs
        assert serve["dependentTasks"] == ["sync"]
        return
    assert inputs["kind"]["defaultValue"] == "engine"
    (branches,) = [n for n in root if n.startswith("condition-branches")]
    assert serve["dependentTasks"] == [branches]  # after whichever branch ran
    by_name = {t["taskInfo"]["name"]: t for t in _dag_of(spec, root[branches]).values()}
    checkpoint, engine = by_name["checkpoint-release"], by_name["engine-release"]
    kind = "inputs.parameter_values['pipelinechannel--kind']"
    assert checkpoint["triggerPolicy"]["condition"] == f"{kind} == 'checkpoint'"
    assert engine["triggerPolicy"]["condition"].startswith("!(")
    built = _dag_of(spec, checkpoint)
    assert set(built) == {"build", "sync-built"} and built["sync-built"]["dependentTasks"] == ["build"]
    assert set(_dag_of(spec, engine)) == {"sync"}


def test_committed_pipeline_is_what_the_code_compiles(tmp_path: Path) -> None:
    _needs_kfp()
    model = read_config_file(EXAMPLE_CONFIG, environ={}).model("llama3-8b")
    text = compile_pipeline(model, tmp_path / "pipeline.yaml")

    def unstamped(t: str) -> list[str]:
        return [line for line in t.splitlines() if not line.startswith("sdkVersion:")]

    assert unstamped(COMMITTED.read_text()) == unstamped(text), \
        "kubeflow/triton_rollout_pipeline.yaml is stale: re-run `make kfp-pipeline`"


def _guard(status: str, *tail: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", kfp_steps.ROLLBACK_GUARD, status, *tail], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("state", ["SUCCEEDED", "COMPLETE"])
def test_rollback_guard_does_nothing_after_success(state: str) -> None:
    # The tail would fail (exit 9) if it ran.
    done = _guard(json.dumps({"state": state, "pipelineTaskName": "exit-handler-1"}), sys.executable, "-c",
                  "raise SystemExit(9)")
    assert done.returncode == 0 and "nothing to roll back" in done.stdout


@pytest.mark.parametrize("status", [json.dumps({"state": "FAILED", "error": {"message": "smoke failed"}}),
                                    json.dumps({"state": "CANCELED"}), "not json"])
def test_rollback_guard_runs_the_rollback_command_otherwise(status: str) -> None:
    done = _guard(status, sys.executable, "-c", "raise SystemExit(9)")
    assert done.returncode == 9 and "rolling back" in done.stdout
    # The real CLI receives the rest of argv as it is.
    cli = _guard(status, sys.executable, "-m", "triton_rollout", "rollback", "--help")
    assert cli.returncode == 0 and "--failed-version" in cli.stdout


def test_renderer_keeps_the_run_time_values_out_of_the_literal_args() -> None:
    model = read_config_file(EXAMPLE_CONFIG, environ={}).model("llama3-8b")
    steps = kfp_steps.render(model)["steps"]
    assert steps["sync"]["inputs"] == ["version"] and steps["promote"]["inputs"] == ["version", "run_id"]
    assert steps["rollback"]["inputs"] == ["version", "run_id", "status"]
    assert kfp_steps.parts("s3://b/p/m/918273645") == ["s3://b/p/m/", {"input": "version"}]
    assert kfp_steps.parts("--keep") == "--keep"


def test_renderer_refuses_a_pod_field_it_would_lose(monkeypatch: pytest.MonkeyPatch) -> None:
    model = read_config_file(EXAMPLE_CONFIG, environ={}).model("llama3-8b")
    kfp_steps.render(model)  # the pods as they are: every field carried or knowingly dropped
    real = specs.step_pod

    def with_host_network(*args: Any, **kwargs: Any) -> Any:
        pod = real(*args, **kwargs)
        pod.spec.host_network = True
        return pod

    monkeypatch.setattr(specs, "step_pod", with_host_network)
    with pytest.raises(ConfigError, match=r"sets \['hostNetwork'\]"):
        kfp_steps.render(model)
