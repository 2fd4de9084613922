"""``python -m devstack {up,down,status,demo}``: the local real stack for the demo, tests and benchmarks.

``up`` starts the servers in the background (each in its own process group) and writes
``.devstack/env`` (shell exports: AWS_ENDPOINT_URL, credentials, TRITON_URL, KUBECONFIG, PVC_DIR) and
``.devstack/stack.json`` (pids). ``down`` stops every process group listed there. ``demo`` runs the
main job end to end on a stack of its own and stops everything it started, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .procs import stop_group
from .s3 import SeaweedS3

REPO = Path(__file__).resolve().parent.parent
STATE_DIR = REPO / ".devstack"
STACK_FILE = STATE_DIR / "stack.json"
ENV_FILE = STATE_DIR / "env"
DEMO_BUCKET = "models"


def _write_env(values: dict[str, str]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(values.items())]
    ENV_FILE.write_text("# written by `make up`; source it: . .devstack/env\n" + "\n".join(lines) + "\n")


def up() -> int:
    if STACK_FILE.exists():
        print(f"a stack is already up (see {ENV_FILE}); run `make down` first", file=sys.stderr)
        return 1
    s3 = SeaweedS3(STATE_DIR / "s3", buckets=(DEMO_BUCKET,)).start()
    pvc = STATE_DIR / "pvc"
    pvc.mkdir(parents=True, exist_ok=True)
    env = {**s3.env(), "PVC_DIR": str(pvc), "ROLLOUT_BUCKET": DEMO_BUCKET}
    STACK_FILE.write_text(json.dumps({"pids": {"s3": s3.pid}, "env": env}, indent=1))
    _write_env(env)
    print(f"S3 (SeaweedFS) at {s3.endpoint}, bucket '{DEMO_BUCKET}'; PVC folder {pvc}")
    print(f"environment: . {ENV_FILE}")
    return 0


def down() -> int:
    if not STACK_FILE.exists():
        print("no stack is up")
        return 0
    info = json.loads(STACK_FILE.read_text())
    for name, pid in info.get("pids", {}).items():
        stop_group(int(pid))
        print(f"stopped {name} (pid {pid})")
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
    args = parser.parse_args(argv)
    if args.cmd == "up":
        return up()
    if args.cmd == "down":
        return down()
    if args.cmd == "status":
        return status()
    from .demo import run_demo

    return run_demo(keep=args.keep)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
