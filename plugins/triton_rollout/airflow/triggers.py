"""The trigger behind the release sensor: polls S3 (and nothing else) from the triggerer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class ReleaseTrigger(BaseTrigger):
    """Fires ``{"status": "found", "release": {...}}`` once a matching complete release exists in S3,
    or ``{"status": "timeout"}`` at ``deadline``. S3 is read with the library's blocking client in a
    thread, so the triggerer's event loop is never blocked (S3 from the ``aws_conn_id`` connection,
    the AWS environment where it has nothing)."""

    def __init__(self, *, model: str, release_prefix: str, engine_prefix: str | None, version: int | None,
                 newer_than: int | None, as_of: str | None, poke_interval: float, deadline: str,
                 aws_conn_id: str | None = "aws_default") -> None:
        super().__init__()
        self.model = model
        self.aws_conn_id = aws_conn_id
        self.release_prefix = release_prefix
        self.engine_prefix = engine_prefix
        self.version = version
        self.newer_than = newer_than
        self.as_of = as_of
        self.poke_interval = poke_interval
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "model": self.model, "release_prefix": self.release_prefix, "engine_prefix": self.engine_prefix,
            "version": self.version, "newer_than": self.newer_than, "as_of": self.as_of,
            "poke_interval": self.poke_interval, "deadline": self.deadline, "aws_conn_id": self.aws_conn_id,
        })

    def _find(self) -> dict[str, Any] | None:
        from triton_rollout.config import BuildSettings, ModelDeployment
        from triton_rollout.release.resolve import find_release

        from .connections import s3_from_connection

        model = ModelDeployment(name=self.model, release_prefix=self.release_prefix,
                                build=BuildSettings(engine_prefix=self.engine_prefix), aws_conn_id=self.aws_conn_id)
        # Looked up on every poll, not once: a changed connection or refreshed role keys take effect, and
        # the signing keys never outlive their session during a long wait (polls are seconds to minutes apart).
        s3 = s3_from_connection(model.aws_conn_id)
        found = find_release(model, version=self.version, newer_than=self.newer_than, client=s3.client,
                             access=s3.access, as_of=datetime.fromisoformat(self.as_of) if self.as_of else None)
        return found.to_dict() if found else None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline)
        while True:
            found = await asyncio.to_thread(self._find)
            if found is not None:
                yield TriggerEvent({"status": "found", "release": found})
                return
            if datetime.now(UTC) >= deadline:
                yield TriggerEvent({"status": "timeout"})
                return
            await asyncio.sleep(self.poke_interval)
