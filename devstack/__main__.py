"""``python -m devstack {up,down,status,demo}``: the local real stack for the demo, tests and benchmarks.

``up`` starts the servers in the background (each in its own process group): S3, the Kubernetes emulator
running Triton as a Deployment of ``TRITON_REPLICAS`` real tritonservers behind its Service (default 2; 0:
a single tritonserver process instead), and a running Airflow (api-server, scheduler, dag-processor,
triggerer on loopback), and writes ``.devstack/env`` (shell exports: AWS_ENDPOINT_URL, credentials,
TRITON_URL (the Service's address, what clients use), KUBECONFIG, PVC_DIR, AIRFLOW_API_URL,
AIRFLOW_USERNAME, AIRFLOW_PASSWORD) and ``.devstack/stack.json`` (pids). ``down`` stops
every process group listed there. ``demo`` runs the main job end to end on a stack of its own and stops
everything it started, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from .procs import stop_group

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = REPO / ".devstack"
STACK_FILE = STATE_DIR / "stack.json"
ENV_FILE = STATE_DIR / "env"


def _write_env(values: dict[str, str]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(values.items())]
    ENV_FILE.write_text("# written by `make up`; source it: . .devstack/env\n" + "\n".join(lines) + "\n")


def up() -> int:
    from .airflow import USERNAME, AirflowServer
    from .demo_models import publish_demo_releases
    from .stack import BUCKET, DEFAULT_TRITON_REPLICAS, S3_KINDS, LocalStack

    if STACK_FILE.exists():
        print(f"a stack is already up (see {ENV_FILE}); run `make down` first", file=sys.stderr)
        return 1
    # ROLLOUT_LOCAL_S3=seaweedfs: the real SeaweedFS server (credentials checked) instead of moto; no
    # bucket notifications then, so every model's deploys start by polling.
    s3_kind = os.environ.get("ROLLOUT_LOCAL_S3", "moto")
    if s3_kind not in S3_KINDS:
        print(f"ROLLOUT_LOCAL_S3 must be one of {', '.join(S3_KINDS)}, got {s3_kind!r}", file=sys.stderr)
        return 2
    replicas_text = os.environ.get("TRITON_REPLICAS", str(DEFAULT_TRITON_REPLICAS))
    if not replicas_text.isdigit():
        print(f"TRITON_REPLICAS must be a whole number (0: one tritonserver process, no Deployment), got "
              f"{replicas_text!r}", file=sys.stderr)
        return 2
    # A fresh stack each time, as the Airflow database is: a PVC kept from an earlier `up` holds configs whose engine
    # paths were written for that stack's Triton (a single process sees the host folder, the fleet's pods /models),
    # and its Triton then fails to start ("failed to load all models").
    shutil.rmtree(STATE_DIR / "stack", ignore_errors=True)
    stack = LocalStack(STATE_DIR / "stack", s3_kind=s3_kind, triton_replicas=int(replicas_text)).start()
    airflow = None
    try:
        env = stack.env()
        os.environ.update(env)
        uris = publish_demo_releases(BUCKET, STATE_DIR / "demo-releases", versions=(1, 2))
        # AIRFLOW_HOME is the Makefile's (.devstack/airflow): the generated JWT secret and password stay there.
        airflow = AirflowServer.for_stack(stack, Path(os.environ.get("AIRFLOW_HOME", STATE_DIR / "airflow"))).start()
        env = {**env, "AIRFLOW_API_URL": airflow.url, "AIRFLOW_USERNAME": USERNAME,
               "AIRFLOW_PASSWORD": airflow.password}
    except BaseException:
        if airflow is not None:
            airflow.stop()
        stack.stop()
        raise
    # Folders outside .devstack that `down` removes (the Airflow database's cluster).
    dirs = [str(airflow.database.base)] if airflow.database and airflow.database.base else []
    STACK_FILE.write_text(json.dumps({"pids": {**airflow.pids(), **stack.pids()}, "env": env, "dirs": dirs},
                                     indent=1))
    _write_env(env)
    print(f"S3 ({s3_kind}) {env['AWS_ENDPOINT_URL']}, bucket '{BUCKET}': {len(uris)} demo releases")
    for model, queue in stack.queues.items():
        print(f"  {model}: bucket notifications -> SQS {queue} (unpause deploy_{model} to start its watcher)")
    if stack.triton_replicas:
        print(f"Triton: Deployment triton/triton, {stack.triton_replicas} replicas (pods on their own loopback IPs: "
              f"kubectl -n triton get pods -o wide), Service {env['TRITON_URL']}, serving "
              f"{env['TRITON_MODEL_REPOSITORY']}")
    else:
        print(f"Triton {env['TRITON_URL']} serving {env['TRITON_MODEL_REPOSITORY']}")
    print(f"Kubernetes API emulator: KUBECONFIG={env['KUBECONFIG']} (the admin; PVC triton/triton-model-repository "
          f"-> {env['PVC_DIR']}); Airflow uses {stack.airflow_kube} (ServiceAccount "
          "airflow/airflow-worker, with the RBAC of k8s/rbac.yaml)")
    print(f"Airflow UI and REST API {airflow.url} (login {USERNAME} / {env['AIRFLOW_PASSWORD']}); component logs in "
          f"{airflow.log_dir}")
    print(f"environment: . {ENV_FILE}")
    return 0


def down() -> int:
    if not STACK_FILE.exists():
        print("no stack is up")
        return 0
    info = json.loads(STACK_FILE.read_text())
    # Airflow first (no new pods), its database, then the emulator (it stops its pods), then Triton and S3.
    order = {"airflow-scheduler": 0, "airflow-triggerer": 1, "airflow-dag-processor": 2, "airflow-api-server": 3,
             "airflow-postgres": 4, "kube": 5, "triton": 6}
    for name in sorted(info.get("pids", {}), key=lambda n: order.get(n, 7)):
        pid = int(info["pids"][name])
        stop_group(pid, grace=10.0)  # the scheduler waits for its executor's workers
        print(f"stopped {name} (pid {pid})")
    for folder in info.get("dirs", []):
        shutil.rmtree(folder, ignore_errors=True)
    STACK_FILE.unlink()
    ENV_FILE.unlink(missing_ok=True)
    return 0


def status() -> int:
    if not STACK_FILE.exists():
        print("no stack is up")
        return 1
    info = json.loads(STACK_FILE.read_text())
    for name, pid in info.get("pids", {}).items():
        alive = Path(f"/proc/{pid}").exists()
        print(f"{name}: pid {pid} {'running' if alive else 'GONE'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start the local stack in the background")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("status", help="show the background stack")
    demo = sub.add_parser("demo", help="run the main job end to end on a private stack, then stop it")
    demo.add_argument("--keep", action="store_true", help="keep the demo's work folder afterwards")
    demo.add_argument("--no-rollback", action="store_true",
                      help="skip the second phase (a bad release that fails its smoke test and is rolled back)")
    args = parser.parse_args(argv)
    if args.cmd == "up":
        return up()
    if args.cmd == "down":
        return down()
    if args.cmd == "status":
        return status()
    from .demo import run_demo

    return run_demo(keep=args.keep, rollback=not args.no_rollback)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
