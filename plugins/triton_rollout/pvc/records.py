"""Deployment state on the PVC: which version of a model is promoted, which is the rollback target.

One JSON document per release model under ``state/deployments/``, replaced atomically. Retention
reads it so it never prunes the promoted version or the rollback target; promote and rollback write it.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from triton_rollout.pvc.layout import PvcLayout, atomic_write_json, read_json

HISTORY_LIMIT = 50


@dataclass
class DeploymentState:
    model: str
    promoted: int | None = None
    previous: int | None = None
    updated_at: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def protected(self) -> set[int]:
        """Versions retention must keep: the one serving and the one a rollback returns to."""
        return {v for v in (self.promoted, self.previous) if v is not None}

    def record(self, event: str, version: int | None, **details: Any) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.updated_at = now
        entry = {"event": event, "version": version, "at": now, "by": _actor(), **details}
        self.history.append(entry)
        del self.history[:-HISTORY_LIMIT]


def _actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def state_path(layout: PvcLayout, model: str) -> Any:
    return layout.state / "deployments" / f"{model}.json"


def load_state(layout: PvcLayout, model: str) -> DeploymentState:
    data = read_json(state_path(layout, model))
    if not data:
        return DeploymentState(model=model)
    return DeploymentState(
        model=data.get("model", model),
        promoted=data.get("promoted"),
        previous=data.get("previous"),
        updated_at=data.get("updated_at"),
        history=list(data.get("history", [])),
    )


def save_state(layout: PvcLayout, state: DeploymentState) -> None:
    atomic_write_json(state_path(layout, state.model), asdict(state))
