"""The main job on the local stack: publish a release to S3, sync it into the PVC, show the result.

Every step runs the real thing a pod or a producer would run (``python -m triton_rollout ...`` against
a real S3 server); the demo only wires them together, prints what happened and exits non-zero on
the first failure. Whatever it started is stopped before it returns.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .s3 import SeaweedS3

REPO = Path(__file__).resolve().parent.parent


class DemoFailed(Exception):
    pass


def _cli(args: list[str], env: dict[str, str], what: str) -> dict[str, Any]:
    print(f"\n$ python -m triton_rollout {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "triton_rollout", *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=None)
    if proc.returncode != 0:
        raise DemoFailed(f"{what} failed with exit code {proc.returncode} (its log is above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _make_release(root: Path, version: int) -> Path:
    """A small engine-shaped release: one Triton model dir with a config and a few 'engine' files."""
    model = root / "demo_engine"
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text(f'name: "demo_engine"\nbackend: "python"\n# demo release v{version}\n')
    (model / "rank0.engine").write_bytes(os.urandom(24 * 1024 * 1024))
    for i in range(20):
        (model / "tokenizer").mkdir(exist_ok=True)
        (model / "tokenizer" / f"vocab{i:02d}.json").write_text(json.dumps({"piece": i, "v": version}))
    return root


def run_demo(*, keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="demo-", dir=_work_root()))
    s3 = SeaweedS3(work / "s3", buckets=("models",))
    started = time.monotonic()
    try:
        s3.start()
        env = {**os.environ, **s3.env(), "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}
        print(f"local S3 (SeaweedFS) at {s3.endpoint}; work folder {work}")
        pvc = work / "pvc"
        release = "s3://models/demo/demo_engine/1"
        src = _make_release(work / "release-src", 1)
        _cli(["publish", "--src", str(src), "--release", release, "--source", "make demo"], env, "publish")
        first = _cli(["sync", "--release", release, "--pvc", str(pvc), "--progress-interval", "1"], env, "sync")
        again = _cli(["sync", "--release", release, "--pvc", str(pvc)], env, "re-sync")
        if again["bytes_transferred"] != 0 or again["status"] != "unchanged":
            raise DemoFailed(f"the re-sync of an intact version transferred data: {again}")
        print("\n== demo result ==")
        print(f"published {first['model']} v{first['version']}: {first['files_transferred']} files, "
              f"{first['bytes_transferred']} bytes in {first['seconds']}s, verified against manifest.json")
        for path in first["published_paths"]:
            print(f"  Triton model repository version: {path}")
        print(f"re-sync: {again['status']}, {again['bytes_transferred']} bytes transferred in {again['seconds']}s")
        print(f"total {time.monotonic() - started:.1f}s")
        return 0
    except DemoFailed as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        s3.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _work_root() -> Path:
    root = REPO / ".devstack"
    root.mkdir(exist_ok=True)
    return root
