"""``python -m triton_rollout``: the commands pods and people run (``main`` dispatches, one module per concern)."""

from triton_rollout.cli.main import main

__all__ = ["main"]
