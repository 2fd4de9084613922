"""S3 event notifications: the records S3 sends (triton_rollout.release.events) and the deploy DAG's
schedule for a model with events (an AssetWatcher on its SQS queue, or its cron)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from triton_rollout.config import ModelDeployment
from triton_rollout.release.events import parse_bodies

# The shape moto's server and S3 send for a PUT (key URL-encoded), and the test event a new
# notification configuration produces.
PUT = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-12-01T11:07:42.390Z",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "models"},
                           "object": {"key": "releases%2Fdemo-tensor%2F7%2Fmanifest.json", "size": 2}}}]}
TEST_EVENT = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-12-01T11:07:42.378Z", "Bucket": "models"}


def _put(key: str, bucket: str = "models", name: str = "ObjectCreated:Put") -> str:
    doc = json.loads(json.dumps(PUT))
    doc["Records"][0]["s3"]["object"]["key"] = key
    doc["Records"][0]["s3"]["bucket"]["name"] = bucket
    doc["Records"][0]["eventName"] = name
    return json.dumps(doc)


def test_the_versions_an_event_batch_completes() -> None:
    batch = parse_bodies([json.dumps(TEST_EVENT), json.dumps(PUT), "not json",
                          _put("releases/demo-tensor/9/manifest.json", name="ObjectCreated:CompleteMultipartUpload"),
                          _put("releases/demo-tensor/9/manifest.json"),  # multipart uploads notify twice
                          _put("releases/demo-tensor/8/model.bin"),  # not the manifest: the release is not complete
                          _put("releases/demo-llm/10/manifest.json"),  # another model
                          _put("releases/demo-tensor/11/manifest.json", bucket="elsewhere"),
                          _put("releases/demo-tensor/0/manifest.json"), _put("releases/demo-tensor/x/manifest.json")])
    assert batch.ignored == 2  # the test event and the unreadable body
    assert batch.records[0].key == "releases/demo-tensor/7/manifest.json"  # URL-decoded
    assert batch.records[0].event_time == datetime(2026, 12, 1, 11, 7, 42, 390000, tzinfo=UTC)
    assert batch.versions("models", "releases/demo-tensor") == [9, 7]
    text = batch.describe("models", "releases/demo-tensor")
    first = ("s3://models/releases/demo-tensor/7/manifest.json (ObjectCreated:Put at "
             "2026-12-01T11:07:42.390000+00:00, v7)")
    assert first in text
    assert "model.bin (ObjectCreated:Put" in text and "not a release manifest" in text and "2 other message(s)" in text


def test_a_batch_of_only_test_events_says_so() -> None:
    batch = parse_bodies([json.dumps(TEST_EVENT)])
    assert batch.records == () and batch.versions("models", "releases/demo-tensor") == []
    assert "no S3 records (1 other message(s)" in batch.describe("models", "releases/demo-tensor")


def test_keys_with_spaces_arrive_plus_encoded() -> None:
    batch = parse_bodies([_put("releases/my+model/3/manifest.json")])
    assert batch.records[0].key == "releases/my model/3/manifest.json"


def test_a_model_with_events_runs_on_its_cron_or_its_release_asset() -> None:
    from airflow.sdk import AssetOrTimeSchedule
    from triton_rollout.airflow.factory import deploy_dag

    queue = "https://sqs.eu-west-1.amazonaws.com/123456789012/releases-llm"
    model = ModelDeployment.from_dict({"name": "llm", "release_prefix": "s3://models/releases", "schedule": "@daily",
                                       "events": {"sqs_queue_url": queue, "wait_time_s": 5}})
    dag = deploy_dag(model)
    timetable = dag.timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    asset = timetable.asset_condition
    assert asset.uri == "s3://models/releases/llm" and asset.name == "s3-releases-llm"
    (watcher,) = asset.watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath.endswith("SqsSensorTrigger")
    assert kwargs["sqs_queue"] == queue and kwargs["wait_time_seconds"] == 5 and kwargs["aws_conn_id"] == "aws_default"
    assert kwargs["delete_message_on_reception"] is True
    # Backfills still have the cron to replay.
    assert timetable.timetable.expression == "0 0 * * *"

    no_cron = deploy_dag(ModelDeployment.from_dict({"name": "llm", "release_prefix": "s3://models/releases",
                                                    "schedule": None, "events": {"sqs_queue_url": queue}}))
    assert [a.uri for a in no_cron.timetable.asset_condition.objects] == ["s3://models/releases/llm"]
    polled = deploy_dag(ModelDeployment(name="llm", release_prefix="s3://models/releases"))
    assert not isinstance(polled.timetable, AssetOrTimeSchedule)


def test_events_settings_are_validated() -> None:
    import pytest
    from triton_rollout.errors import ConfigError

    base = {"name": "llm", "release_prefix": "s3://models/releases"}
    with pytest.raises(ConfigError, match=r"events.wait_time_s"):
        ModelDeployment.from_dict({**base, "events": {"sqs_queue_url": "https://sqs.x/1/q", "wait_time_s": 30}})
    with pytest.raises(ConfigError, match=r"events.sqs_queue_url"):
        ModelDeployment.from_dict({**base, "events": {"sqs_queue_url": "sqs://q"}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['queue'\]"):
        ModelDeployment.from_dict({**base, "events": {"queue": "https://sqs.x/1/q"}})
