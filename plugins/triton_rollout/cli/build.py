"""Subcommand ``build``: checkpoint release -> engine release (what the build pod runs)."""

from __future__ import annotations

import argparse
import shutil

from triton_rollout.cli.output import emit_result
from triton_rollout.steps import BuildRequest


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    BuildRequest.add_parser(sub).set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from triton_rollout.build.run import BuildPaths, default_workdir, run_build
    from triton_rollout.build.spec import BuildSpec

    req = BuildRequest.from_args(args)
    spec = BuildSpec.load(req.spec_file) if req.spec_file else BuildSpec.from_json(str(req.spec_json))
    result = run_build(spec, req.checkpoint, req.output, workdir=req.workdir, dry_run=req.dry_run,
                       trusted_keys=req.public_keys)
    if result is None:
        return 0
    if not req.workdir:
        # Our own scratch: gone once the release is published (a failure keeps it for the re-run).
        shutil.rmtree(BuildPaths(default_workdir(req.output)).workdir, ignore_errors=True)
    emit_result(result.to_dict(), req.result_file)
    return 0
