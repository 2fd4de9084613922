"""The rollout steps as a Kubeflow Pipelines (KFP v2) pipeline needs them: a plain-JSON rendering of the pods
``kube/specs.py`` builds, read by ``kubeflow/pipeline.py`` (run in ``.venv-kfp``, whose kfp pins cannot live in
``.venv``), which turns each step into a container component and compiles the pipeline.

Nothing is re-spelt here: every step is the pod ``specs.step_pod`` gives for the step's typed request
(steps.py), so image, command, args, env, resources, PVC, scheduling and user are the ones Airflow's pods and the
k8s/ Jobs run. What a KFP run only knows at run time (the release version, the run's name, the final status the
exit handler hands the rollback) is rendered with a sentinel value, then cut out of the strings it appears in:
an arg becomes a list of literal text and ``{"input": NAME}`` parts, which the pipeline fills with the component's
input. A pod field KFP cannot express is either listed below as knowingly dropped or stops the render, so
nothing vanishes from the compiled pipeline unnoticed.

    python -m triton_rollout.kube.kfp_steps --config dags/models.yaml --model demo-llm [--no-env] > steps.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from triton_rollout.config import GPU_RESOURCE, ModelDeployment, read_config_file
from triton_rollout.errors import ConfigError, RolloutError
from triton_rollout.kube import specs
from triton_rollout.steps import (
    BuildRequest,
    LoadRequest,
    PromoteRequest,
    RollbackRequest,
    SmokeRequest,
    StepRequest,
    SyncRequest,
)

SCHEMA = 1
# Stand-ins for the run-time inputs: values no config produces, so each occurrence in a rendered pod is one.
VERSION_SENTINEL = 918273645
RUN_ID_SENTINEL = "kfp-run-id-918273645"
INPUT_TYPES = {"version": "int", "run_id": "str", "status": "task_final_status"}
# The exit task runs whatever the load/smoke/promote group ended with. KFP hands it the group's final status
# (dsl.PipelineTaskFinalStatus, JSON) as argv[1]; the backend reports success as SUCCEEDED (newer) or COMPLETE
# (MLMD state); kubeflow/pipelines#11953. Anything else rolls back: a rollback that was not needed is refused
# by the CLI itself ("vN is the promoted version, not a candidate"), a skipped one would leave a failed
# candidate loaded. The rest of argv is the project's rollback command, exec'd unchanged.
ROLLBACK_GUARD = (
    "import json, os, sys\n"
    "try:\n"
    "    state = json.loads(sys.argv[1]).get('state')\n"
    "except (ValueError, AttributeError):\n"
    "    state = None\n"
    "if state in ('SUCCEEDED', 'COMPLETE', 'CACHED', 'SKIPPED'):\n"
    "    print(f'load, smoke and promote ended {state}: nothing to roll back', flush=True)\n"
    "    sys.exit(0)\n"
    "print(f'load, smoke or promote ended {state or sys.argv[1]!r}: rolling back', flush=True)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
# Pod labels that name a run-time value (the version): KFP sets pod labels from constants only.
_RUNTIME_LABELS = (specs.VERSION_LABEL,)
# Every field of the step pods is either carried into the pipeline or listed here as what a KFP v2 task
# cannot set (kfp 2.17.3 / kfp-kubernetes 2.17.3); a field in neither list stops the render, so a new pod
# setting never silently misses the KFP pods. Dropped, with why:
#   restartPolicy, container name: KFP's own (its launcher wraps the command in a container named "main");
#   serviceAccountName: per run (create_run_from_pipeline_package(service_account=...)), not per task;
#   automountServiceAccountToken: KFP's launcher needs the token to report to the KFP API;
#   fsGroup, fsGroupChangePolicy, seccompProfile, the container securityContext, terminationMessagePolicy:
#   no kfp-kubernetes setter (its set_security_context docs: the backend applies its own no-privilege-escalation,
#   drop-ALL and RuntimeDefault defaults).
POD_FIELDS_CARRIED = frozenset({"containers", "volumes", "nodeSelector", "tolerations", "securityContext",
                                "imagePullSecrets"})
POD_FIELDS_DROPPED = frozenset({"restartPolicy", "serviceAccountName", "automountServiceAccountToken"})
CONTAINER_FIELDS_CARRIED = frozenset({"image", "imagePullPolicy", "command", "args", "env", "resources",
                                      "volumeMounts"})
CONTAINER_FIELDS_DROPPED = frozenset({"name", "securityContext", "terminationMessagePolicy"})
POD_SECURITY_CARRIED = ("runAsUser", "runAsGroup", "runAsNonRoot")
POD_SECURITY_DROPPED = frozenset({"fsGroup", "fsGroupChangePolicy", "seccompProfile"})
_EXTEND = "extend triton_rollout/kube/kfp_steps.py and kubeflow/pipeline.py together"
_SENTINELS = re.compile(f"({re.escape(RUN_ID_SENTINEL)}|{VERSION_SENTINEL})")
_INPUT_OF = {RUN_ID_SENTINEL: "run_id", str(VERSION_SENTINEL): "version"}

Part = str | dict[str, str]


def step_requests(model: ModelDeployment) -> dict[str, StepRequest]:
    """Each pipeline step's request, for the sentinel version and run id, in run order.

    ``build`` and ``sync-built`` (the engine built from a checkpoint release) only for a model with a build
    spec; ``sync`` takes an engine release as it is.
    """
    v, run_id = VERSION_SENTINEL, RUN_ID_SENTINEL
    out: dict[str, StepRequest] = {}
    if model.build.build_spec is not None:
        built = model.servable_release(v, kind="checkpoint")
        out["build"] = BuildRequest.for_model(model, model.release(v), built)
        out["sync-built"] = SyncRequest.for_model(model, built)
    out["sync"] = SyncRequest.for_model(model, model.release(v))
    out["load"] = LoadRequest.for_model(model, v, run_id)
    out["smoke"] = SmokeRequest.for_model(model, v, run_id)
    out["promote"] = PromoteRequest.for_model(model, v, run_id)
    out["rollback"] = RollbackRequest.for_model(model, v, run_id)
    return out


def parts(text: str) -> Part | list[Part]:
    """``text`` as is, or split into literal text and ``{"input": NAME}`` where a sentinel stood."""
    pieces = [p for p in _SENTINELS.split(text) if p]
    if len(pieces) == 1 and pieces[0] not in _INPUT_OF:
        return text
    return [{"input": _INPUT_OF[p]} if p in _INPUT_OF else p for p in pieces]


def _inputs(items: Sequence[Part | list[Part]]) -> set[str]:
    found: set[str] = set()
    for item in items:
        for part in item if isinstance(item, list) else [item]:
            if isinstance(part, dict):
                found.add(part["input"])
    return found


def _env(container: Mapping[str, Any], step: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    plain: list[dict[str, str]] = []
    secret: list[dict[str, str]] = []
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if "value" in var:
            plain.append({"name": var["name"], "value": var["value"]})
        elif ref is not None and not ref.get("optional"):
            secret.append({"env": var["name"], "secret": ref["name"], "key": ref["key"]})
        else:
            raise ConfigError(f"kfp: the {step} pod's env {var['name']} is neither a value nor a required "
                              "secretKeyRef, which the pipeline renderer does not carry", hint=_EXTEND)
    return plain, secret


def _volumes(spec: Mapping[str, Any], container: Mapping[str, Any], step: str) -> tuple[dict[str, str] | None,
                                                                                         list[dict[str, str]]]:
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    pvc: dict[str, str] | None = None
    empty_dirs: list[dict[str, str]] = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if mount.get("subPath") or mount.get("readOnly"):
            raise ConfigError(f"kfp: the {step} pod mounts {mount['name']} with subPath/readOnly, which "
                              "kfp-kubernetes' mount_pvc / empty_dir_mount cannot express", hint=_EXTEND)
        if "persistentVolumeClaim" in volume:
            if pvc is not None:
                raise ConfigError(f"kfp: the {step} pod mounts two PVCs; the pipeline renderer carries one",
                                  hint=_EXTEND)
            pvc = {"claim": volume["persistentVolumeClaim"]["claimName"], "mount_path": mount["mountPath"]}
        elif "emptyDir" in volume:
            empty = volume["emptyDir"]
            empty_dirs.append({"name": mount["name"], "mount_path": mount["mountPath"],
                               **({"medium": empty["medium"]} if "medium" in empty else {}),
                               **({"size_limit": empty["sizeLimit"]} if "sizeLimit" in empty else {})})
        else:
            raise ConfigError(f"kfp: the {step} pod's volume {mount['name']} is of a kind the pipeline renderer "
                              "does not carry", hint=_EXTEND)
    return pvc, empty_dirs


def render_step(model: ModelDeployment, name: str, request: StepRequest) -> dict[str, Any]:
    """One step as the pipeline module reads it: the fields of ``specs.step_pod(model, request)``."""
    pod = specs.to_dict(specs.step_pod(model, request))
    spec = pod["spec"]
    (container,) = spec["containers"]
    context = spec.get("securityContext", {})
    for where, fields, known in (
            ("pod spec", spec, POD_FIELDS_CARRIED | POD_FIELDS_DROPPED),
            ("container", container, CONTAINER_FIELDS_CARRIED | CONTAINER_FIELDS_DROPPED),
            ("pod securityContext", context, POD_SECURITY_DROPPED.union(POD_SECURITY_CARRIED))):
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"kfp: the {name} pod's {where} sets {unknown}, which the pipeline renderer neither "
                              "carries nor knowingly drops", hint=_EXTEND)
    command: list[Part | list[Part]] = [parts(c) for c in container["command"]]
    args: list[Part | list[Part]] = [parts(a) for a in container["args"]]
    if name == "rollback":
        # KFP hands the exit task the group's final status; the guard rolls back unless it succeeded.
        command = ["python", "-c", ROLLBACK_GUARD, [{"input": "status"}], *command]
    plain, secret = _env(container, name)
    pvc, empty_dirs = _volumes(spec, container, name)
    resources = container.get("resources", {})
    limits = dict(resources.get("limits", {}))
    requests = dict(resources.get("requests", {}))
    gpus = limits.pop(GPU_RESOURCE, None)
    if requests.pop(GPU_RESOURCE, gpus) != gpus:
        raise ConfigError(f"kfp: the {name} pod requests and limits different GPU counts")
    return {
        "name": name,
        "image": container["image"],
        "image_pull_policy": container.get("imagePullPolicy"),
        "command": command,
        "args": args,
        "inputs": sorted(_inputs(command) | _inputs(args), key=list(INPUT_TYPES).index),
        "env": plain,
        "secret_env": secret,
        "resources": {"requests": requests, "limits": limits},
        "gpu": {"resource": GPU_RESOURCE, "count": int(gpus)} if gpus else None,
        "pvc": pvc,
        "empty_dirs": empty_dirs,
        "node_selector": spec.get("nodeSelector", {}),
        "tolerations": spec.get("tolerations", []),
        "security": {k: context[k] for k in POD_SECURITY_CARRIED if k in context},
        "image_pull_secrets": [s["name"] for s in spec.get("imagePullSecrets", [])],
        "labels": {k: v for k, v in pod["metadata"]["labels"].items() if k not in _RUNTIME_LABELS},
    }


def render(model: ModelDeployment) -> dict[str, Any]:
    """The pipeline's steps for ``model`` (JSON-ready), what kubeflow/pipeline.py compiles."""
    steps = {name: render_step(model, name, request) for name, request in step_requests(model).items()}
    for name, step in steps.items():
        if "version" not in step["inputs"]:
            # A sentinel that no longer reaches the args would compile a pipeline pinned to one release.
            raise ConfigError(f"kfp: the {name} step's args do not carry the release version",
                              hint="check how steps.py renders the request's version into its args")
    return {
        "schema": SCHEMA,
        "model": model.name,
        "pipeline": {
            "name": f"triton-rollout-{model.name}",
            "description": f"Deploy {model.name} releases from {model.release_prefix} to Triton at "
                           f"{model.triton_url}: build (checkpoint releases), sync, load, smoke, promote; "
                           "roll back when load, smoke or promote fails",
        },
        "build_timeout_s": int(model.build.timeout_s),
        "steps": steps,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triton_rollout.kube.kfp_steps",
                                     description="Render one model's rollout steps for kubeflow/pipeline.py (JSON).")
    parser.add_argument("--config", type=Path, required=True, help="models config file (dags/models.yaml)")
    parser.add_argument("--model", required=True, help="the model's name in --config")
    parser.add_argument("--no-env", action="store_true",
                        help="expand ${VAR:-default} references to their defaults, ignoring the environment "
                             "(what the committed kubeflow/ pipeline is rendered with)")
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        model = read_config_file(args.config, environ={} if args.no_env else None).model(args.model)
        text = json.dumps(render(model), indent=2, sort_keys=True) + "\n"
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
