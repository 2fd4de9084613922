"""What a deploy run asks for (triton_rollout.airflow.runinfo), from the Task SDK's own DagRun and the DAG's
own params: unknown conf keys, which runs resolve "as of" a date, and the downgrade rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from triton_rollout.airflow.runinfo import RunKind, downgrade_refusal, run_request
from triton_rollout.errors import ConfigError

NOW = datetime.now(UTC)


def context(run_type: str, conf: dict[str, Any] | None = None, *, logical_date: datetime | None = None,
            run_after: datetime = NOW, interval_end: datetime | None = None) -> dict[str, Any]:
    from airflow.sdk.api.datamodels._generated import DagRun, DagRunState, DagRunType
    from airflow.sdk.definitions.param import process_params
    from triton_rollout.airflow.factory import deploy_dag
    from triton_rollout.config import ModelDeployment

    dag = deploy_dag(ModelDeployment(name="demo-llm", release_prefix="s3://models/releases"))
    dag_run = DagRun(dag_id=dag.dag_id, run_id="r", logical_date=logical_date, data_interval_start=None,
                     data_interval_end=interval_end, run_after=run_after, start_date=NOW, end_date=None,
                     run_type=DagRunType(run_type), state=DagRunState.RUNNING, conf=conf or {},
                     consumed_asset_events=[], partition_key=None)
    # The params exactly as the Task SDK builds them for a task: the DAG's, with the run's conf merged in.
    params = process_params(dag, dag.get_task("resolve"), conf, suppress_exception=False)
    return {"dag": dag, "dag_run": dag_run, "params": params, "data_interval_end": interval_end}


def test_a_misspelled_conf_key_is_refused_naming_it_and_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        run_request(context("manual", {"versoin": 2}))
    message = str(info.value)
    assert "'versoin'" in message and "allow_downgrade, force, only_if_new, skip_smoke, version" in message
    assert "nothing was deployed" in message


def test_manual_runs_see_releases_published_after_the_trigger() -> None:
    # The UI pre-fills the logical date with "now": that is not an as-of bound.
    ui = run_request(context("manual", {}, logical_date=NOW, run_after=NOW, interval_end=NOW))
    assert ui.kind is RunKind.MANUAL and ui.as_of is None and not ui.waits_for_new
    rest = run_request(context("manual", {"only_if_new": True}))  # logical_date null
    assert rest.as_of is None and rest.waits_for_new


def test_a_manual_run_for_a_chosen_past_date_and_backfills_resolve_as_of_it() -> None:
    past = NOW - timedelta(days=2)
    chosen = run_request(context("manual", {}, logical_date=past, run_after=NOW, interval_end=past))
    assert chosen.as_of == past and chosen.is_replay
    backfill = run_request(context("backfill", {}, logical_date=past - timedelta(hours=1), run_after=NOW,
                                   interval_end=past))
    assert backfill.kind is RunKind.BACKFILL and backfill.as_of == past and backfill.is_replay


def test_scheduled_runs_wait_for_what_is_newer_than_what_serves() -> None:
    scheduled = run_request(context("scheduled", {}, logical_date=NOW - timedelta(hours=1), interval_end=NOW))
    assert scheduled.waits_for_new and scheduled.as_of is None and not scheduled.checks_once
    # With S3 events on, the scheduled run is only a catch-up: one look, no wait holding the DAG's one run.
    catch_up = run_request(context("scheduled", {}, logical_date=NOW, interval_end=NOW), event_driven=True)
    assert catch_up.waits_for_new and catch_up.checks_once
    assert run_request(context("operator_triggered", {})).kind is RunKind.TRIGGERED


def test_an_s3_event_run_deploys_only_what_is_newer_and_looks_once() -> None:
    event = run_request(context("asset_triggered", {}))
    assert event.kind is RunKind.EVENT and event.waits_for_new and event.checks_once and event.as_of is None
    assert not event.may_downgrade
    pinned = run_request(context("asset_triggered", {"version": 3}))
    assert pinned.version == 3 and not pinned.waits_for_new


def test_a_manual_downgrade_is_refused_unless_asked_for_and_backfills_are_exempt() -> None:
    manual = run_request(context("manual", {"version": 1}))
    refusal = downgrade_refusal(manual, "demo-llm", 1, serving=6)
    assert refusal is not None and "demo-llm v6" in refusal and "older v1" in refusal
    assert "allow_downgrade=true" in refusal
    assert downgrade_refusal(manual, "demo-llm", 6, serving=6) is None  # a re-deploy of the same version
    assert downgrade_refusal(manual, "demo-llm", 1, serving=None) is None  # nothing serves yet
    allowed = run_request(context("manual", {"version": 1, "allow_downgrade": True}))
    assert downgrade_refusal(allowed, "demo-llm", 1, serving=6) is None
    backfill = run_request(context("backfill", {}, interval_end=NOW - timedelta(days=1)))
    assert downgrade_refusal(backfill, "demo-llm", 1, serving=6) is None
