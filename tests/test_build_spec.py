"""Unit tests: the build spec's validation, its exact TensorRT-LLM commands and ensemble configs, the build
pod's GPUs, and the compatibility check. No servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from triton_rollout.build.builders import BUILDERS_ENV, BuildPaths
from triton_rollout.build.spec import TRITON_MODELS, BuildSpec
from triton_rollout.build.templates import fill_template
from triton_rollout.config import ModelDeployment
from triton_rollout.errors import BuildError, ConfigError, IncompatibleEngine
from triton_rollout.kube.specs import build_pod, to_dict
from triton_rollout.release.compat import ServingCompat, check_compat, normalize_compute_capability
from triton_rollout.release.manifest import Compat, FileEntry, Manifest, format_time, parse_time
from triton_rollout.release.s3 import ReleaseUri
from triton_rollout.steps import BuildRequest
from triton_rollout.triton.config import dependencies, parse_config, unfilled_placeholders

from tests.test_build_templates import write_image_models

PATHS = BuildPaths(Path("/scratch/llama"))
LLAMA_7B_TP2 = {
    "family": "llama", "dtype": "float16", "quantization": "int8_weight_only", "tp_size": 2,
    "max_batch_size": 64, "max_input_len": 2048, "max_output_len": 512, "max_num_tokens": 8192,
}


# Off the build image the examples probe finds neither known location and the commands name the first,
# /app/examples (tensorrtllm_backend v0.17.0's image layout); tests/test_build_templates.py covers the probe.
def test_llama_7b_tp2_int8_weight_only_commands_are_exact() -> None:
    spec = BuildSpec.from_dict(LLAMA_7B_TP2)
    convert, build = spec.commands(PATHS)
    assert convert.shell() == (
        "python3 /app/examples/llama/convert_checkpoint.py --model_dir /scratch/llama/checkpoint "
        "--output_dir /scratch/llama/trtllm_checkpoint --dtype float16 --tp_size 2 --pp_size 1 "
        "--use_weight_only --weight_only_precision int8"
    )
    assert build.shell() == (
        "trtllm-build --checkpoint_dir /scratch/llama/trtllm_checkpoint --output_dir /scratch/llama/engine "
        "--gemm_plugin auto --gpt_attention_plugin auto --max_batch_size 64 --max_input_len 2048 "
        "--max_seq_len 2560 --max_beam_width 1 --paged_kv_cache enable --remove_input_padding enable "
        "--context_fmha enable --workers 1 --max_num_tokens 8192"
    )
    assert spec.gpus == 2


def test_fp8_goes_through_quantize_py_and_int8_kv_through_convert() -> None:
    fp8 = BuildSpec.from_dict({"family": "mistral", "quantization": "fp8", "kv_cache_dtype": "fp8", "tp_size": 4,
                               "pp_size": 2, "dtype": "bfloat16", "calib_dataset": "/data/calib",
                               "gemm_plugin": "disable", "workers": 4})
    convert, build = fp8.commands(PATHS)
    assert convert.shell() == (
        "python3 /app/examples/quantization/quantize.py --model_dir /scratch/llama/checkpoint "
        "--output_dir /scratch/llama/trtllm_checkpoint --dtype bfloat16 --tp_size 4 --pp_size 2 --qformat fp8 "
        "--calib_size 512 --calib_dataset /data/calib --kv_cache_dtype fp8"
    )
    assert build.argv[:8] == ("trtllm-build", "--checkpoint_dir", "/scratch/llama/trtllm_checkpoint",
                              "--output_dir", "/scratch/llama/engine", "--gemm_plugin", "disable",
                              "--gpt_attention_plugin")
    assert build.argv[-2:] == ("--workers", "4") and fp8.gpus == 8
    qwen = BuildSpec.from_dict({"family": "qwen", "kv_cache_dtype": "int8"})
    assert qwen.commands(PATHS)[0].shell() == (
        "python3 /app/examples/qwen/convert_checkpoint.py --model_dir /scratch/llama/checkpoint "
        "--output_dir /scratch/llama/trtllm_checkpoint --dtype float16 --tp_size 1 --pp_size 1 --int8_kv_cache"
    )


def test_rendered_ensemble_configs_are_complete_and_parse(tmp_path: Path) -> None:
    # The image's templates (a stand-in written from tests/data/tensorrtllm_backend_facts.json).
    models = write_image_models(tmp_path / "all_models" / "inflight_batcher_llm")
    spec = BuildSpec.from_dict({**LLAMA_7B_TP2, "kv_cache_free_gpu_mem_fraction": 0.85,
                                "preprocessing_instance_count": 4, "triton_repository": "/models",
                                "backend_models_dir": str(models)})
    configs = spec.render_configs(7, spec.builder.model_files(spec, PATHS))
    assert sorted(configs) == sorted(TRITON_MODELS)
    parsed = {}
    for name, text in configs.items():
        assert "${" not in text, name
        cfg = parse_config(text, source=name)
        assert cfg.name == name and unfilled_placeholders(cfg) == []
        assert cfg.max_batch_size == 64
        parsed[name] = cfg
    trt = parsed["tensorrt_llm"]
    assert trt.backend == "tensorrtllm" and trt.model_transaction_policy.decoupled is False
    assert {k: v.string_value for k, v in trt.parameters.items()} == {
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",  # the image's own values stay
        "executor_worker_path": "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker",
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": "/models/tensorrt_llm/7",
        "max_beam_width": "1",
        "batch_scheduler_policy": "guaranteed_no_evict",
        "kv_cache_free_gpu_mem_fraction": "0.85",
        "enable_kv_cache_reuse": "false",
        "enable_chunked_context": "false",
        "exclude_input_in_output": "true",
        "normalize_log_probs": "true",
    }
    assert list(trt.dynamic_batching.preferred_batch_size) == [64]
    pre, post = parsed["preprocessing"], parsed["postprocessing"]
    assert pre.parameters["tokenizer_dir"].string_value == "/models/preprocessing/7/tokenizer"
    assert post.parameters["tokenizer_dir"].string_value == "/models/postprocessing/7/tokenizer"
    assert pre.instance_group[0].count == 4 and post.instance_group[0].count == 1
    ens = parsed["ensemble"]
    assert ens.platform == "ensemble"
    assert dependencies(ens) == ["preprocessing", "tensorrt_llm", "postprocessing"]
    # Every tensor an ensemble step maps exists on the model it maps to.
    for step in ens.ensemble_scheduling.step:
        model = parsed[step.model_name]
        assert set(step.input_map) <= {i.name for i in model.input}, step.model_name
        assert set(step.output_map) <= {o.name for o in model.output}, step.model_name


def test_leftover_or_missing_placeholders_are_errors() -> None:
    with pytest.raises(BuildError, match=r"x/config.pbtxt: template variable\(s\) engine_dir have no value"):
        fill_template('parameters { key: "a" value: { string_value: "${engine_dir}" } }', {}, source="x/config.pbtxt")
    with pytest.raises(BuildError, match=r"unfilled placeholder\(s\) \$\{oops\}"):
        fill_template('name: "${name}"', {"name": "${oops}"}, source="y/config.pbtxt")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"family": "llama", "dtype": "fp16"}, "build.dtype"),
        ({"family": "bert"}, "build.family"),
        ({"family": "demo"}, "build.family"),
        ({"family": "llama", "quantization": "int3"}, "build.quantization"),
        ({"family": "llama", "kv_cache_dtype": "fp8"}, "build.kv_cache_dtype"),
        ({"family": "llama", "tp_size": 0}, "build.tp_size"),
        ({"family": "llama", "max_batch_size": "8"}, "build.max_batch_size"),
        ({"family": "llama", "paged_kv_cache": False}, "build.paged_kv_cache"),
        ({"family": "llama", "kv_cache_free_gpu_mem_fraction": 1.5}, "build.kv_cache_free_gpu_mem_fraction"),
        ({"family": "llama", "triton_repository": "models"}, "build.triton_repository"),
        ({"family": "llama", "tokenizer_files": "tokenizer.json"}, "build.tokenizer_files"),
        ({"family": "llama", "gemm_plugn": "auto"}, "build"),
        ({"dtype": "float16"}, "build.family"),
        ({"backend": "cpu-demo", "family": "demo", "tp_size": 2, "dtype": "float32"}, "build.tp_size"),
    ],
)
def test_spec_errors_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        BuildSpec.from_dict(data)
    assert f"config field '{field}'" in str(info.value)


def test_an_unknown_backend_names_the_known_ones_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        BuildSpec.from_dict({"backend": "onnx", "family": "llama"})
    text = str(info.value)
    assert "config field 'build.backend'" in text and "got 'onnx'" in text
    assert "cpu-demo, tensorrt-llm" in text and BUILDERS_ENV in text
    monkeypatch.setenv(BUILDERS_ENV, "devstack.demo_builder, no_such_builders")
    with pytest.raises(ConfigError, match=f"{BUILDERS_ENV} names module 'no_such_builders', which cannot be imported"):
        BuildSpec.from_dict({"family": "llama"})


def test_the_demo_builder_runs_its_own_module_on_the_build_interpreter() -> None:
    demo = BuildSpec.from_dict({"backend": "cpu-demo", "family": "demo", "dtype": "float32", "python": "python3"})
    convert, build = demo.commands(PATHS)
    assert convert.shell() == ("python3 -m devstack.demo_builder convert --checkpoint_dir /scratch/llama/checkpoint "
                               "--output_dir /scratch/llama/trtllm_checkpoint --dtype float32")
    assert build.argv[:4] == ("python3", "-m", "devstack.demo_builder", "build")


def test_build_pod_asks_for_tp_x_pp_gpus_on_gpu_nodes_and_demo_for_none() -> None:
    kube = {"gpu_product": "NVIDIA-H100-80GB-HBM3", "build_node_selector": {"pool": "gpu"}}
    request = BuildRequest(spec_file="s.json", checkpoint=ReleaseUri.parse("s3://releases/prod/llama/1"),
                           output=ReleaseUri.parse("s3://releases/prod/engines/llama/1"))
    model = ModelDeployment.from_dict({"name": "llama", "release_prefix": "s3://releases/prod", "tp_size": 2,
                                       "pp_size": 2, "kubernetes": kube, "build": {"spec": LLAMA_7B_TP2}})
    assert model.build.build_spec is not None and model.build.build_spec.gpus == 4
    pod = to_dict(build_pod(model, request))
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {"mountPath": "/dev/shm", "name": "dshm"} in container["volumeMounts"]
    demo = ModelDeployment.from_dict({"name": "llama", "release_prefix": "s3://releases/prod", "kubernetes": kube,
                                      "build": {"spec": {"backend": "cpu-demo", "family": "demo",
                                                         "dtype": "float32"}}})
    pod = to_dict(build_pod(demo, request))
    (container,) = pod["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"} and "tolerations" not in pod["spec"]


def _manifest(compat: Compat | None) -> Manifest:
    return Manifest("llama", 3, parse_time(format_time(parse_time("2025-01-01T00:00:00Z"))), "engine", "t",
                    (FileEntry("tensorrt_llm/rank0.engine", 1, "0" * 64),), compat)


def test_compat_check_names_both_values() -> None:
    m = _manifest(Compat("0.14.0", "9.0", 2, 1, "float16"))
    check_compat(m, trtllm_version="0.14.0", compute_capability="sm_90")
    check_compat(m)  # nothing expected: nothing checked
    with pytest.raises(IncompatibleEngine) as info:
        check_compat(m, trtllm_version="0.15.0", compute_capability="8.0")
    text = str(info.value)
    assert "built with 0.14.0, Triton serves with 0.15.0" in text
    assert "built for 9.0, Triton runs on 8.0" in text and "nothing was written to the PVC" in text
    with pytest.raises(IncompatibleEngine, match="records no compatibility facts"):
        check_compat(_manifest(None), trtllm_version="0.14.0")
    assert normalize_compute_capability("90") == "9.0" and normalize_compute_capability("sm_120") == "12.0"
    serving = ServingCompat.from_dict({"trtllm_version": "0.14.0", "compute_capability": "9.0"})
    assert (serving.trtllm_version, serving.compute_capability) == ("0.14.0", "9.0")
    with pytest.raises(ConfigError, match="serving"):
        ServingCompat.from_dict({"trtllm": "x"})
