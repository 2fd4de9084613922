"""The step contract: requests render to the args the real CLI parses back, and results read what the CLI prints."""

from __future__ import annotations

import argparse

import pytest
from triton_rollout.cli.main import build_parser
from triton_rollout.config import ModelDeployment
from triton_rollout.errors import ConfigError
from triton_rollout.release.s3 import ReleaseUri
from triton_rollout.steps import (
    ROLLOUT_STEPS,
    BuildRequest,
    DeployRequest,
    LoadRequest,
    PromoteRequest,
    ReconcileRequest,
    RollbackRequest,
    SmokeRequest,
    StatusRequest,
    StepFailure,
    StepRequest,
    SyncRequest,
    failure_summary,
    request_from_argv,
    result_from_log,
)

MODEL = ModelDeployment.from_dict({"name": "llm", "release_prefix": "s3://models/releases", "keep": 4,
                                   "serving": {"trtllm_version": "0.17.0", "compute_capability": "9.0"}})
TARGET = {"pvc": "/pvc", "triton_url": "http://triton:8000", "triton_repository": "/models", "model": "llm"}

# One request per step with values that differ from the defaults, so every flag is rendered and parsed.
EXAMPLES: list[StepRequest] = [
    SyncRequest(release=ReleaseUri.parse("s3://models/releases/llm/3"), pvc="/pvc", keep=1, concurrency=2,
                large_streams=3, write_mode="pwrite", request_mib=16, verify="full", repair=True, no_prune=True,
                lock_timeout=5.0, progress_interval=0.5, expect_trtllm_version="0.17.0",
                expect_compute_capability="9.0", result_file="/tmp/r.json"),
    BuildRequest(spec_json='{"backend": "tensorrt-llm"}', checkpoint=ReleaseUri.parse("s3://models/r/llm/2"),
                 output=ReleaseUri.parse("s3://models/r/engines/llm/2"), workdir="/scratch/w", dry_run=True),
    LoadRequest(**TARGET, triton_models=("ensemble", "tensorrt_llm"), timeout=3.0, live_deadline=4.0, version=7,
                deadline=12.5),
    SmokeRequest(**TARGET, version=7, latency_budget=0.25),
    PromoteRequest(**TARGET, version=7, run_id="manual__2026-12-01T08:00:00+00:00", no_ready_check=True),
    RollbackRequest(**TARGET, failed_version=7, reason="smoke failed", run_id="r1", deadline=30.0),
    RollbackRequest(**TARGET, to_version=5),
    DeployRequest(**TARGET, version=8, deadline=60.0, latency_budget=2.0, run_id="r2"),
    ReconcileRequest(**TARGET, release_prefix="s3://models/releases", engine_prefix="s3://models/engines",
                     full=True, no_repair=True, deadline=90.0),
    StatusRequest(pvc="/pvc", triton_url="http://triton:8000", model="llm", timeout=2.0, as_json=True),
]


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(argv).parse_args(argv)


def test_every_step_has_an_example() -> None:
    assert {type(r) for r in EXAMPLES} == set(ROLLOUT_STEPS)


@pytest.mark.parametrize("request_", EXAMPLES, ids=lambda r: r.command)
def test_rendered_args_parse_back_to_the_same_request(request_: StepRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PVC_DIR", "TRITON_URL", "TRITON_MODEL_REPOSITORY", "AIRFLOW_CTX_DAG_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    argv = request_.to_argv()
    assert argv[0] == request_.command
    assert type(request_).from_args(parse(argv)) == request_
    assert request_from_argv(argv) == request_  # what a resumed deferred task reads off its pod


def test_defaults_are_not_rendered_and_result_file_goes_last() -> None:
    req = SyncRequest(release=ReleaseUri.parse("s3://bkt/p/m/1"), pvc="/pvc", result_file="/tmp/x")
    assert req.to_argv() == ["sync", "--release", "s3://bkt/p/m/1", "--pvc", "/pvc", "--result-file", "/tmp/x"]


def test_for_model_carries_the_models_settings_into_the_pod_args() -> None:
    sync = SyncRequest.for_model(MODEL, MODEL.release(3))
    assert sync.to_argv() == ["sync", "--release", "s3://models/releases/llm/3", "--pvc", "/pvc", "--keep", "4",
                              "--expect-trtllm-version", "0.17.0", "--expect-compute-capability", "9.0"]
    load = LoadRequest.for_model(MODEL, 3)
    assert (load.version, load.deadline, load.triton_url) == (3, MODEL.smoke.ready_deadline_s, MODEL.triton_url)
    rollback = RollbackRequest.for_model(MODEL, 3, "run-9")
    assert rollback.pod_version == 3 and "--failed-version" in rollback.to_argv()
    assert "run-9" in rollback.reason


def test_env_fills_flags_at_the_shell_and_missing_ones_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVC_DIR", "/from/env")
    monkeypatch.setenv("TRITON_URL", "http://t:1")
    req = LoadRequest.from_args(parse(["load", "--model", "m", "--version", "2"]))
    assert (req.pvc, req.triton_url) == ("/from/env", "http://t:1")
    monkeypatch.delenv("TRITON_URL")
    with pytest.raises(ConfigError, match=r"--triton-url is required: pass --triton-url or set TRITON_URL"):
        LoadRequest.from_args(parse(["load", "--model", "m", "--version", "2"]))


def test_bad_values_are_refused_naming_the_flag() -> None:
    with pytest.raises(SystemExit):  # argparse: an integer flag given text
        parse(["load", "--pvc", "/p", "--triton-url", "u", "--model", "m", "--version", "two"])
    with pytest.raises(ConfigError, match="release URI"):
        SyncRequest.from_args(parse(["sync", "--release", "s3://bkt/m/notaversion", "--pvc", "/p"]))
    with pytest.raises(ConfigError, match="--concurrency"):
        SyncRequest.from_args(parse(["sync", "--release", "s3://bkt/m/1", "--pvc", "/p", "--concurrency", "0"]))
    with pytest.raises(ConfigError, match="exactly one of --spec"):
        BuildRequest.from_args(parse(["build", "--checkpoint", "s3://bkt/m/1", "--output", "s3://bkt/e/m/1"]))
    with pytest.raises(SystemExit):  # mutually exclusive flags
        parse(["rollback", "--pvc", "/p", "--triton-url", "u", "--model", "m", "--failed-version", "1",
               "--to-version", "2"])


def test_result_from_log_takes_the_last_json_object_line() -> None:
    lines = ["2026-12-01T08:00:00.1Z starting", '2026-12-01T08:00:01.2Z {"status": "published", "version": 3}',
             "{not json", "[1, 2]", "done"]
    assert result_from_log(lines) == {"status": "published", "version": 3}
    assert result_from_log(["no result here"]) is None


def test_results_read_what_the_library_prints() -> None:
    from triton_rollout.release.progress import TransferCounters
    from triton_rollout.release.sync import SyncResult
    from triton_rollout.triton.reconcile import ReconcileReport

    counters = {name: 0 for name in TransferCounters.__dataclass_fields__}
    printed = SyncResult(**{**counters, "files_transferred": 2, "bytes_transferred": 2048}, release="s3://bkt/p/llm/3",
                         model="llm", version=3, status="published", triton_models=["llm"],
                         published_paths=["repository/llm/3"], files_total=5, bytes_total=4096).to_dict()
    sync = EXAMPLES[0].read_result(printed)
    assert (sync.version, sync.bytes, sync.outcome) == (3, 2048, "published, 2 of 5 files transferred")
    line = sync.summary(model="llm", version=3, seconds=1.5, endpoint="http://triton:8000")
    assert line == ("SUMMARY sync llm v3: published, 2 of 5 files transferred; bytes=2048; seconds=1.50; "
                    "endpoint=http://triton:8000")
    report = ReconcileReport(model="llm", promoted=4, verify="stat", pvc_problems=["llm/4/a: size"], repaired=True,
                             bytes_transferred=10, endpoints=["http://t/v2/models/llm/versions/4/infer"]).to_dict()
    rec = ReconcileRequest(**TARGET, release_prefix="s3://models/r").read_result(report)
    assert (rec.version, rec.outcome, rec.bytes, rec.endpoints[0]) == (4, "drift repaired", 10,
                                                                        "http://t/v2/models/llm/versions/4/infer")
    promote = EXAMPLES[4].read_result({"model": "llm", "promoted": 7, "previous": 6})
    assert promote.outcome == "promoted (previous v6)" and promote.version == 7


def test_failure_summary_quotes_the_clis_error_line_and_its_hint() -> None:
    tail = ["loading...", "2026-12-01T09:00:00.1Z error: config.pbtxt of 'llm' v3 is invalid",
            "2026-12-01T09:00:00.1Z   what to do: fix the release and publish it again", "{not json"]
    failure = StepFailure.from_log(tail)
    assert failure == StepFailure("config.pbtxt of 'llm' v3 is invalid", "fix the release and publish it again")
    line = failure_summary("load", "llm", 3, failure, seconds=0.5, endpoint="http://t")
    assert line.startswith("SUMMARY load llm v3: FAILED: config.pbtxt of 'llm' v3 is invalid;")
    assert StepFailure.from_log(["error: no hint here"]) == StepFailure("no hint here")
    assert StepFailure.from_log(["all fine"]) is None
    assert "FAILED: see the pod log above" in failure_summary("load", "llm", 3, None, seconds=0, endpoint="x")
