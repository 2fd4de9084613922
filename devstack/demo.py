"""The main job on the local stack, through Airflow: ``make demo``.

1. start S3 (SeaweedFS), Triton (CPU tritonserver) and the Kubernetes API emulator (pods run for real);
2. publish the demo releases (devstack.demo_models) to S3, manifest last;
3. run the deploy DAG of ``demo-llm`` end to end with ``dag.test()`` (the real DAG from dags/, its pods
   through KubernetesPodOperator) and print what was deployed, the live endpoints and a real answer;
4. rollback phase: publish a bad v2 (loads, answers wrongly), run the DAG again: the smoke test fails,
   the rollback task restores v1, the run fails, and v1 keeps answering;
5. stop everything it started. Exit status 0 only if every step did what it should.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .stack import BUCKET, LocalStack

REPO = Path(__file__).resolve().parent.parent
MODEL = "demo-llm"
DAG_ID = f"deploy_{MODEL}"


class DemoFailed(Exception):
    pass


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _airflow_env(work: Path, stack_env: dict[str, str]) -> None:
    """This process's environment, set before Airflow is imported (its config is read at import)."""
    os.environ.update(stack_env)
    os.environ["AIRFLOW_HOME"] = str(work / "airflow")
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ.setdefault("AIRFLOW_CONFIG", str(REPO / "airflow.cfg"))
    os.environ["ROLLOUT_SENSOR_POKE_S"] = "2"
    os.environ.pop("TRITON_ROLLOUT_MODELS", None)  # the committed dags/models.yaml, as users get it


def _airflow_cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise DemoFailed(f"airflow {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def _run_dag(**conf: Any) -> tuple[str, dict[str, str]]:
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "triton_deploy.py"))
    if bag.import_errors:
        raise DemoFailed(f"the DAG files did not import: {bag.import_errors}")
    dr = bag.dags[DAG_ID].test(run_conf=conf or None)
    return str(dr.state), {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


def _infer(base_url: str, version: int, prompt: str) -> dict[str, Any]:
    body = {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [prompt]},
                       {"name": "max_tokens", "shape": [1], "datatype": "INT32", "data": [16]}]}
    req = urllib.request.Request(f"{base_url}/v2/models/ensemble/versions/{version}/infer",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def _text(answer: dict[str, Any]) -> str:
    return str(next(o for o in answer["outputs"] if o["name"] == "text_output")["data"][0])


def _states(states: dict[str, str]) -> str:
    order = ["wait_for_release", "resolve", "build_engine", "sync", "load", "smoke", "promote", "announce", "rollback"]
    return ", ".join(f"{t}={states.get(t, '?')}" for t in order)


def run_demo(*, keep: bool = False, rollback: bool = True) -> int:
    from devstack import demo_models

    work = Path(tempfile.mkdtemp(prefix="demo-", dir=_work_root()))
    stack = LocalStack(work)
    started = time.monotonic()
    results: list[str] = []
    try:
        _say("starting the local stack: S3 (SeaweedFS), Triton, Kubernetes API emulator")
        stack.start()
        env = stack.env()
        _airflow_env(work, env)
        assert stack.triton is not None
        base = stack.triton.http_url
        print(f"S3 {env['AWS_ENDPOINT_URL']} · Triton {base} · kubeconfig {env['KUBECONFIG']} · PVC {stack.pvc}")

        _say("publishing the demo releases to S3 (manifest.json last)")
        for uri in demo_models.publish_demo_releases(BUCKET, work / "releases", versions=(1,)):
            print(f"  {uri}")

        _say("airflow db migrate; GPU pool for engine builds (include_deferred)")
        _airflow_cli("db", "migrate")
        _airflow_cli("pools", "set", "gpu_builds", "1", "GPU engine builds", "--include-deferred")

        _say(f"running the {DAG_ID} DAG end to end (dag.test: the real DAG, its pods in the emulator)")
        state, states = _run_dag()
        print(f"\nrun: {state}; tasks: {_states(states)}")
        if state != "success" or states.get("promote") != "success":
            raise DemoFailed(f"the deploy run ended {state}: {_states(states)}")
        answer = _infer(base, 1, "the model ")
        from triton_rollout.pvc.layout import PvcLayout

        deployed = PvcLayout.at(stack.pvc, create=False).deployment(MODEL)
        results += [
            f"deployed: {MODEL} v{deployed.promoted} (Triton models ensemble, preprocessing, tensorrt_llm, "
            "postprocessing) from s3://models/releases/demo-llm/1",
            f"live endpoint: {base}/v2/models/ensemble/versions/1/infer (and /generate)",
            f"inference: POST .../versions/1/infer text_input='the model ' -> "
            f"{_text(answer)!r} (model_version {answer['model_version']})",
        ]

        if rollback:
            _say("rollback phase: publishing a bad v2 (it loads, but answers differently from its golden cases)")
            src = demo_models.write_release(MODEL, work / "releases" / "bad", 2, "wrong")
            from triton_rollout.release.publish import publish_release

            publish_release(src, f"s3://{BUCKET}/releases/{MODEL}/2", source="make demo: bad release",
                            compat=demo_models.release_compat(MODEL))
            state, states = _run_dag()
            print(f"\nrun: {state}; tasks: {_states(states)}")
            if state != "failed" or states.get("smoke") != "failed" or states.get("rollback") != "success":
                raise DemoFailed(f"the bad release was not rolled back as expected: run {state}, {_states(states)}")
            after = _infer(base, 1, "the model ")
            if _text(after) != _text(answer):
                raise DemoFailed(f"after the rollback v1 answers {_text(after)!r}, not {_text(answer)!r}")
            results += [
                "bad release v2: smoke test failed, rollback task restored v1, the run failed (as it should)",
                f"still serving: v1 answers {_text(after)!r} at {base}/v2/models/ensemble/versions/1/infer",
            ]

        _say(f"demo result ({time.monotonic() - started:.0f}s)")
        for line in results:
            print(f"  {line}")
        return 0
    except DemoFailed as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"\ndemo FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        print("stopped S3, Triton and the Kubernetes emulator", flush=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")


def _work_root() -> Path:
    root = REPO / ".devstack"
    root.mkdir(exist_ok=True)
    return root
