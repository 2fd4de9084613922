"""The deploy DAG's first task: wait (deferred) for a complete release of the model in S3."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, AirflowSkipException

from triton_rollout.config import ModelDeployment

from .runinfo import RunKind, RunRequest, run_request, triggering_message_bodies
from .triggers import ReleaseTrigger


class ReleaseSensor(BaseSensorOperator):
    """Succeeds once the release this run should deploy is complete (its manifest.json exists).

    - ``version`` param set: that version.
    - scheduled run (or ``only_if_new``): a release newer than what Triton serves now.
    - backfill (or a manual run for a past date): the release current as of that date; no waiting.
    - S3-event run (and a scheduled run of a model with events): newer than what Triton serves, checked
      once; nothing newer skips the run (the events that started it are logged).
    - otherwise: the newest complete release (runinfo says why a manual run ignores its logical date).
    First checks the run's conf (an unknown key fails the run, naming it); checks S3 once on the worker,
    then defers to ``ReleaseTrigger`` (no worker slot held while waiting). When nothing arrives within
    ``timeout`` the task is skipped (``soft_fail``) and so is the rest of the run: "nothing new" is not
    a failure.
    """

    ui_color = "#fff2cc"

    def __init__(self, *, model: ModelDeployment, deferrable: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("soft_fail", True)
        super().__init__(**kwargs)
        self.model = model
        self.deferrable = deferrable

    def _request(self, context: Any) -> RunRequest:
        from triton_rollout.errors import ConfigError

        try:
            request = run_request(context, event_driven=self.model.events.enabled)
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from None  # a retry cannot fix a typo in the conf
        self.log.info("%s", request.describe())
        if request.kind is RunKind.EVENT:
            from triton_rollout.release.events import parse_bodies

            bucket, model_key = self.model.releases_location()
            batch = parse_bodies(triggering_message_bodies(context))
            self.log.info("started by S3 event(s): %s", batch.describe(bucket, model_key))
        return request

    def _criteria(self, request: RunRequest) -> dict[str, Any]:
        from triton_rollout.release.resolve import serving_version

        newer_than = None
        if request.waits_for_new:
            newest = self._find_release()
            newer_than = serving_version(self.model.triton_url, newest.triton_models) if newest else None
            self.log.info("waiting for a release newer than v%s (what Triton at %s serves)", newer_than,
                          self.model.triton_url)
        return {"version": request.version, "as_of": request.as_of, "newer_than": newer_than}

    @functools.cached_property
    def _s3(self) -> Any:
        """The aws_conn_id connection, resolved once per try (a wait for "newer" looks up S3 twice)."""
        from .connections import s3_from_connection

        return s3_from_connection(self.model.aws_conn_id)

    def _find_release(self, **criteria: Any) -> Any:
        from triton_rollout.release.resolve import find_release

        return find_release(self.model, client=self._s3.client, access=self._s3.access, **criteria)

    def _find(self, criteria: dict[str, Any]) -> dict[str, Any] | None:
        found = self._find_release(**criteria)
        return found.to_dict() if found else None

    def poke(self, context: Any) -> bool:
        return self._find(self._criteria(self._request(context))) is not None

    def _wanted(self, criteria: dict[str, Any]) -> str:
        what = f"v{criteria['version']}" if criteria["version"] else "a release"
        if criteria["newer_than"] is not None:
            what += f" newer than v{criteria['newer_than']}"
        if criteria["as_of"] is not None:
            what += f" created at or before {criteria['as_of'].isoformat()}"
        return f"{what} of {self.model.name} under {self.model.release_prefix}/{self.model.name}/"

    def _nothing(self, message: str) -> None:
        if self.soft_fail:
            message += ": nothing to deploy, the run is skipped"
            self.log.info("%s", message)  # the Task SDK logs only "Skipping task." for a skip
            raise AirflowSkipException(message)
        raise AirflowSensorTimeout(message)

    def execute(self, context: Any) -> Any:
        from .connections import runtime_model

        request = self._request(context)  # the conf is checked before anything else, in both modes
        self.model = runtime_model(self.model)
        if not self.deferrable and not request.checks_once:
            return super().execute(context)
        criteria = self._criteria(request)
        found = self._find(criteria)
        if found is not None:
            self.log.info("found %s v%s (%s, created %s)", found["model"], found["version"], found["kind"],
                          found["created_at"])
            return found
        if request.checks_once:
            why = ("an S3 event run" if request.kind is RunKind.EVENT else
                   "S3 events start this model's deploys; a scheduled run only catches up on a lost one")
            self._nothing(f"{why}; looked once for {self._wanted(criteria)} and found none")
        if request.version is None and request.is_replay:
            self._nothing(f"no complete release was current at {criteria['as_of'].isoformat()}: "
                          f"looked for {self._wanted(criteria)}")
        timeout = float(self.timeout)
        deadline = datetime.now(UTC) + timedelta(seconds=timeout)
        self.log.info("waiting up to %.0fs for %s", timeout, self._wanted(criteria))
        self.defer(
            trigger=ReleaseTrigger(
                model=self.model.name, release_prefix=self.model.release_prefix,
                engine_prefix=self.model.build.engine_prefix, aws_conn_id=self.model.aws_conn_id,
                version=criteria["version"],
                newer_than=criteria["newer_than"],
                as_of=criteria["as_of"].isoformat() if criteria["as_of"] else None,
                poke_interval=float(self.poke_interval), deadline=deadline.isoformat(),
            ),
            method_name="execute_complete",
            # The trigger fires its own timeout event; this only guards a trigger that never answers.
            timeout=timedelta(seconds=timeout + 300),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        if not event or event.get("status") != "found":
            self._nothing(f"no matching release within {float(self.timeout):.0f}s")
        release = event["release"]  # type: ignore[index]
        self.log.info("found %s v%s (%s, created %s)", release["model"], release["version"], release["kind"],
                      release["created_at"])
        return release
