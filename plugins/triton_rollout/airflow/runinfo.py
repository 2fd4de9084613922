"""What a run asks for, read from its Airflow context: which date a release must be current at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

# A run whose "as of" date is further back than this replays the past: a release cannot appear there
# any more (producers stamp created_at when they publish), so the sensor does not wait for one.
REPLAY_SLACK = timedelta(minutes=5)


def is_scheduled(context: Any) -> bool:
    return str(getattr(context["dag_run"], "run_type", "")).lower().endswith("scheduled")


def as_of(context: Any) -> datetime | None:
    """The date the release must be current at: the data interval's end for backfills and manual runs
    (as-of resolution), None ("newest") for scheduled runs, which deploy what arrives while they wait."""
    if is_scheduled(context):
        return None
    end = context.get("data_interval_end") or getattr(context["dag_run"], "logical_date", None)
    if end is None:
        return None
    return end if end.tzinfo else end.replace(tzinfo=UTC)


def is_replay(when: datetime | None) -> bool:
    return when is not None and when < datetime.now(UTC) - REPLAY_SLACK


def param_version(context: Any) -> int | None:
    value = context["params"].get("version")
    return None if value in (None, "") else int(value)
