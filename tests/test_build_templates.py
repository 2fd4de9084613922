"""The TensorRT-LLM build takes the ensemble's configs from the build image's own templates and fills them as
tensorrtllm_backend's fill step does; the rendered configs must give the image's model code everything it
reads at the pinned release (tests/data/tensorrtllm_backend_facts.json). No servers, no GPU.

MOCK: NVIDIA's image is not here. Its all_models/inflight_batcher_llm/<model>/config.pbtxt files are stood
in for by templates written from the facts file (the same tensors, types, dims, parameters and placeholders,
placeholders in comments included), and its model.py files by stubs (only their presence is checked).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from triton_rollout.build import trtllm
from triton_rollout.build.builders import BuildPaths
from triton_rollout.build.spec import TRITON_MODELS, BuildSpec
from triton_rollout.build.templates import FILL_DEFAULTS, fill_template
from triton_rollout.errors import BuildError
from triton_rollout.triton.config import ModelConfig, mc, parse_config

FACTS_FILE = Path(__file__).parent / "data" / "tensorrtllm_backend_facts.json"
PATHS = BuildPaths(Path("/scratch/llama"))


@cache
def facts() -> dict[str, Any]:
    return json.loads(FACTS_FILE.read_text())


# -- the image's templates, written from the facts ------------------------------------------------------


def _tensor(t: Mapping[str, Any]) -> str:
    parts = [f'name: "{t["name"]}"', f"data_type: {t['data_type']}", f"dims: [ {', '.join(map(str, t['dims']))} ]"]
    if "reshape" in t:
        parts.append(f"reshape: {{ shape: [ {', '.join(map(str, t['reshape']))} ] }}")
    parts += ["optional: true"] * bool(t.get("optional")) + ["allow_ragged_batch: true"] * bool(
        t.get("allow_ragged_batch"))
    return "  {\n    " + "\n    ".join(parts) + "\n  }"


def image_template(model: str) -> str:
    """A config.pbtxt template equivalent to the image's for ``model`` at the pinned release."""
    c = facts()["models"][model]["config"]
    lines = [f'name: "{model}"']
    lines.append(f'platform: "{c["platform"]}"' if c.get("platform") else f'backend: "{c["backend"]}"')
    lines.append(f"max_batch_size: {c['max_batch_size']}")
    if "decoupled" in c:
        lines.append(f"model_transaction_policy {{\n  decoupled: {c['decoupled']}\n}}")
    if "dynamic_batching" in c:
        db = c["dynamic_batching"]
        body = ""
        if "preferred_batch_size" in db:
            body += f"\n  preferred_batch_size: [ {', '.join(db['preferred_batch_size'])} ]"
        if "max_queue_delay_microseconds" in db:
            body += f"\n  max_queue_delay_microseconds: {db['max_queue_delay_microseconds']}"
        if "default_queue_policy_max_queue_size" in db:
            body += f"\n  default_queue_policy: {{ max_queue_size: {db['default_queue_policy_max_queue_size']} }}"
        lines.append(f"dynamic_batching {{{body}\n}}")
    lines.append("input [\n" + ",\n".join(_tensor(t) for t in c["inputs"]) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor(t) for t in c["outputs"]) + "\n]")
    if "instance_group" in c:
        g = c["instance_group"]
        lines.append(f"instance_group [\n  {{\n    count: {g['count']}\n    kind: {g['kind']}\n  }}\n]")
    for key, value in c["parameters"].items():
        lines.append(f'parameters: {{\n  key: "{key}"\n  value: {{\n    string_value: "{value}"\n  }}\n}}')
    used = set(json.dumps(c["parameters"]).split('"'))
    for name in c["placeholders"]["in_string_parameters"]:
        if f"${{{name}}}" not in used:  # upstream keeps such a parameter commented out
            lines.append(f'# parameters: {{ key: "{name}" value: {{ string_value: "${{{name}}}" }} }}')
    if "steps" in c:
        steps = []
        for s in c["steps"]:
            maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in s["input_map"].items()]
            maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in s["output_map"].items()]
            steps.append(f'    {{\n      model_name: "{s["model_name"]}"\n      model_version: {s["model_version"]}\n'
                         + "".join(f"      {m}\n" for m in maps) + "    }")
        lines.append("ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}")
    return "\n".join(lines) + "\n"


def write_image_models(root: Path) -> Path:
    """A stand-in for the image's all_models/inflight_batcher_llm under ``root``."""
    for model in TRITON_MODELS:
        (root / model / "1").mkdir(parents=True, exist_ok=True)
        (root / model / "config.pbtxt").write_text(image_template(model))
    for model in ("preprocessing", "postprocessing"):
        (root / model / "1" / "model.py").write_text(f"# {model} model.py of the (stand-in) serving image\n")
    return root


def render(spec: BuildSpec, version: int) -> dict[str, ModelConfig]:
    files = spec.builder.model_files(spec, PATHS)
    return {name: parse_config(text, source=name) for name, text in spec.render_configs(version, files).items()}


# -- the facts check -----------------------------------------------------------------------------------


def _spec_of(tensor: Any) -> tuple[str, list[int]]:
    return mc.DataType.Name(tensor.data_type), list(tensor.dims)


def facts_problems(configs: Mapping[str, ModelConfig]) -> list[str]:
    """Everything the image's code at the pinned release reads that ``configs`` lack or type differently."""
    problems: list[str] = []
    resolved = {"${logits_datatype}": "TYPE_FP32", "${encoder_input_features_data_type}": "TYPE_FP16"}
    for name, cfg in configs.items():
        fact = facts()["models"][name]
        code, upstream = fact["code"] or {}, fact["config"]
        params = {k: p.string_value for k, p in cfg.parameters.items()}
        inputs = {t.name: _spec_of(t) for t in cfg.input}
        outputs = {t.name: _spec_of(t) for t in cfg.output}
        ups = {kind: {t["name"]: (resolved.get(t["data_type"], t["data_type"]), t["dims"]) for t in upstream[kind]}
               for kind in ("inputs", "outputs")}
        for key in code.get("parameters_read_unconditionally", []):
            if key not in params:
                problems.append(f"{name}: parameter {key} is read unconditionally but missing")
        for key in code.get("parameters_needing_a_value", []):
            if not params.get(key):
                problems.append(f"{name}: parameter {key} needs a value, has {params.get(key)!r}")
        for key, unset in code.get("values_read_as_unset", {}).items():
            if key in code.get("parameters_read_unconditionally", []) and params.get(key) not in unset:
                problems.append(f"{name}: parameter {key}={params.get(key)!r} is not one the code reads as unset "
                                f"{unset} (a text-only family)")
        if "gpt_model_type_values" in code and params.get("gpt_model_type") not in code["gpt_model_type_values"]:
            problems.append(f"{name}: gpt_model_type {params.get('gpt_model_type')!r} is refused at load")
        problems += [f"{name}: parameter {k}={v!r} is a leftover placeholder" for k, v in params.items() if "${" in v]
        wanted = [("inputs", n, inputs) for n in code.get("input_configs_looked_up_at_load", [])
                  + code.get("inputs_read_unconditionally", [])]
        wanted += [("outputs", n, outputs) for n in code.get("output_configs_looked_up_at_load", [])
                   + code.get("outputs_written_every_response", [])]
        for kind, tensor, have in wanted:
            if tensor not in have:
                problems.append(f"{name}: {kind[:-1]} {tensor} is looked up or written by the code but missing")
        for kind, have in (("inputs", inputs), ("outputs", outputs)):
            for tensor, spec in have.items():
                if tensor not in ups[kind]:
                    problems.append(f"{name}: {kind[:-1]} {tensor} is not in the image's config")
                elif spec != (want := (ups[kind][tensor][0], ups[kind][tensor][1])):
                    problems.append(f"{name}: {kind[:-1]} {tensor} is {spec}, the image's code expects {want}")
        for t in upstream["inputs"]:
            if not t.get("optional") and t["name"] not in inputs:
                problems.append(f"{name}: required input {t['name']} of the image's config is missing")
    for step in configs["ensemble"].ensemble_scheduling.step if "ensemble" in configs else []:
        code = facts()["models"][step.model_name]["code"] or {}
        for tensor in code.get("inputs_read_unconditionally", []):
            if tensor not in step.input_map:
                problems.append(f"ensemble: step {step.model_name} does not feed {tensor}")
        accepted = code.get("inputs_accepted_only")
        if accepted is not None and set(step.input_map) - set(accepted):
            problems.append(f"ensemble: step {step.model_name} feeds {sorted(set(step.input_map) - set(accepted))}, "
                            f"which its code refuses")
    return list(dict.fromkeys(problems))


# -- tests ----------------------------------------------------------------------------------------------


@pytest.fixture()
def image_spec(tmp_path: Path) -> BuildSpec:
    models = write_image_models(tmp_path / "all_models" / "inflight_batcher_llm")
    return BuildSpec.from_dict({"family": "llama", "tp_size": 2, "max_batch_size": 16,
                                "backend_models_dir": str(models)})


def test_facts_file_names_the_pinned_release() -> None:
    up = facts()["upstream"]
    assert up["repo"] == "triton-inference-server/tensorrtllm_backend" and len(up["commit"]) == 40
    assert up["tensorrt_llm_version"] == "0.17.0" and up["image"].endswith(":25.01-trtllm-python-py3")
    # The pinned images (docker/Dockerfile.build) are the release the facts were read from.
    dockerfile = (Path(__file__).parents[1] / "docker" / "Dockerfile.build").read_text()
    assert f"FROM {up['image']}" in dockerfile
    assert trtllm.EXAMPLES_DIRS[0] == facts()["image_layout"]["examples"]
    assert trtllm.BACKEND_MODELS_DIRS[0] == facts()["image_layout"]["all_models"] + "/inflight_batcher_llm"
    assert facts()["fill_template"]["defaults"] == FILL_DEFAULTS


def test_rendered_ensemble_gives_the_image_code_everything_it_reads(image_spec: BuildSpec) -> None:
    configs = render(image_spec, 5)
    assert facts_problems(configs) == []
    pre, trt = configs["preprocessing"], configs["tensorrt_llm"]
    outputs = {o.name for o in pre.output}
    assert {"DECODER_INPUT_ID", "REQUEST_DECODER_INPUT_LEN", "OUT_PROMPT_TABLE_EXTRA_IDS"} <= outputs
    assert {"EMBEDDING_BIAS_WORDS", "EMBEDDING_BIAS_WEIGHTS"} <= {i.name for i in pre.input}
    assert pre.parameters["visual_model_path"].string_value == ""
    assert pre.parameters["tokenizer_dir"].string_value == "/models/preprocessing/5/tokenizer"
    assert pre.parameters["gpt_model_path"].string_value == "/models/tensorrt_llm/5"
    # Optional parameters the spec does not set are left out: the backend then uses its defaults.
    assert "max_num_images" not in pre.parameters and "max_tokens_in_paged_kv_cache" not in trt.parameters
    assert "encoder_model_path" not in trt.parameters
    assert trt.parameters["gpt_model_path"].string_value == "/models/tensorrt_llm/5"
    assert trt.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"  # the image's own value stays
    assert trt.dynamic_batching.default_queue_policy.max_queue_size == 0  # upstream's fill default
    assert list(trt.dynamic_batching.preferred_batch_size) == [16] and trt.max_batch_size == 16
    assert mc.DataType.Name(next(o for o in trt.output if o.name == "context_logits").data_type) == "TYPE_FP32"


def test_the_facts_check_fails_on_configs_the_image_code_cannot_load(image_spec: BuildSpec) -> None:
    configs = render(image_spec, 5)
    pre = configs["preprocessing"]
    del pre.parameters["visual_model_path"]
    kept = [o for o in pre.output if o.name != "DECODER_INPUT_ID"]
    del pre.output[:]
    pre.output.extend(kept)
    next(o for o in pre.output if o.name == "INPUT_ID").data_type = mc.TYPE_INT64
    problems = facts_problems(configs)
    assert "preprocessing: parameter visual_model_path is read unconditionally but missing" in problems
    assert "preprocessing: output DECODER_INPUT_ID is looked up or written by the code but missing" in problems
    assert ("preprocessing: output INPUT_ID is ('TYPE_INT64', [-1]), the image's code expects ('TYPE_INT32', [-1])"
            in problems)


def test_a_required_placeholder_left_unfilled_fails_naming_it(image_spec: BuildSpec) -> None:
    text = image_template("tensorrt_llm")
    values = image_spec.template_values("tensorrt_llm", 5)
    required = trtllm.REQUIRED_PARAMETERS["tensorrt_llm"]
    with pytest.raises(BuildError, match=r"x/config.pbtxt: required parameter\(s\) gpt_model_path \(\$\{engine_dir\}\) "
                                         r"have no value"):
        fill_template(text, {k: v for k, v in values.items() if k != "engine_dir"}, source="x/config.pbtxt",
                      required_parameters=required)
    # Outside a string_value Triton cannot parse the config: required whatever the builder says.
    for structural in ("logits_datatype", "triton_max_batch_size", "triton_backend", "decoupled_mode"):
        with pytest.raises(BuildError, match=rf"required template placeholder\(s\) {structural} have no value"):
            fill_template(text, {k: v for k, v in values.items() if k != structural}, source="x/config.pbtxt",
                          required_parameters=required)
    with pytest.raises(BuildError, match=r"unfilled placeholder\(s\) \$\{oops\}"):
        fill_template(text, {**values, "batch_scheduler_policy": "${oops}"}, source="x/config.pbtxt",
                      required_parameters=required)
    # An optional one is left out, as the image's code reads a missing parameter like upstream's literal.
    cfg = parse_config(fill_template(text, {k: v for k, v in values.items() if k != "max_beam_width"},
                                     source="x/config.pbtxt", required_parameters=required))
    assert "max_beam_width" not in cfg.parameters and cfg.parameters["gpt_model_type"].string_value == (
        "inflight_fused_batching")
    trt_facts = facts()["models"]["tensorrt_llm"]["code"]
    assert "max_beam_width" in trt_facts["parameters_read_if_present"]


def test_required_parameters_are_what_the_image_code_cannot_do_without() -> None:
    for model, required in trtllm.REQUIRED_PARAMETERS.items():
        code = facts()["models"][model]["code"] or {}
        needed = set(code.get("parameters_read_unconditionally", [])) | set(code.get("parameters_needing_a_value", []))
        assert needed <= required, model
        # Every other parameter of the image's template is one its code reads only when present.
        optional = set(facts()["models"][model]["config"]["parameters"]) - required
        read_if_present = set(code.get("parameters_read_if_present", [])) | set(
            code.get("parameters_read_when_multimodal", []))
        assert optional <= read_if_present | {"FORCE_CPU_ONLY_INPUT_TENSORS", "executor_worker_path"}, model


def test_the_probe_names_every_image_path_it_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BuildSpec.from_dict({"family": "qwen"})
    # MOCK: the image's /app is not here; two folders stand in for the two known example locations.
    first, second = tmp_path / "app" / "examples", tmp_path / "app" / "tensorrt_llm" / "examples"
    monkeypatch.setattr(trtllm, "EXAMPLES_DIRS", (str(first), str(second)))
    with pytest.raises(BuildError) as info:
        trtllm.find_examples_dir(spec)
    assert (f"the build image has no qwen/convert_checkpoint.py: looked for {first}/qwen/convert_checkpoint.py, "
            f"{second}/qwen/convert_checkpoint.py") in str(info.value)
    (second / "qwen").mkdir(parents=True)
    (second / "qwen" / "convert_checkpoint.py").write_text("")
    assert trtllm.find_examples_dir(spec) == second
    assert spec.commands(PATHS)[0].argv[1] == f"{second}/qwen/convert_checkpoint.py"
    (first / "qwen").mkdir(parents=True)
    (first / "qwen" / "convert_checkpoint.py").write_text("")
    assert spec.commands(PATHS)[0].argv[1] == f"{first}/qwen/convert_checkpoint.py"  # the pinned layout first

    models = tmp_path / "all_models" / "inflight_batcher_llm"
    monkeypatch.setattr(trtllm, "BACKEND_MODELS_DIRS", (str(models),))
    with pytest.raises(BuildError) as info:
        trtllm.find_backend_models_dir(spec)
    text = str(info.value)
    for model in TRITON_MODELS:
        assert f"{models}/{model}/config.pbtxt" in text
    assert f"{models}/preprocessing/1/model.py" in text and "backend_models_dir" in text
    write_image_models(models)
    (models / "ensemble" / "config.pbtxt").unlink()
    with pytest.raises(BuildError, match=rf"missing {models}/ensemble/config.pbtxt$|missing {models}/ensemble/config"):
        trtllm.find_backend_models_dir(spec)


def test_outside_the_image_the_probe_fails_on_the_real_paths() -> None:
    if Path("/app").exists():
        pytest.skip("this machine has an /app folder; the test needs one without the image's layout")
    spec = BuildSpec.from_dict({"family": "llama", "quantization": "fp8", "kv_cache_dtype": "fp8"})
    with pytest.raises(BuildError, match=r"looked for /app/examples/quantization/quantize.py, "
                                         r"/app/tensorrt_llm/examples/quantization/quantize.py"):
        spec.builder.probe(spec)
    text = "\n".join(spec.builder.describe_layout(spec, PATHS, 3))
    assert "the image's <models>/tensorrt_llm/config.pbtxt (not on this machine) filled with" in text
    assert "engine_dir='/models/tensorrt_llm/3'" in text


def test_the_project_checks_refuse_an_image_template_the_rollout_cannot_serve(image_spec: BuildSpec) -> None:
    models = Path(image_spec.backend_models_dir or "")
    trt = models / "tensorrt_llm" / "config.pbtxt"
    original = trt.read_text()
    trt.write_text(original.replace('string_value: "${engine_dir}"', 'string_value: "/engines/llama"'))
    with pytest.raises(BuildError, match=r"tensorrt_llm/config.pbtxt: gpt_model_path is '/engines/llama', "
                                         r"expected '/models/tensorrt_llm/5'"):
        render(image_spec, 5)
    trt.write_text(original)
    ensemble = models / "ensemble" / "config.pbtxt"
    ensemble.write_text(ensemble.read_text().replace('key: "TOKENS_BATCH"', 'key: "TOKENS"'))
    with pytest.raises(BuildError, match=r"step 'postprocessing': maps tensor\(s\) the model lacks \['TOKENS'\] and "
                                         r"leaves required input\(s\) unfed \['TOKENS_BATCH'\]"):
        render(image_spec, 5)


# MOCK: the image's model.py files are not here. These stand-ins do at load what the facts file says the
# image's code does at initialize (index the parameters it reads unconditionally, look up the input and
# output configs it looks up), and the tensorrtllm backend (GPU only) is stood in for by a python model
# reading the parameters it cannot do without. The server, its config parsing and its ensemble validation
# (every step's tensors, types and shapes) are the real tritonserver's.
STAND_IN_MODEL = '''import json
import triton_python_backend_utils as pb_utils

FACTS = json.loads({facts!r})


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = cfg.get("parameters", {{}})
        for key in FACTS.get("parameters_read_unconditionally", []):
            params[key]["string_value"]  # a KeyError fails the load, as in the image
        for key in FACTS.get("parameters_needing_a_value", []):
            if not params.get(key, {{}}).get("string_value"):
                raise pb_utils.TritonModelException(f"parameter {{key}} has no value")
        for key, unset in FACTS.get("values_read_as_unset", {{}}).items():
            if key in FACTS.get("parameters_read_unconditionally", []) and params[key]["string_value"] not in unset:
                raise pb_utils.TritonModelException(f"parameter {{key}} is not unset: {{params[key]}}")
        for name in FACTS.get("input_configs_looked_up_at_load", []):
            pb_utils.triton_string_to_numpy(pb_utils.get_input_config_by_name(cfg, name)["data_type"])
        for name in FACTS.get("output_configs_looked_up_at_load", []):
            pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(cfg, name)["data_type"])

    def execute(self, requests):
        raise pb_utils.TritonModelException("stand-in: only the load is checked")
'''


@pytest.mark.slow
def test_the_rendered_ensemble_loads_in_a_real_tritonserver(image_spec: BuildSpec, pvc: Path, triton: Any) -> None:
    from triton_rollout.pvc.layout import PvcLayout
    from triton_rollout.triton.config import to_text
    from triton_rollout.triton.control import TritonControl

    repository = PvcLayout.at(pvc).repository
    configs = render(image_spec, 1)
    configs["tensorrt_llm"].backend = "python"  # MOCK: see above
    for name, cfg in configs.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(to_text(cfg))
        if name != "ensemble":
            code = facts()["models"][name]["code"]
            (repository / name / "1" / "model.py").write_text(STAND_IN_MODEL.format(facts=json.dumps(code)))
    control = TritonControl(triton.url, timeout=30)
    try:
        for name in ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble"):
            control.load_from_disk(name)
            assert control.is_version_ready(name, 1), name
    finally:
        control.close()
