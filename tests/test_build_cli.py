"""The real `python -m triton_rollout build` against the real local S3 (SeaweedFS): dry run, a fake
TensorRT-LLM toolchain that succeeds or fails, the compatibility gate in the sync, and the CPU demo
builder's checkpoint -> engine release -> sync -> real tritonserver answers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from triton_rollout.errors import IncompatibleEngine
from triton_rollout.release.manifest import Compat
from triton_rollout.release.publish import publish_release
from triton_rollout.release.s3 import ReleaseUri, fetch_manifest
from triton_rollout.release.sync import sync_release

from devstack import demo_models
from tests.helpers import cli_env, make_release_dir, result_json, run_cli
from tests.test_build_templates import write_image_models

# -- a fake TensorRT-LLM toolchain ----------------------------------------------------------------------
# MOCK: no GPU and no TensorRT-LLM here. These stand-ins have the real tools' names and command-line
# shapes, so the build runs its real code path (probes, subprocess steps, layout, publish) around them.

FAKE_CONVERT = """#!{python}
import argparse, os, sys
p = argparse.ArgumentParser()
for a in ("--model_dir", "--output_dir", "--dtype", "--tp_size", "--pp_size", "--weight_only_precision"):
    p.add_argument(a)
p.add_argument("--use_weight_only", action="store_true")
args = p.parse_args()
for i in range(50):
    print(f"converting layer {{i}}")
if os.environ.get("FAKE_CONVERT_FAIL"):
    print("RuntimeError: CUDA out of memory (fake)")
    sys.exit(3)
os.makedirs(args.output_dir, exist_ok=True)
for r in range(int(args.tp_size) * int(args.pp_size)):
    open(os.path.join(args.output_dir, f"rank{{r}}.safetensors"), "wb").write(b"w" * 100)
open(os.path.join(args.output_dir, "config.json"), "w").write("{{}}")
"""

FAKE_TRTLLM_BUILD = """#!{python}
import argparse, glob, os
p = argparse.ArgumentParser()
p.add_argument("--checkpoint_dir"); p.add_argument("--output_dir")
args, _ = p.parse_known_args()
os.makedirs(args.output_dir, exist_ok=True)
for f in sorted(glob.glob(os.path.join(args.checkpoint_dir, "rank*.safetensors"))):
    name = os.path.basename(f).replace(".safetensors", ".engine")
    open(os.path.join(args.output_dir, name), "wb").write(b"engine" * 1000)
open(os.path.join(args.output_dir, "config.json"), "w").write('{{"version": "0.14.0"}}')
print("Total time of building all engines: 00:00:01")
"""


@pytest.fixture()
def fake_toolchain(tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    root = tmp_path / "fake-image"
    bin_dir, site, examples, models = root / "bin", root / "site", root / "examples", root / "all_models"
    for d in (bin_dir, site / "tensorrt_llm", examples / "llama"):
        d.mkdir(parents=True)
    write_image_models(models)  # the image's tensorrtllm_backend templates and model.py files
    # The real package prints a banner on import; the probe must take the last line.
    (site / "tensorrt_llm" / "__init__.py").write_text(
        'print("[TensorRT-LLM] TensorRT-LLM version: 0.14.0")\n__version__ = "0.14.0"\n')
    scripts = {bin_dir / "nvidia-smi": '#!/bin/sh\nprintf "9.0\\n9.0\\n"\n',
               examples / "llama" / "convert_checkpoint.py": FAKE_CONVERT.format(python=sys.executable),
               bin_dir / "trtllm-build": FAKE_TRTLLM_BUILD.format(python=sys.executable)}
    for path, text in scripts.items():
        path.write_text(text)
        path.chmod(0o755)
    spec = {"family": "llama", "dtype": "float16", "tp_size": 2, "max_batch_size": 8, "max_input_len": 128,
            "max_output_len": 64, "python": sys.executable, "examples_dir": str(examples),
            "backend_models_dir": str(models)}
    env = cli_env(PATH=f"{bin_dir}:{os.environ['PATH']}")
    env["PYTHONPATH"] += f":{site}"
    return spec, env


def publish_checkpoint(bucket: str, tmp_path: Path, model: str = "llama-7b", version: int = 3) -> str:
    src = tmp_path / "hf-checkpoint"
    (src / "model-00001.safetensors").parent.mkdir(parents=True)
    (src / "model-00001.safetensors").write_bytes(os.urandom(300_000))
    (src / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    (src / "tokenizer_config.json").write_text("{}")
    uri = f"s3://{bucket}/checkpoints/{model}/{version}"
    publish_release(src, uri, kind="checkpoint")
    return uri


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path: Path) -> None:
    spec = {"family": "llama", "tp_size": 2}
    # An endpoint nobody listens on: any S3 call would fail the command.
    env = cli_env(AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    workdir = tmp_path / "work"
    proc = run_cli("build", "--spec-json", json.dumps(spec), "--checkpoint", "s3://models/ckpt/llama/3",
                   "--output", "s3://models/ckpt/engines/llama/3", "--workdir", str(workdir), "--dry-run", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (f"run [convert]: python3 /app/examples/llama/convert_checkpoint.py --model_dir "
            f"{workdir}/checkpoint --output_dir {workdir}/trtllm_checkpoint --dtype float16 --tp_size 2 "
            "--pp_size 1") in proc.stdout
    assert f"run [trtllm-build]: trtllm-build --checkpoint_dir {workdir}/trtllm_checkpoint" in proc.stdout
    # Off the build image the plan names what the pod fills into the image's templates.
    assert "probe: examples: the first of /app/examples, /app/tensorrt_llm/examples holding" in proc.stdout
    assert ("config.pbtxt: the image's <models>/tensorrt_llm/config.pbtxt (not on this machine) filled with "
            in proc.stdout) and "engine_dir='/models/tensorrt_llm/3'" in proc.stdout
    assert not workdir.exists()
    bad = run_cli("build", "--spec-json", json.dumps(spec), "--checkpoint", "s3://models/ckpt/llama/3",
                  "--output", "s3://models/ckpt/engines/llama/4", "--dry-run", env=env)
    assert bad.returncode == 2 and "same model and version" in bad.stderr


def test_demo_dry_run_runs_the_demo_builder_found_through_the_environment(tmp_path: Path) -> None:
    args = ("build", "--spec-json", json.dumps(demo_models.LLM_BUILD_SPEC), "--checkpoint",
            "s3://models/ckpt/demo-llm/1", "--output", "s3://models/ckpt/engines/demo-llm/1",
            "--workdir", str(tmp_path / "work"), "--dry-run")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "(backend cpu-demo, family demo, 0 GPU(s))" in proc.stdout
    assert "probe: none (cpu-demo records trtllm_version 'cpu-demo', compute_capability 'cpu')" in proc.stdout
    assert f"run [convert]: {sys.executable} -m devstack.demo_builder convert --checkpoint_dir" in proc.stdout
    assert "ensemble/smoke.json (golden answers)" in proc.stdout
    # Without TRITON_ROLLOUT_BUILDERS the product knows only its built-in backend.
    env = cli_env()
    env.pop("TRITON_ROLLOUT_BUILDERS")
    bad = run_cli(*args, env=env)
    assert bad.returncode == 2 and "config field 'build.backend'" in bad.stderr
    assert "TRITON_ROLLOUT_BUILDERS is unset" in bad.stderr


def test_build_with_a_trtllm_toolchain_publishes_an_engine_release(
    s3_server: Any, bucket: str, tmp_path: Path, fake_toolchain: tuple[dict[str, Any], dict[str, str]]
) -> None:
    spec, env = fake_toolchain
    ckpt = publish_checkpoint(bucket, tmp_path)
    output = str(ReleaseUri.parse(ckpt).engine_release())
    proc = run_cli("build", "--spec-json", json.dumps(spec), "--checkpoint", ckpt, "--output", output,
                   "--workdir", str(tmp_path / "work"), "--result-file", str(tmp_path / "result.json"), env=env)
    result = result_json(proc)
    assert result["status"] == "published" and result["release"] == output
    assert [s["name"] for s in result["steps"]] == ["convert", "trtllm-build"]
    assert "[convert] converting layer 49" in proc.stderr  # the step's output is streamed to the log
    manifest = fetch_manifest(ReleaseUri.parse(output))
    assert manifest.kind == "engine"
    assert manifest.compat == Compat("0.14.0", "9.0", 2, 1, "float16")
    assert manifest.extra["build"]["checkpoint"] == ckpt
    assert sorted(f.path for f in manifest.files) == [
        "ensemble/config.pbtxt",
        "postprocessing/config.pbtxt", "postprocessing/model.py",
        "postprocessing/tokenizer/tokenizer.json", "postprocessing/tokenizer/tokenizer_config.json",
        "preprocessing/config.pbtxt", "preprocessing/model.py",
        "preprocessing/tokenizer/tokenizer.json", "preprocessing/tokenizer/tokenizer_config.json",
        "tensorrt_llm/config.json", "tensorrt_llm/config.pbtxt", "tensorrt_llm/rank0.engine",
        "tensorrt_llm/rank1.engine",
    ]
    assert json.loads((tmp_path / "result.json").read_text())["compat"]["compute_capability"] == "9.0"
    # A retried task after the publish is a no-op: releases are immutable.
    again = result_json(run_cli("build", "--spec-json", json.dumps(spec), "--checkpoint", ckpt, "--output", output,
                                "--workdir", str(tmp_path / "work"), env=env))
    assert again["status"] == "exists"


def test_failed_step_fails_the_build_with_its_exit_code_and_output(
    s3_server: Any, bucket: str, tmp_path: Path, fake_toolchain: tuple[dict[str, Any], dict[str, str]]
) -> None:
    spec, env = fake_toolchain
    ckpt = publish_checkpoint(bucket, tmp_path)
    output = str(ReleaseUri.parse(ckpt).engine_release())
    env["FAKE_CONVERT_FAIL"] = "1"
    proc = run_cli("build", "--spec-json", json.dumps(spec), "--checkpoint", ckpt, "--output", output,
                   "--workdir", str(tmp_path / "work"), env=env)
    assert proc.returncode == 3, proc.stderr
    assert "build step 'convert' failed with exit code 3" in proc.stderr
    tail = proc.stderr.split("last 40 lines of its output:")[1]
    assert "RuntimeError: CUDA out of memory (fake)" in tail and "converting layer 49" in tail
    assert proc.stdout == ""  # no result: nothing was published
    with pytest.raises(Exception, match="not found"):
        fetch_manifest(ReleaseUri.parse(output))
    # Without a GPU the build refuses before downloading anything.
    env["PATH"] = env["PATH"].split(":", 1)[1]
    proc = run_cli("build", "--spec-json", json.dumps(spec), "--checkpoint", ckpt, "--output", output,
                   "--workdir", str(tmp_path / "work2"), env=env)
    assert proc.returncode == 14 and "no GPU visible to the build" in proc.stderr
    assert not (tmp_path / "work2").exists()


def test_compat_gate_refuses_a_mismatched_engine_before_touching_the_pvc(
    s3_server: Any, bucket: str, tmp_path: Path, pvc: Path
) -> None:
    src = make_release_dir(tmp_path / "src", model="tensorrt_llm")
    uri = f"s3://{bucket}/engines/llama/1"
    publish_release(src, uri, compat=Compat("0.14.0", "9.0", 1, 1, "float16"))
    proc = run_cli("sync", "--release", uri, "--pvc", str(pvc), "--expect-trtllm-version", "0.15.0",
                   "--expect-compute-capability", "8.0")
    assert proc.returncode == IncompatibleEngine.exit_code, proc.stderr
    assert "built with 0.14.0, Triton serves with 0.15.0" in proc.stderr
    assert "built for 9.0, Triton runs on 8.0" in proc.stderr
    assert list(pvc.iterdir()) == []  # not even staging/ or state/
    ok = result_json(run_cli("sync", "--release", uri, "--pvc", str(pvc), "--expect-trtllm-version", "0.14.0",
                             "--expect-compute-capability", "sm_90"))
    assert ok["status"] == "published"


@pytest.mark.slow
def test_demo_checkpoint_builds_into_an_engine_release_that_triton_serves(
    s3_server: Any, bucket: str, tmp_path: Path, pvc: Path, triton: Any
) -> None:
    from triton_rollout.pvc.layout import PvcLayout
    from triton_rollout.triton.control import TritonControl
    from triton_rollout.triton.promote import load_candidate, prepare_release, promote
    from triton_rollout.triton.smoke import smoke_release

    from tests.helpers import golden, llm_request

    version = 2
    ckpt = demo_models.publish_demo_checkpoint(bucket, tmp_path, version)
    output = str(ReleaseUri.parse(ckpt).engine_release())
    # The demo spec asks for no GPU, and the build uses no --workdir: what the build pod runs.
    result = result_json(run_cli("build", "--spec-json", json.dumps(demo_models.LLM_BUILD_SPEC),
                                 "--checkpoint", ckpt, "--output", output,
                                 env=cli_env(SCRATCH_DIR=str(tmp_path / "scratch"))))
    assert result["compat"] == {"trtllm_version": "cpu-demo", "compute_capability": "cpu", "tp_size": 1,
                                "pp_size": 1, "dtype": "float32"}
    assert list((tmp_path / "scratch").iterdir()) == []  # its own scratch is removed after the publish

    # The built release holds what the demo writer ships (engine, vocab, code, golden answers).
    sync_release(output, pvc, prune=False, expect_trtllm_version="cpu-demo", expect_compute_capability="cpu")
    layout = PvcLayout.at(pvc)
    reference = demo_models.write_llm_release(tmp_path / "reference", version)
    for rel in ("tensorrt_llm/bigram.npy", "tensorrt_llm/model.py", "preprocessing/vocab.json",
                "postprocessing/model.py", "ensemble/smoke.json", "ensemble/config.pbtxt"):
        model, name = rel.split("/")
        assert (layout.version_dir(model, version) / name).read_bytes() == (reference / rel).read_bytes(), rel

    control = TritonControl(triton.url, timeout=10)
    try:
        release = prepare_release(layout, output.rsplit("/", 2)[-2], version)
        load_candidate(control, layout, release, deadline_s=60)
        smoke_release(control, layout, release.model, version, release.entries)
        promote(layout, release, run_id="build-test", control=control)
        assert llm_request(triton)["text_output"] == golden(version)
    finally:
        control.close()
