"""What a deploy run asks for, read once from its Airflow context and checked: a typed ``RunRequest``.

Which release a run deploys depends on how it was started (README, "Which release a run deploys"):

- backfill: the release that was current at the run's data interval end (``as_of``): a replay of the past;
- scheduled: the newest release newer than what Triton serves, waiting for one while the sensor defers;
- event (started by an S3 notification through the model's AssetWatcher): the newest release newer than
  what Triton serves, checked once: the notification says a manifest.json landed, so there is nothing to
  wait for, and an event for an old or already-served version skips the run;
- manual (UI form, REST, CLI) and triggered by another DAG: the ``version`` param, else the newest complete
  release when the task looks, so a release published after the trigger counts (the UI pre-fills the
  logical date with "now"; that date is not a bound). A manual run whose logical date was set clearly
  before the moment it was triggered asks for that past date: it resolves as of it, like a backfill.

When the model has S3 events (models[].events), its scheduled runs check once too, as a catch-up for a lost
notification, instead of holding the DAG's one active run while an event-started deploy queues behind it.

A manual run may not replace what Triton serves with an older version unless ``allow_downgrade`` says so;
backfills replay the past and are exempt. Conf keys the DAG does not declare fail the run before anything
else happens, so a typo (``versoin``) never deploys the newest release instead.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from triton_rollout.errors import ConfigError

# A run whose "as of" date is further back than this replays the past: a release cannot appear there
# any more (producers stamp created_at when they publish), so the sensor does not wait for one.
REPLAY_SLACK = timedelta(minutes=5)


class RunKind(enum.StrEnum):
    BACKFILL = "backfill"
    SCHEDULED = "scheduled"
    MANUAL = "manual"
    EVENT = "event"  # by an asset event: the S3 notification of the model's AssetWatcher
    TRIGGERED = "triggered"  # by another DAG: behaves as a manual run


@dataclass(frozen=True)
class RunRequest:
    """One deploy run's request: how it was started, which version (if any), as of which date."""

    kind: RunKind
    version: int | None
    as_of: datetime | None  # the newest release created at or before this; None: the newest there is
    only_if_new: bool
    allow_downgrade: bool
    event_driven: bool = False  # the model's deploys are started by S3 events (models[].events)

    @property
    def waits_for_new(self) -> bool:
        """Deploy only a release newer than what Triton serves (scheduled and event runs, or only_if_new)."""
        return self.version is None and (self.kind in (RunKind.SCHEDULED, RunKind.EVENT) or self.only_if_new)

    @property
    def checks_once(self) -> bool:
        """Look for the release once and skip the run when there is none, instead of waiting for one."""
        return self.kind is RunKind.EVENT or (self.kind is RunKind.SCHEDULED and self.event_driven)

    @property
    def is_replay(self) -> bool:
        """The as-of date is in the past: no release can appear there any more, so there is nothing to wait for."""
        return self.as_of is not None and self.as_of < datetime.now(UTC) - REPLAY_SLACK

    @property
    def may_downgrade(self) -> bool:
        return self.kind is RunKind.BACKFILL or self.allow_downgrade

    def describe(self) -> str:
        what = f"v{self.version}" if self.version is not None else "the newest release"
        if self.as_of is not None and self.version is None:
            what += f" as of {self.as_of.isoformat()}"
        return f"{self.kind.value} run asking for {what}"


# Airflow's DagRunType values and what they mean here; anything else (operator_triggered, ...) is TRIGGERED.
_RUN_KINDS = {"backfill": RunKind.BACKFILL, "scheduled": RunKind.SCHEDULED, "manual": RunKind.MANUAL,
              "asset_triggered": RunKind.EVENT}


def run_kind(dag_run: Any) -> RunKind:
    run_type = getattr(dag_run, "run_type", "")
    value = str(getattr(run_type, "value", run_type)).lower()  # a DagRunType, or its value
    return _RUN_KINDS.get(value, RunKind.TRIGGERED)


def triggering_message_bodies(context: Any) -> list[str]:
    """The SQS message bodies of the asset events that started this run (the AssetWatcher's trigger
    event payload, ``{"message_batch": [...]}``, is the asset event's ``extra["payload"]``)."""
    bodies: list[str] = []
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            payload = (getattr(event, "extra", None) or {}).get("payload") or {}
            bodies.extend(str(m.get("Body", "")) for m in payload.get("message_batch") or [] if isinstance(m, dict))
    return bodies


def run_request(context: Any, *, event_driven: bool = False) -> RunRequest:
    """The run's request from its context; ConfigError names an unknown conf key and the known ones."""
    dag_run = context["dag_run"]
    params = context["params"]
    # The DAG's declared params: context["params"] also holds every conf key (the Task SDK's
    # process_params merges dag_run.conf into them), typos included.
    known = set(context["dag"].params.keys())
    unknown = sorted(set(getattr(dag_run, "conf", None) or {}) - known)
    if unknown:
        raise ConfigError(f"unknown conf key(s) {', '.join(map(repr, unknown))} for {dag_run.dag_id}; "
                          f"the known ones are {', '.join(sorted(known))}",
                          hint="fix the spelling and trigger again (nothing was deployed)")
    kind = run_kind(dag_run)
    value = params.get("version")
    version = None if value in (None, "") else int(value)
    return RunRequest(kind=kind, version=version, as_of=_as_of(kind, dag_run, context),
                      only_if_new=bool(params.get("only_if_new")), allow_downgrade=bool(params.get("allow_downgrade")),
                      event_driven=event_driven)


def _as_of(kind: RunKind, dag_run: Any, context: Any) -> datetime | None:
    if kind is RunKind.BACKFILL:
        return _aware(context.get("data_interval_end") or getattr(dag_run, "logical_date", None))
    if kind is RunKind.MANUAL:
        logical, triggered = _aware(getattr(dag_run, "logical_date", None)), _aware(getattr(dag_run, "run_after", None))
        if logical is not None and triggered is not None and logical < triggered - REPLAY_SLACK:
            return logical  # a past date chosen on purpose
    return None


def _aware(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def downgrade_refusal(request: RunRequest, model: str, version: int, serving: int | None) -> str | None:
    """Why deploying ``version`` must be refused (it is older than the ``serving`` one), or None."""
    if serving is None or version >= serving or request.may_downgrade:
        return None
    return (f"refusing to replace {model} v{serving} (what Triton serves) with the older v{version}: a "
            f"{request.kind.value} run only deploys the same or a newer version. To roll back to v{version} on "
            "purpose, trigger again with allow_downgrade=true (backfills replay the past and need no flag)")
