"""``python -m devstack.kube --config FILE``: run the API emulator in the foreground (KubeEmulator does)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .transport import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.kube")
    parser.add_argument("--config", required=True, type=Path, help="JSON written by KubeEmulator.start()")
    args = parser.parse_args()
    serve(json.loads(args.config.read_text()))


if __name__ == "__main__":
    main()
