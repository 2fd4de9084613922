"""The records under the PVC's state/ and the results the Triton commands print: typed, and byte-for-byte the
JSON that existing PVCs and their readers (the Airflow operators, people's scripts) already have."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.pvc.records import (
    HISTORY_LIMIT,
    DeploymentState,
    FileStat,
    FleetSmokeRecord,
    HistoryEntry,
    PublishRecord,
    SmokedReplica,
)
from triton_rollout.release.manifest import parse_manifest
from triton_rollout.triton.control import ModelState
from triton_rollout.triton.promote import LoadResult, PromoteResult, RollbackResult
from triton_rollout.triton.rollout import (
    DeploymentStatus,
    DeployOutcome,
    PvcModelStatus,
    ReplicaStatus,
    StatusReport,
    TritonStatus,
)
from triton_rollout.triton.smoke import SmokeCheck, SmokeReport

# As the sync and promote/rollback wrote them before the records were typed.
PUBLISH_RECORD: dict[str, Any] = {
    "at": "2026-12-01T07:58:21Z",
    "files": {
        "ensemble/config.pbtxt": {"ino": 42, "mtime_ns": 1700000000123456789, "size": 10},
        "tensorrt_llm/rank0.engine": {"ino": 43, "mtime_ns": 1700000000999, "size": 200000},
    },
    "manifest": {
        "compat": {"compute_capability": "9.0", "dtype": "float16", "pp_size": 1, "tp_size": 2,
                   "trtllm_version": "0.17.0"},
        "created_at": "2025-01-02T03:04:05Z",
        "files": [
            {"path": "ensemble/config.pbtxt", "sha256": "a" * 64, "size": 10},
            {"part_sha256": ["c" * 64, "d" * 64, "e" * 64, "f" * 64], "part_size": 65536,
             "path": "tensorrt_llm/rank0.engine", "sha256": "b" * 64, "size": 200000},
        ],
        "kind": "engine",
        "model": "llm",
        "notes": "x",
        "schema_version": 1,
        "source": "ci",
        "version": 3,
    },
    "status": "published",
}
DEPLOYMENT: dict[str, Any] = {
    "history": [
        {"at": "2026-12-01T07:58:21Z", "by": "root@vm", "event": "promote", "previous": None, "run_id": "manual__1",
         "triton_models": ["ensemble", "tensorrt_llm"], "version": 3},
        {"at": "2026-12-01T07:58:21Z", "by": "root@vm", "candidate_failed": False, "event": "rollback",
         "from_version": 3, "reason": "bad", "run_id": "", "version": 2},
    ],
    "model": "llm",
    "previous": 3,
    "promoted": 2,
    "updated_at": "2026-12-01T07:58:21Z",
}


def _on_disk(data: Any) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def test_an_existing_publish_record_reads_typed_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    old = PvcLayout.at(tmp_path / "old")
    old.publish_record_path("llm", 3).parent.mkdir(parents=True)
    old.publish_record_path("llm", 3).write_bytes(_on_disk(PUBLISH_RECORD))
    record = old.publish_record("llm", 3)
    assert record is not None
    assert (record.model, record.version, record.status, record.at) == ("llm", 3, "published", "2026-12-01T07:58:21Z")
    assert record.triton_models == ["ensemble", "tensorrt_llm"]
    assert record.files["ensemble/config.pbtxt"] == FileStat(size=10, mtime_ns=1700000000123456789, ino=42)
    assert old.published_versions("llm") == [3]

    new = PvcLayout.at(tmp_path / "new")
    new.write_publish_record(record)
    assert new.publish_record_path("llm", 3).read_bytes() == _on_disk(PUBLISH_RECORD)
    new.remove_publish_record("llm", 3)
    assert new.publish_record("llm", 3) is None and new.published_versions("llm") == []


def test_a_new_publish_record_is_stamped_and_holds_each_files_stat(tmp_path: Path) -> None:
    layout = PvcLayout.at(tmp_path / "pvc")
    f = tmp_path / "f"
    f.write_bytes(b"0123456789")
    manifest = parse_manifest(PUBLISH_RECORD["manifest"])
    layout.write_publish_record(PublishRecord("publishing", manifest, {"ensemble/config.pbtxt": FileStat.of(f)}))
    data = json.loads(layout.publish_record_path("llm", 3).read_bytes())
    assert sorted(data) == ["at", "files", "manifest", "status"] and data["at"].endswith("Z")
    assert data["files"]["ensemble/config.pbtxt"] == {"size": 10, "mtime_ns": f.stat().st_mtime_ns,
                                                      "ino": f.stat().st_ino}
    assert data["manifest"] == PUBLISH_RECORD["manifest"]


def test_an_existing_deployment_state_reads_typed_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    old = PvcLayout.at(tmp_path / "old")
    old.deployment_path("llm").parent.mkdir(parents=True)
    old.deployment_path("llm").write_bytes(_on_disk(DEPLOYMENT))
    old.save_deployment(DeploymentState(model="other"))
    state = old.deployment("llm")
    assert (state.promoted, state.previous, state.protected) == (2, 3, {2, 3})
    assert [h.event for h in state.history] == ["promote", "rollback"]
    assert state.history[0].triton_models == ["ensemble", "tensorrt_llm"] and state.history[1].triton_models == []
    assert state.last is not None and state.last.details["from_version"] == 3
    assert old.deployed_models() == ["llm", "other"]

    new = PvcLayout.at(tmp_path / "new")
    new.save_deployment(state)
    assert new.deployment_path("llm").read_bytes() == _on_disk(DEPLOYMENT)


def test_no_records_yet(tmp_path: Path) -> None:
    layout = PvcLayout.at(tmp_path / "pvc")
    assert layout.publish_record("llm", 1) is None and layout.published_versions("llm") == []
    assert layout.deployment("llm") == DeploymentState(model="llm") and layout.deployed_models() == []


def test_history_entries_keep_each_events_keys_and_are_bounded(tmp_path: Path) -> None:
    state = DeploymentState(model="llm")
    state.record("promote", 1, run_id="r", previous=None, triton_models=["m"])
    entry = state.history[-1].to_dict()
    assert sorted(entry) == ["at", "by", "event", "previous", "run_id", "triton_models", "version"]
    assert state.updated_at == entry["at"] and HistoryEntry.from_dict(entry) == state.history[-1]
    for v in range(HISTORY_LIMIT + 5):
        state.record("rollback", v, run_id="", reason="", from_version=None, candidate_failed=False)
    assert len(state.history) == HISTORY_LIMIT and state.history[-1].version == HISTORY_LIMIT + 4


def test_command_results_keep_their_keys_and_round_trip() -> None:
    last = HistoryEntry.from_dict(DEPLOYMENT["history"][1])
    promoted = PromoteResult(model="llm", promoted=2, previous=1)
    assert promoted.to_dict() == {"model": "llm", "promoted": 2, "previous": 1}
    rolled = RollbackResult(model="llm", promoted=2, previous=3, last=last)
    assert rolled.to_dict() == {"model": "llm", "promoted": 2, "previous": 3, "last": DEPLOYMENT["history"][1]}

    load = LoadResult(model="llm", version=2, triton_models=["m", "ensemble"], entries=["ensemble"], seconds=1.5,
                      endpoints=["http://t/v2/models/ensemble/versions/2/infer"])
    smoke = SmokeReport(model="llm", version=2, checks=[SmokeCheck("ensemble", 2, "generate", "POST ...", 0.1)])
    deployed = DeployOutcome(model="llm", version=2, outcome="promoted", promoted=2, previous=1, load=load,
                             smoke=smoke)
    assert sorted(deployed.to_dict()) == ["load", "model", "outcome", "previous", "promoted", "smoke", "version"]
    assert deployed.to_dict()["smoke"]["ok"] is True
    failed = DeployOutcome(model="llm", version=3, outcome="rolled_back", promoted=2, error="smoke test failed")
    assert failed.to_dict() == {"model": "llm", "version": 3, "outcome": "rolled_back", "promoted": 2,
                                "error": "smoke test failed"}

    status = StatusReport(
        pvc_root="/pvc", pvc_models={"m": PvcModelStatus(versions=[1, 2], promoted_config_versions=[2])},
        deployments={"llm": DeploymentStatus(promoted=2, previous=3, updated_at="t", last=last),
                     "new": DeploymentStatus(promoted=None, previous=None, updated_at=None, last=None)},
        triton=TritonStatus(url="http://t", live=True, loaded=[ModelState("m", "2", "READY"),
                                                               ModelState("x", "1", "UNAVAILABLE", "boom")]),
        endpoints=["http://t/v2/models/m/versions/2/infer"])
    assert status.to_dict() == {
        "pvc": {"root": "/pvc", "models": {"m": {"versions": [1, 2], "promoted_config_versions": [2]}}},
        "deployments": {"llm": {"promoted": 2, "previous": 3, "updated_at": "t", "last": DEPLOYMENT["history"][1]},
                        "new": {"promoted": None, "previous": None, "updated_at": None, "last": None}},
        "triton": {"url": "http://t", "live": True,
                   "loaded": [{"name": "m", "version": "2", "state": "READY"},
                              {"name": "x", "version": "1", "state": "UNAVAILABLE", "reason": "boom"}]},
        "endpoints": ["http://t/v2/models/m/versions/2/infer"], "replicas": []}
    # With a fleet (--triton-service), each replica with what it serves.
    fleet = dataclasses.replace(status, replicas=[ReplicaStatus(
        pod="triton-a", in_service=False, gate=False, restarts=1,
        triton=TritonStatus(url="http://10.0.0.7:8000", live=True, loaded=[ModelState("m", "3", "READY")]))])
    assert fleet.to_dict()["replicas"] == [{"pod": "triton-a", "in_service": False, "gate": False, "restarts": 1,
                                            "triton": {"url": "http://10.0.0.7:8000", "live": True, "loaded": [
                                                {"name": "m", "version": "3", "state": "READY"}]}}]
    tested = FleetSmokeRecord(model="llm", version=3, replicas=(SmokedReplica("triton-a", "u1", 1),))
    assert FleetSmokeRecord.from_dict(json.loads(json.dumps(tested.to_dict()))) == tested

    for result in (promoted, rolled, deployed, failed, status, fleet):
        # Through JSON, as a pod log or a result file carries them.
        assert type(result).from_dict(json.loads(json.dumps(result.to_dict()))) == result
