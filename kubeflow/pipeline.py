"""The rollout as a Kubeflow Pipelines v2 pipeline, compiled from the steps ``triton_rollout.kube.kfp_steps``
renders (JSON): the same images, commands, env, PVC and scheduling as the project's pods.

Runs in ``.venv-kfp`` (requirements-kfp.txt: kfp + kfp-kubernetes pin kubernetes<31, which .venv cannot hold);
imports nothing of the project, so the JSON is the whole contract between the two.

    pipeline(version: int, kind: str = "engine")
      checkpoint-release (kind == "checkpoint"): build (GPU) -> sync-built
      engine-release (otherwise):                sync
      then load-smoke-promote(version): ExitHandler(exit task: rollback) around load -> smoke -> promote

The rollback is the exit task of the load/smoke/promote group only, as in the Airflow DAG: a failed build or
sync leaves nothing loaded to roll back. It receives the group's final status (dsl.PipelineTaskFinalStatus)
and runs the project's ``rollback`` only when the group did not succeed (the guard is in kfp_steps.py). Every
task has caching off: KFP would otherwise answer a re-deploy of the same version from its cache, and Triton
would never load it.

    .venv-kfp/bin/python -m kubeflow.pipeline --steps steps.json --out kubeflow/triton_rollout_pipeline.yaml
"""

# No `from __future__ import annotations`: KFP reads the pipeline functions' annotations as types.
import argparse
import inspect
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

SCHEMA = 1
INPUT_ANNOTATIONS: dict[str, Any] = {"version": int, "run_id": str, "status": dsl.PipelineTaskFinalStatus}
# Resources a KFP v2 task cannot set (PipelineTask has cpu/memory/accelerator setters only): the pods'
# ephemeral-storage requests do not reach KFP pods. Any other unknown resource is an error.
NOT_EXPRESSIBLE_RESOURCES = frozenset({"ephemeral-storage"})
_RESOURCE_SETTERS = {
    ("requests", "cpu"): "set_cpu_request", ("limits", "cpu"): "set_cpu_limit",
    ("requests", "memory"): "set_memory_request", ("limits", "memory"): "set_memory_limit",
}


class StepsError(Exception):
    """The steps JSON asks for something this module cannot compile."""


def _value(part: Any, inputs: Mapping[str, Any]) -> Any:
    """One command/args entry: literal text, or text and component inputs concatenated (KFP resolves the
    placeholders inside the string at run time)."""
    if isinstance(part, str):
        return part
    pieces = [p if isinstance(p, str) else inputs[p["input"]] for p in part]
    return pieces[0] if len(pieces) == 1 else "".join(str(p) for p in pieces)


def container_component(step: Mapping[str, Any]) -> Callable[..., dsl.PipelineTask]:
    """A KFP container component running the step's image, command and args; its inputs are the run-time values
    the args need (version, run_id, status)."""

    def spec(*values: Any) -> dsl.ContainerSpec:
        inputs = dict(zip(step["inputs"], values, strict=True))
        return dsl.ContainerSpec(image=step["image"], command=[_value(c, inputs) for c in step["command"]],
                                 args=[_value(a, inputs) for a in step["args"]])

    # KFP reads a container component's inputs from its signature and its name from __name__.
    spec.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=INPUT_ANNOTATIONS[name])
        for name in step["inputs"]])
    spec.__name__ = step["name"].replace("-", "_")
    return dsl.container_component(spec)


def configure(task: dsl.PipelineTask, step: Mapping[str, Any]) -> dsl.PipelineTask:
    """The pod settings of the step on its KFP task (kfp-kubernetes for what is Kubernetes-only)."""
    task.set_caching_options(False)
    task.set_display_name(step["name"])
    if step["image_pull_policy"]:
        kubernetes.set_image_pull_policy(task, step["image_pull_policy"])
    if step["image_pull_secrets"]:
        kubernetes.set_image_pull_secrets(task, step["image_pull_secrets"])
    for var in step["env"]:
        task.set_env_variable(var["name"], var["value"])
    by_secret: dict[str, dict[str, str]] = defaultdict(dict)
    for ref in step["secret_env"]:
        by_secret[ref["secret"]][ref["key"]] = ref["env"]
    for secret, key_to_env in by_secret.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=key_to_env)
    for kind in ("requests", "limits"):
        for name, qty in step["resources"][kind].items():
            setter = _RESOURCE_SETTERS.get((kind, name))
            if setter is not None:
                getattr(task, setter)(qty)
            elif name not in NOT_EXPRESSIBLE_RESOURCES:
                raise StepsError(f"step {step['name']}: resource {kind}.{name} has no KFP setter")
    if step["gpu"]:
        task.set_accelerator_type(step["gpu"]["resource"]).set_accelerator_limit(step["gpu"]["count"])
    if step["pvc"]:
        kubernetes.mount_pvc(task, pvc_name=step["pvc"]["claim"], mount_path=step["pvc"]["mount_path"])
    for empty in step["empty_dirs"]:
        kubernetes.empty_dir_mount(task, volume_name=empty["name"], mount_path=empty["mount_path"],
                                   medium=empty.get("medium"), size_limit=empty.get("size_limit"))
    for key, value in step["node_selector"].items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for t in step["tolerations"]:
        kubernetes.add_toleration(task, key=t.get("key"), operator=t.get("operator"), value=t.get("value"),
                                  effect=t.get("effect"))
    security = step["security"]
    if security:
        kubernetes.set_security_context(task, run_as_user=security.get("runAsUser"),
                                        run_as_group=security.get("runAsGroup"),
                                        run_as_non_root=security.get("runAsNonRoot"))
    for key, value in step["labels"].items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    return task


def build_pipeline(steps_doc: Mapping[str, Any]) -> Any:
    """The pipeline function (a KFP graph component) for one model's rendered steps."""
    if steps_doc.get("schema") != SCHEMA:
        raise StepsError(f"steps JSON schema {steps_doc.get('schema')!r}, this module reads {SCHEMA}: render the "
                         "steps and compile with the same checkout")
    steps = steps_doc["steps"]
    components = {name: container_component(step) for name, step in steps.items()}

    def run(name: str, **inputs: Any) -> dsl.PipelineTask:
        step = steps[name]
        return configure(components[name](**{k: v for k, v in inputs.items() if k in step["inputs"]}), step)

    @dsl.pipeline(name="load-smoke-promote", description="load the candidate, smoke-test it, promote it; "
                  "roll back when any of them fails")
    def load_smoke_promote(version: int) -> None:
        run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        rollback = run("rollback", version=version, run_id=run_id)
        with dsl.ExitHandler(rollback, name="roll-back-on-failure"):
            load = run("load", version=version, run_id=run_id)
            smoke = run("smoke", version=version, run_id=run_id).after(load)
            run("promote", version=version, run_id=run_id).after(smoke)

    info = steps_doc["pipeline"]
    if "build" not in steps:
        @dsl.pipeline(name=info["name"], description=info["description"])
        def engine_pipeline(version: int) -> None:
            """Deploy one release.

            Args:
                version: the release to deploy (its S3 folder <release_prefix>/<model>/<version>).
            """
            sync = run("sync", version=version)
            load_smoke_promote(version=version).set_caching_options(False).after(sync)

        return engine_pipeline

    @dsl.pipeline(name=info["name"], description=info["description"])
    def pipeline(version: int, kind: str = "engine") -> None:
        """Deploy one release.

        Args:
            version: the release to deploy (its S3 folder <release_prefix>/<model>/<version>).
            kind: as the release's manifest.json says: engine (served as is) or checkpoint (built first).
        """
        with dsl.If(kind == "checkpoint", name="checkpoint-release"):
            build = run("build", version=version)
            kubernetes.set_timeout(build, steps_doc["build_timeout_s"])
            built = run("sync-built", version=version).after(build)
        with dsl.Else(name="engine-release"):
            synced = run("sync", version=version)
        # After both branches: KFP compiles this to a dependency on the If/Else group, which succeeds when
        # the branch that ran did; a failed build or sync never reaches the group (nothing to roll back).
        load_smoke_promote(version=version).set_caching_options(False).after(built, synced)

    return pipeline


HEADER = ("# Compiled by `make kfp-pipeline` (kubeflow/pipeline.py from triton_rollout.kube.kfp_steps); edit the "
          "models config or the code, not this file.\n")


def compile_steps(steps_doc: Mapping[str, Any], out: Path) -> None:
    compiler.Compiler().compile(pipeline_func=build_pipeline(steps_doc), package_path=str(out))
    out.write_text(HEADER + out.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeflow.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", required=True, help="the JSON of triton_rollout.kube.kfp_steps ('-': stdin)")
    parser.add_argument("--out", type=Path, required=True, help="the compiled pipeline (YAML)")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.steps == "-" else Path(args.steps).read_text()
    try:
        compile_steps(json.loads(text), args.out)
    except StepsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
