"""When a deploy DAG runs: its cron schedule, and for a model with S3 events, also on every notification.

An event-started model's DAG is scheduled on ``AssetOrTimeSchedule``: the model's release asset, which an
``AssetWatcher`` updates from the SQS queue its bucket notifies (``MessageQueueTrigger(scheme="sqs")`` of
the common-messaging provider, the only kind of trigger a watcher takes; S3KeyTrigger is refused), or the
cron schedule, which backfills need and which catches up on a lost notification. The watcher runs in the
triggerer, long-polls SQS and deletes what it reads, so each model has its own queue.
"""

from __future__ import annotations

from typing import Any

from triton_rollout.config import ModelDeployment

# Seconds between two SQS long polls (each waits up to events.wait_time_s for a message to arrive): a
# message that lands in the gap is read by the next poll, so this bounds the extra latency.
WATCHER_PAUSE_S = 1
# Messages per receive (SQS allows up to 10); one asset event carries the whole batch.
WATCHER_BATCH = 10


def release_asset_uri(model: ModelDeployment) -> str:
    bucket, model_key = model.releases_location()
    return f"s3://{bucket}/{model_key}/"


def release_events_asset(model: ModelDeployment) -> Any:
    """The asset a new release of ``model`` updates (through its S3 notifications), with its watcher."""
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
    from airflow.sdk import Asset, AssetWatcher

    events = model.events
    trigger = MessageQueueTrigger(
        scheme="sqs", sqs_queue=events.sqs_queue_url, aws_conn_id=events.aws_conn_id or model.aws_conn_id,
        wait_time_seconds=events.wait_time_s, waiter_delay=WATCHER_PAUSE_S, max_messages=WATCHER_BATCH,
    )
    return Asset(name=f"s3-releases-{model.name}", uri=release_asset_uri(model), group="triton-releases",
                 watchers=[AssetWatcher(name=f"s3-events-{model.name}", trigger=trigger)])


def deploy_schedule(model: ModelDeployment) -> Any:
    """The deploy DAG's ``schedule``: the cron (or preset) alone, or with the model's release asset."""
    if not model.events.enabled:
        return model.schedule
    asset = release_events_asset(model)
    if model.schedule is None:
        return [asset]
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(model.schedule, timezone="UTC"), assets=asset)
