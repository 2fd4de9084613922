"""``python -m triton_rollout``: the commands pods and people run.

Each concern registers its own subcommands (``register(subparsers)`` in a ``cli/<concern>.py`` module) so this
file stays a thin dispatcher: parse, configure logging, run, turn library errors into a one-line
message with a hint and a distinct exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from triton_rollout.errors import RolloutError

# Which module registers each subcommand (register(subparsers), setting func). Only the module of
# the command being run is imported: the sync pod's start-up must not pay for tritonclient or the
# kubernetes client. --help and unknown commands import them all.
COMMANDS: dict[str, str] = {
    "sync": "triton_rollout.cli.sync",
    "publish": "triton_rollout.cli.sync",
    "prune": "triton_rollout.cli.sync",
    "keygen": "triton_rollout.cli.sync",
    "load": "triton_rollout.cli.triton",
    "smoke": "triton_rollout.cli.triton",
    "promote": "triton_rollout.cli.triton",
    "rollback": "triton_rollout.cli.triton",
    "deploy": "triton_rollout.cli.triton",
    "status": "triton_rollout.cli.triton",
    "reconcile": "triton_rollout.cli.triton",
    "serving-gate": "triton_rollout.cli.triton",
    "render-manifests": "triton_rollout.cli.kube",
    "build": "triton_rollout.cli.build",
}



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
