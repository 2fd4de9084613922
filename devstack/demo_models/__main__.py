"""python -m devstack.demo_models write|publish: the demo releases, for `make up` and by hand."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import LLM_MODEL, TENSOR_MODEL, VARIANTS, publish_demo_checkpoint, publish_demo_releases, write_release


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo_models")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write one release directory (<triton_model>/<file>)")
    w.add_argument("--model", choices=[LLM_MODEL, TENSOR_MODEL], required=True)
    w.add_argument("--version", type=int, required=True)
    w.add_argument("--variant", choices=VARIANTS, default="good")
    w.add_argument("--dest", type=Path, required=True)
    p = sub.add_parser("publish", help="publish versions of both demo models to S3 (AWS_* environment)")
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", default="releases")
    p.add_argument("--versions", default="1,2", help="comma-separated (default 1,2)")
    p.add_argument("--work-dir", type=Path, default=Path(".devstack/demo-releases"))
    c = sub.add_parser("publish-checkpoint", help="publish a demo-llm checkpoint release (kind checkpoint)")
    c.add_argument("--bucket", required=True)
    c.add_argument("--prefix", default="checkpoints")
    c.add_argument("--version", type=int, required=True)
    c.add_argument("--work-dir", type=Path, default=Path(".devstack/demo-releases"))
    args = parser.parse_args(argv)
    if args.cmd == "publish-checkpoint":
        print(publish_demo_checkpoint(args.bucket, args.work_dir, args.version, prefix=args.prefix))
    elif args.cmd == "write":
        print(write_release(args.model, args.dest, args.version, args.variant))
    else:
        versions = tuple(int(v) for v in args.versions.split(","))
        for uri in publish_demo_releases(args.bucket, args.work_dir, prefix=args.prefix, versions=versions):
            print(uri)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
