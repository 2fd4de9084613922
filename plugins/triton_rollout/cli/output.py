"""The machine-readable result every subcommand ends with (pods' results are read back from it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit_result(result: dict[str, Any], result_file: str | None) -> None:
    """The machine-readable result: JSON on stdout, and in a file when asked (e.g. the KPO xcom path)."""
    text = json.dumps(result, indent=None, sort_keys=True)
    print(text, flush=True)
    if result_file:
        path = Path(result_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
