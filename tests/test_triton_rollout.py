"""The whole path on real servers: demo releases published to S3, synced to the PVC, loaded into a real
tritonserver, smoke-tested, promoted, and rolled back, with a client loop measuring failed requests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from triton_rollout import cli
from triton_rollout.errors import SmokeTestFailed, TritonError
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.triton.config import ModelConfigError, pinned_versions, read_config
from triton_rollout.triton.control import TritonControl
from triton_rollout.triton.promote import Release, load_candidate, prepare_release, promote, rollback
from triton_rollout.triton.smoke import smoke_release

from devstack import demo_models
from devstack.triton import TritonServer
from tests.helpers import ClientLoop, golden, llm_request, post, tensor_version_by_hand


def put_on_pvc(model: str, version: int, bucket: str, pvc: Path, work: Path, variant: str = "good") -> None:
    """The S3 -> PVC step: write the demo release, publish it to S3 (manifest last), sync it to the PVC."""
    from triton_rollout.release.publish import publish_release
    from triton_rollout.release.sync import sync_release

    src = demo_models.write_release(model, work / f"src-{model}-{version}", version, variant)
    uri = f"s3://{bucket}/releases/{model}/{version}"
    publish_release(src, uri)
    sync_release(uri, pvc, prune=False)


def deploy(control: TritonControl, layout: PvcLayout, model: str, version: int, run_id: str = "test") -> Release:
    release = prepare_release(layout, model, version)
    load_candidate(control, layout, release, deadline_s=60)
    smoke_release(control, layout, model, version, release.entries)
    promote(layout, release, run_id=run_id, control=control)
    return release


def tensor_request(server: TritonServer) -> dict[str, Any]:
    return post(f"{server.http_url}/v2/models/demo_tensor/infer",
                {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})


@pytest.mark.slow
def test_tensor_release_v1_v2_swap_v3_load_failure_v4_smoke_failure(
    s3_server: Any, bucket: str, pvc: Path, tmp_path: Path, triton: TritonServer
) -> None:
    layout = PvcLayout.at(pvc)
    for v, variant in ((1, "good"), (2, "good"), (3, "init_error"), (4, "wrong")):
        put_on_pvc(demo_models.TENSOR_MODEL, v, bucket, pvc, tmp_path, variant)
    control = TritonControl(triton.url, timeout=10)
    try:
        deploy(control, layout, demo_models.TENSOR_MODEL, 1)
        assert control.ready_versions("demo_tensor") == [1]

        # v2 while a client keeps calling the unversioned endpoint: no request may fail.
        with ClientLoop(lambda: tensor_request(triton)) as loop:
            time.sleep(0.3)
            deploy(control, layout, demo_models.TENSOR_MODEL, 2)
            time.sleep(0.3)
        print(f"\ntensor swap v1->v2: {loop.ok} requests answered, {len(loop.failed)} failed")
        assert loop.failed == [] and loop.ok > 20, (loop.ok, loop.failed[:3])
        served = {a["model_version"] for a in loop.answers}
        assert served == {"1", "2"}  # the swap happened during the loop, and nothing in between failed
        state = layout.deployment(demo_models.TENSOR_MODEL)
        assert (state.promoted, state.previous) == (2, 1)
        assert state.history[-1].event == "promote" and state.history[-1].details["run_id"] == "test"
        assert pinned_versions(read_config(layout.model_dir("demo_tensor") / "config.pbtxt")) == [2]

        # v3 raises in initialize: the load fails, v2 keeps serving throughout, state/ is untouched.
        before = layout.deployment(demo_models.TENSOR_MODEL)
        config_before = (layout.model_dir("demo_tensor") / "config.pbtxt").read_bytes()
        with ClientLoop(lambda: tensor_request(triton)) as loop, pytest.raises(
            TritonError, match=r"demo-tensor v3 failed to load: .*'demo_tensor__candidate'.*version 3"
        ):
            load_candidate(control, layout, prepare_release(layout, demo_models.TENSOR_MODEL, 3), deadline_s=30)
        assert loop.failed == [] and {a["model_version"] for a in loop.answers} == {"2"}
        assert control.is_version_ready("demo_tensor", 2) and not control.is_version_ready("demo_tensor", 3)
        assert not layout.model_dir("demo_tensor__candidate").exists()  # the shadow is discarded
        assert layout.deployment(demo_models.TENSOR_MODEL) == before
        assert (layout.model_dir("demo_tensor") / "config.pbtxt").read_bytes() == config_before

        # v4 loads but answers wrongly: the golden case fails, and the rollback brings v2 back.
        # Loaded as a shadow, it never answers a client: only the smoke test reaches it.
        release4 = prepare_release(layout, demo_models.TENSOR_MODEL, 4)
        with ClientLoop(lambda: tensor_request(triton)) as loop:
            load_candidate(control, layout, release4, deadline_s=30)
            with pytest.raises(SmokeTestFailed, match=r"model 'demo_tensor__candidate' version 4 failed: request "
                               r"infer /v2/models/demo_tensor__candidate/versions/4/infer .*differs from the golden"):
                smoke_release(control, layout, demo_models.TENSOR_MODEL, 4, release4.entries)
            rollback(control, layout, demo_models.TENSOR_MODEL, failed_version=4, reason="smoke failed")
        print(f"v4 shadow candidate, smoke failure, rollback: {loop.ok} answered, {len(loop.failed)} failed")
        assert loop.failed == [] and loop.ok > 20 and {a["model_version"] for a in loop.answers} == {"2"}
        assert len({json.dumps(a["outputs"]) for a in loop.answers}) == 1  # v2's answer, every time
        assert control.ready_versions("demo_tensor") == [2]
        assert control.ready_versions("demo_tensor__candidate") == []
        assert not layout.model_dir("demo_tensor__candidate").exists()
        assert tensor_request(triton)["model_version"] == "2"
        state = layout.deployment(demo_models.TENSOR_MODEL)
        assert (state.promoted, state.previous) == (2, 1)
        last = state.history[-1]
        assert (last.event, last.version, last.details["from_version"], last.details["candidate_failed"]) == (
            "rollback", 2, 4, True)
        assert pinned_versions(read_config(layout.model_dir("demo_tensor") / "config.pbtxt")) == [2]

        # An operator rollback of the promoted version goes to the previous one and becomes promoted.
        rollback(control, layout, demo_models.TENSOR_MODEL, reason="operator")
        assert control.ready_versions("demo_tensor") == [1]
        state = layout.deployment(demo_models.TENSOR_MODEL)
        assert (state.promoted, state.previous) == (1, 2)
    finally:
        control.close()


@pytest.mark.slow
def test_llm_bundle_ensemble_swap_and_failures(
    s3_server: Any, bucket: str, pvc: Path, tmp_path: Path, triton: TritonServer
) -> None:
    layout = PvcLayout.at(pvc)
    for v, variant in ((1, "good"), (2, "good"), (3, "init_error"), (4, "wrong")):
        put_on_pvc(demo_models.LLM_MODEL, v, bucket, pvc, tmp_path, variant)
    assert golden(1) != golden(2)
    control = TritonControl(triton.url, timeout=10)
    try:
        release = deploy(control, layout, demo_models.LLM_MODEL, 1)
        assert release.order[-1] == "ensemble" and release.entries == ["ensemble"]
        assert llm_request(triton)["text_output"] == golden(1)

        with ClientLoop(lambda: llm_request(triton)) as loop:
            deploy(control, layout, demo_models.LLM_MODEL, 2)
            time.sleep(0.2)
        print(f"\nLLM swap v1->v2: {loop.ok} requests answered, {len(loop.failed)} failed")
        assert loop.failed == [], loop.failed[:3]
        # Only whole-engine answers: v1's or v2's text (the vocabularies are equal, the engines differ).
        assert {a["text_output"] for a in loop.answers} <= {golden(1), golden(2)}
        # Every answer's model_version is the version that produced it (in place, the v1 ensemble answered
        # through v2's members under its own label while they swapped).
        mislabelled = [a for a in loop.answers if a["text_output"] != golden(int(a["model_version"]))]
        print(f"LLM swap v1->v2: {len(mislabelled)} answers labelled with another version than their text's")
        assert mislabelled == [] and {a["model_version"] for a in loop.answers} == {"1", "2"}
        after = llm_request(triton)
        assert (after["model_version"], after["text_output"]) == ("2", golden(2))
        for name in demo_models.LLM_TRITON_MODELS:
            assert control.ready_versions(name) == [2]
            assert pinned_versions(read_config(layout.model_dir(name) / "config.pbtxt")) == [2]
        engine = read_config(layout.model_dir("tensorrt_llm") / "config.pbtxt").parameters["gpt_model_path"]
        assert engine.string_value == str(layout.version_dir("tensorrt_llm", 2))

        # v3's engine fails in initialize after preprocessing v3 loaded: everything goes back to v2.
        state_before = layout.deployment(demo_models.LLM_MODEL)
        with ClientLoop(lambda: llm_request(triton)) as loop, pytest.raises(
            TritonError, match=r"demo-llm v3 failed to load: .*'tensorrt_llm__candidate'"
        ):
            load_candidate(control, layout, prepare_release(layout, demo_models.LLM_MODEL, 3), deadline_s=30)
        print(f"LLM failed v3 load and restore: {loop.ok} requests answered, {len(loop.failed)} failed")
        assert loop.failed == [] and {a["text_output"] for a in loop.answers} == {golden(2)}
        for name in demo_models.LLM_TRITON_MODELS:
            assert control.ready_versions(name) == [2], name
            assert pinned_versions(read_config(layout.model_dir(name) / "config.pbtxt")) == [2], name
        assert llm_request(triton)["text_output"] == golden(2)
        assert layout.deployment(demo_models.LLM_MODEL) == state_before

        # v4 answers wrongly: smoke fails with the request and both texts; clients only ever get v2.
        release4 = prepare_release(layout, demo_models.LLM_MODEL, 4)
        with ClientLoop(lambda: llm_request(triton)) as loop:
            load_candidate(control, layout, release4, deadline_s=30)
            with pytest.raises(SmokeTestFailed) as info:
                smoke_release(control, layout, demo_models.LLM_MODEL, 4, release4.entries)
            rollback(control, layout, demo_models.LLM_MODEL, failed_version=4, reason=str(info.value))
        text = str(info.value)
        assert "model 'ensemble__candidate' version 4" in text
        assert "/v2/models/ensemble__candidate/versions/4/generate" in text
        assert f"differs from the golden {golden(2)!r}" in text
        print(f"LLM v4 shadow candidate, smoke failure, rollback: {loop.ok} answered, {len(loop.failed)} failed")
        assert loop.failed == [] and loop.ok > 20
        assert {(a["model_version"], a["text_output"]) for a in loop.answers} == {("2", golden(2))}
        assert not any(layout.model_dir(f"{n}__candidate").exists() for n in demo_models.LLM_TRITON_MODELS)
        assert llm_request(triton)["text_output"] == golden(2)
        for name in demo_models.LLM_TRITON_MODELS:
            assert control.ready_versions(name) == [2]
        assert layout.deployment(demo_models.LLM_MODEL).promoted == 2
    finally:
        control.close()
    # A restarted Triton that loads everything from disk comes back on the promoted version.
    triton.stop()
    again = TritonServer(layout.repository, tmp_path / "restart-log", install_dir=triton.install_dir,
                         extra_args=["--load-model=*"]).start()
    try:
        with TritonControl(again.url, timeout=10) as control:
            control.wait_ready("ensemble", 2, 60)
            for name in demo_models.LLM_TRITON_MODELS:
                assert control.ready_versions(name) == [2], name
        assert llm_request(again)["text_output"] == golden(2)
    finally:
        again.stop()


def test_syntax_error_fails_before_any_load(pvc: Path, tmp_path: Path, triton: TritonServer) -> None:
    layout = PvcLayout.at(pvc)
    src = demo_models.write_tensor_release(tmp_path / "src", 1)
    dest = layout.version_dir("demo_tensor", 1)
    dest.mkdir(parents=True)
    for f in (src / "demo_tensor").iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    (dest / "config.pbtxt").write_text((dest / "config.pbtxt").read_text().replace("dims: [ 4 ] }", "dims: [ 4 ]"))
    with pytest.raises(ModelConfigError, match=r"demo_tensor/1/config.pbtxt: not a valid Triton model config: \d+:\d+"):
        prepare_release(layout, "demo_tensor", 1, triton_models=["demo_tensor"])
    # Through the CLI: a distinct exit code, and Triton was never asked to load anything.
    rc = cli.main(["load", "--pvc", str(pvc), "--triton-url", triton.http_url, "--model", "demo_tensor",
                   "--version", "1", "--triton-models", "demo_tensor"])
    assert rc == ModelConfigError.exit_code
    with TritonControl(triton.url, timeout=5) as control:
        index = control.repository_index()
    assert [m.name for m in index] == ["demo_tensor"] and index[0].state == ""  # present, never loaded
    assert "loading: demo_tensor" not in triton.log_path.read_text()


def test_triton_down_is_a_clear_error_and_changes_nothing(pvc: Path, tmp_path: Path) -> None:
    from devstack.procs import free_ports

    layout = PvcLayout.at(pvc)
    src = demo_models.write_tensor_release(tmp_path / "src", 1)
    dest = layout.version_dir("demo_tensor", 1)
    dest.mkdir(parents=True)
    for f in (src / "demo_tensor").iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    before = sorted(str(p.relative_to(pvc)) for p in pvc.rglob("*"))
    (port,) = free_ports(1)
    control = TritonControl(f"127.0.0.1:{port}", timeout=1)
    release = prepare_release(layout, "demo_tensor", 1, triton_models=["demo_tensor"])
    t0 = time.monotonic()
    with pytest.raises(TritonError, match=r"did not answer /v2/health/live within 1s; nothing was changed"):
        load_candidate(control, layout, release, live_deadline_s=1.0)
    assert time.monotonic() - t0 < 5
    assert sorted(str(p.relative_to(pvc)) for p in pvc.rglob("*")) == before
    control.close()
    # status still reports the PVC, and says Triton is unreachable with no endpoints.
    from triton_rollout.triton.rollout import collect_status

    with TritonControl(f"127.0.0.1:{port}", timeout=1) as dead:
        status = collect_status(layout, dead)
    assert status.triton.live is False and status.endpoints == []
    assert status.pvc_models["demo_tensor"].versions == [1]


def test_readiness_of_an_unknown_version(pvc: Path, tmp_path: Path, triton: TritonServer) -> None:
    with TritonControl(triton.url, timeout=5) as control:
        assert control.is_version_ready("demo_tensor", 99) is False
        assert control.is_version_ready("no_such_model", 1) is False
        t0 = time.monotonic()
        with pytest.raises(TritonError, match=r"model 'demo_tensor' version 99 not ready on .* within 1s"):
            control.wait_ready("demo_tensor", 99, 1.0)
        assert time.monotonic() - t0 < 4


def test_status_lists_exactly_the_live_endpoints(
    pvc: Path, tmp_path: Path, triton: TritonServer, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = PvcLayout.at(pvc)
    for v in (1, 2):
        src = demo_models.write_tensor_release(tmp_path / f"src{v}", v)
        dest = layout.version_dir("demo_tensor", v)
        dest.mkdir(parents=True)
        for f in (src / "demo_tensor").iterdir():
            (dest / f.name).write_bytes(f.read_bytes())
    args = ["--pvc", str(pvc), "--triton-url", triton.http_url, "--triton-models", "demo_tensor"]
    assert cli.main(["deploy", *args, "--model", "demo_tensor", "--version", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "promoted"
    # Version 2 is on the PVC but not loaded: it must not be listed as an endpoint.
    assert cli.main(["status", "--pvc", str(pvc), "--triton-url", triton.http_url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["endpoints"] == [f"{triton.http_url}/v2/models/demo_tensor/versions/1/infer"]
    assert status["pvc"]["models"]["demo_tensor"] == {"versions": [1, 2], "promoted_config_versions": [1]}
    assert status["deployments"]["demo_tensor"]["promoted"] == 1
    assert status["triton"]["live"] is True
    # Each listed endpoint really answers.
    for url in status["endpoints"]:
        out = post(url, {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
        assert out["model_version"] == "1"
    # After an unload nothing is listed; the text form says so too.
    with TritonControl(triton.url, timeout=5) as control:
        control.unload("demo_tensor", wait_s=5)
    assert cli.main(["status", "--pvc", str(pvc), "--triton-url", triton.http_url]) == 0
    text = capsys.readouterr().out
    assert "endpoints answering now\n" in text and text.rstrip().endswith("endpoints answering now")


@pytest.mark.slow
def test_cli_steps_and_exit_codes(
    pvc: Path, tmp_path: Path, triton: TritonServer, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = PvcLayout.at(pvc)
    for v, variant in ((1, "good"), (2, "good"), (3, "wrong")):
        tensor_version_by_hand(layout, tmp_path, v, variant)
    base = ["--pvc", str(pvc), "--triton-url", triton.http_url, "--model", "demo_tensor",
            "--triton-models", "demo_tensor"]
    for step in ("load", "smoke", "promote"):
        assert cli.main([step, *base, "--version", "1"]) == 0, step
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # The candidate's endpoint, where only the smoke test calls it (a shadow: clients call demo_tensor).
    assert out[0]["endpoints"] == [f"{triton.http_url}/v2/models/demo_tensor__candidate/versions/1/infer"]
    assert out[1]["ok"] is True and {c["kind"] for c in out[1]["checks"]} == {"infer", "golden-infer"}
    assert (out[2]["promoted"], out[2]["previous"]) == (1, None)
    # Promoting a version Triton does not serve is refused.
    assert cli.main(["promote", *base, "--version", "2"]) == TritonError.exit_code
    assert "Triton model 'demo_tensor' version 2 is not ready" in capsys.readouterr().err
    assert cli.main(["deploy", *base, "--version", "2", "--run-id", "manual__1"]) == 0
    capsys.readouterr()
    # A wrong candidate: deploy smoke-tests it, rolls back, and exits with the smoke-test code.
    assert cli.main(["deploy", *base, "--version", "3"]) == SmokeTestFailed.exit_code
    captured = capsys.readouterr()
    assert json.loads(captured.out)["outcome"] == "rolled_back"
    assert "smoke test of model 'demo_tensor__candidate' version 3 failed" in captured.err
    with TritonControl(triton.url, timeout=5) as control:
        assert control.ready_versions("demo_tensor") == [2]
    # Operator rollback to the previous version.
    assert cli.main(["rollback", *base, "--reason", "bad traffic"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["promoted"], res["previous"], res["last"]["reason"]) == (1, 2, "bad traffic")
    assert tensor_request(triton)["model_version"] == "1"
    # In place (for a model that does not fit twice), the candidate answers clients before its smoke test:
    # the trade-off the README states.
    assert cli.main(["load", *base, "--version", "2", "--candidate", "in_place"]) == 0
    assert json.loads(capsys.readouterr().out)["endpoints"] == [
        f"{triton.http_url}/v2/models/demo_tensor/versions/2/infer"]
    assert tensor_request(triton)["model_version"] == "2"
    for step in ("smoke", "promote"):
        assert cli.main([step, *base, "--version", "2"]) == 0, step
    assert layout.deployment("demo_tensor").promoted == 2
    with pytest.raises(SystemExit) as usage:
        cli.main(["load", *base, "--version", "2", "--candidate", "blue"])
    assert usage.value.code == 2 and "invalid choice: 'blue'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("candidate", ["shadow", "in_place"])
def test_first_deploy_that_fails_leaves_nothing_behind(pvc: Path, tmp_path: Path, triton: TritonServer,
                                                       candidate: str) -> None:
    layout = PvcLayout.at(pvc)
    src = demo_models.write_llm_release(tmp_path / "src", 1, "init_error")
    for model_dir in src.iterdir():
        dest = layout.version_dir(model_dir.name, 1)
        dest.mkdir(parents=True)
        for f in model_dir.iterdir():
            (dest / f.name).write_bytes(f.read_bytes())
    release = prepare_release(layout, demo_models.LLM_MODEL, 1, triton_models=list(demo_models.LLM_TRITON_MODELS))
    with TritonControl(triton.url, timeout=10) as control:
        with pytest.raises(TritonError, match="nothing was serving before"):
            load_candidate(control, layout, release, deadline_s=30, candidate=candidate)
        # preprocessing had loaded before the engine failed: it is unloaded again, its config removed.
        loaded_as = "preprocessing__candidate" if candidate == "shadow" else "preprocessing"
        assert f"loading: {loaded_as}:1" in triton.log_path.read_text()
        for name in demo_models.LLM_TRITON_MODELS:
            for served in (name, f"{name}__candidate"):
                assert control.ready_versions(served) == [], served
            assert not (layout.model_dir(name) / "config.pbtxt").exists(), name
            assert not layout.model_dir(f"{name}__candidate").exists(), name
    assert layout.deployed_models() == []
