"""``python -m triton_rollout``: the commands pods and people run.

Each concern registers its own subcommands (``register(subparsers)`` in a ``cli_*`` module) so this
file stays a thin dispatcher: parse, configure logging, run, turn library errors into a one-line
message with a hint and a distinct exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import RolloutError

# Which module registers each subcommand (register(subparsers), setting func). Only the module of
# the command being run is imported: the sync pod's start-up must not pay for tritonclient or the
# kubernetes client. --help and unknown commands import them all.
COMMANDS: dict[str, str] = {
    "sync": "triton_rollout.cli_sync",
    "publish": "triton_rollout.cli_sync",
    "prune": "triton_rollout.cli_sync",
    "load": "triton_rollout.cli_triton",
    "smoke": "triton_rollout.cli_triton",
    "promote": "triton_rollout.cli_triton",
    "rollback": "triton_rollout.cli_triton",
    "deploy": "triton_rollout.cli_triton",
    "status": "triton_rollout.cli_triton",
    "reconcile": "triton_rollout.cli_triton",
    "render-manifests": "triton_rollout.cli_k8s",
    "build": "triton_rollout.cli_build",
}


def emit_result(result: dict[str, Any], result_file: str | None) -> None:
    """The machine-readable result: JSON on stdout, and in a file when asked (e.g. the KPO xcom path)."""
    text = json.dumps(result, indent=None, sort_keys=True)
    print(text, flush=True)
    if result_file:
        path = Path(result_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def _modules_for(argv: Sequence[str]) -> list[str]:
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS:
        return [COMMANDS[command]]
    return list(dict.fromkeys(COMMANDS.values()))


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m triton_rollout",
        description="Ship model releases from S3 to Triton: publish, sync, load, smoke-test, promote.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _modules_for(sys.argv[1:] if argv is None else argv):
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "urllib3", "s3transfer", "boto3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; re-running resumes from what was verified", file=sys.stderr)
        return 130
