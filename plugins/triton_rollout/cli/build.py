"""Subcommand ``build``: checkpoint release -> engine release (what the build pod runs)."""

from __future__ import annotations

import argparse
import shutil

from triton_rollout.cli.output import emit_result


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "build",
        help="build an engine release from a checkpoint release (TensorRT-LLM, or the CPU demo builder)",
        description=(
            "Download the checkpoint release (verified), probe the TensorRT-LLM version and GPU compute "
            "capability, run the conversion and trtllm-build steps (output streamed to the log), lay out the "
            "Triton ensemble (<triton_model>/...) and publish it as an engine release with its compatibility "
            "facts, manifest.json last. A failed step exits with that step's exit code. S3 comes from the "
            "standard AWS environment (AWS_ENDPOINT_URL, credentials or the pod's service account)."
        ),
    )
    spec = p.add_mutually_exclusive_group(required=True)
    spec.add_argument("--spec", help="build spec file (JSON, or YAML with PyYAML)")
    spec.add_argument("--spec-json", help="build spec as a JSON object")
    p.add_argument("--checkpoint", required=True, help="s3://BUCKET/[PREFIX/]MODEL/VERSION (a kind=checkpoint release)")
    p.add_argument("--output", required=True,
                   help="s3://BUCKET/[PREFIX/]engines/MODEL/VERSION: where the engine release is published")
    p.add_argument("--workdir", help="scratch directory (default $SCRATCH_DIR or the temp dir); kept after a "
                                     "failure so a re-run reuses the verified checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="print the exact commands and files the build would run and write; touch nothing")
    p.add_argument("--result-file", help="also write the JSON result here (e.g. /airflow/xcom/return.json)")
    p.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from triton_rollout.build.run import BuildPaths, default_workdir, resolve_releases, run_build
    from triton_rollout.build.spec import BuildSpec

    spec = BuildSpec.load(args.spec) if args.spec else BuildSpec.from_json(args.spec_json)
    result = run_build(spec, args.checkpoint, args.output, workdir=args.workdir, dry_run=args.dry_run)
    if result is None:
        return 0
    if not args.workdir:
        # Our own scratch: gone once the release is published (a failure keeps it for the re-run).
        _, output = resolve_releases(args.checkpoint, args.output)
        shutil.rmtree(BuildPaths(default_workdir(output)).workdir, ignore_errors=True)
    emit_result(result.to_dict(), args.result_file)
    return 0
