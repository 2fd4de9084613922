"""The TensorRT-LLM builder (built in): convert_checkpoint.py or quantize.py, then trtllm-build, on GPUs.

It runs in the build image (FROM nvcr.io/nvidia/tritonserver:<tag>-trtllm-python-py3, the serving image's
tag): the probes read the TensorRT-LLM version, the GPUs' compute capability and where the image keeps
the examples and tensorrtllm_backend's models; the steps are the examples' scripts with every flag spelled
out; the release is the ensemble from the image's own ``all_models/inflight_batcher_llm`` templates, filled
as upstream's fill step does (build/templates.py) and checked here, with the image's tokenizer models' code.
The same image serves the release, so its model code reads exactly the configs its templates describe.

Why the example scripts and the trtllm-build CLI, not ``tensorrt_llm``'s Python API (``LLM`` /
``BuildConfig``, 0.17): the CLI covers every family and quantization listed here (the calibrated ones
through quantize.py) with one code path; each step is a subprocess, so ``--dry-run`` prints the exact
command, its output streams to the pod log and a failure ends the build with the step's exit code,
which an in-process build (one CUDA context, killed by an OOM) would not give.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from triton_rollout.build.builders import BuildPaths, ModelFiles, RuntimeFacts, Step, register
from triton_rollout.build.spec import BACKEND_TRTLLM, CALIBRATED_QUANTIZATIONS, TRITON_MODELS, BuildSpec
from triton_rollout.config.validators import fail
from triton_rollout.errors import BuildError
from triton_rollout.release.compat import normalize_compute_capability

if TYPE_CHECKING:
    from triton_rollout.triton.config import ModelConfig

# Checkpoint family -> the examples/<dir> whose convert_checkpoint.py handles it (Mistral and Mixtral
# are converted by the Llama script upstream).
FAMILY_EXAMPLES = {
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "llama",
    "qwen": "qwen",
    "gpt": "gpt",
    "falcon": "falcon",
    "phi": "phi",
}
# Weight-only quantizations go through convert_checkpoint.py; the calibrated ones through quantize.py.
_WEIGHT_ONLY = {"int8_weight_only": "int8", "int4_weight_only": "int4"}
# Where the image keeps the examples and tensorrtllm_backend's models: tensorrtllm_backend v0.17.0 (the
# release NGC 25.01 ships) builds its image with dockerfile/Dockerfile.triton.trt_llm_backend, whose final
# stage copies tensorrt_llm/examples to /app/examples and all_models to /app/all_models. Its development
# image (dockerfile/Dockerfile.trt_llm_backend) keeps the TensorRT-LLM tree at /app/tensorrt_llm: probed second.
EXAMPLES_DIRS = ("/app/examples", "/app/tensorrt_llm/examples")
BACKEND_MODELS_DIRS = ("/app/all_models/inflight_batcher_llm",)
# What the image's code for each model cannot do without (tests/data/tensorrtllm_backend_facts.json, v0.17.0):
# preprocessing/postprocessing model.py index tokenizer_dir (and preprocessing visual_model_path) directly;
# the tensorrtllm backend fails the load without gpt_model_type and needs gpt_model_path for a decoder
# engine (preprocessing reads its copy for multimodal engines; the project always fills both). Every other
# parameter of their templates is read only when present.
REQUIRED_PARAMETERS = {
    "preprocessing": frozenset({"tokenizer_dir", "visual_model_path", "gpt_model_path"}),
    "postprocessing": frozenset({"tokenizer_dir"}),
    "tensorrt_llm": frozenset({"gpt_model_type", "gpt_model_path"}),
    "ensemble": frozenset(),
}
# The smoke test's generate call (triton/smoke.py): the ensemble must take these and answer text_output.
GENERATE_INPUTS = {"text_input": "TYPE_STRING", "max_tokens": "TYPE_INT32"}
GENERATE_OUTPUT = "text_output"
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+-]*$")
TRTLLM_VERSION_PROBE = "import tensorrt_llm; print(tensorrt_llm.__version__)"
NVIDIA_SMI_PROBE = ("nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader")
TORCH_PROBE = ("import torch; assert torch.cuda.is_available(), 'no CUDA device'; "
               "print('%d.%d' % torch.cuda.get_device_capability(0))")


def interpreter(spec: BuildSpec) -> str:
    """The build image's python, which has tensorrt_llm."""
    return spec.python or "python3"


class TensorRTLLMBuilder:
    backend = BACKEND_TRTLLM
    families = tuple(FAMILY_EXAMPLES)
    tokenizer_dir = "tokenizer"  # the tokenizer models read it from tokenizer_dir (BuildSpec.template_values)

    def validate(self, spec: BuildSpec, path: str) -> None:
        if spec.batching_strategy == "inflight_fused_batching":
            # In-flight batching runs only on engines built with these (the backend refuses others at load).
            for name, ok in (("paged_kv_cache", spec.paged_kv_cache),
                             ("remove_input_padding", spec.remove_input_padding),
                             ("gpt_attention_plugin", spec.gpt_attention_plugin != "disable")):
                if not ok:
                    raise fail(f"{path}.{name}", "must be enabled for batching_strategy inflight_fused_batching "
                                                 "(or set batching_strategy to V1)")

    def gpus(self, spec: BuildSpec) -> int:
        return spec.tp_size * spec.pp_size  # one per rank

    def steps(self, spec: BuildSpec, paths: BuildPaths) -> list[Step]:
        return [_convert_step(spec, paths), _build_step(spec, paths)]

    def probe(self, spec: BuildSpec) -> RuntimeFacts:
        # The image's layout first: a wrong image fails here, before the checkpoint is downloaded.
        find_examples_dir(spec)
        find_backend_models_dir(spec)
        return RuntimeFacts(probe_trtllm_version(spec), probe_compute_capability(spec))

    def model_files(self, spec: BuildSpec, paths: BuildPaths) -> ModelFiles:
        root = find_backend_models_dir(spec)
        sources = {m: str(root / m / "config.pbtxt") for m in TRITON_MODELS}
        templates = {m: Path(path).read_text() for m, path in sources.items()}
        code = {m: root / m / "1" / "model.py" for m in ("preprocessing", "postprocessing")}
        return ModelFiles(templates, code, sources, REQUIRED_PARAMETERS)

    def check_configs(self, spec: BuildSpec, configs: Mapping[str, ModelConfig], version: int) -> None:
        check_ensemble_configs(spec, configs, version)

    def write_extras(self, spec: BuildSpec, paths: BuildPaths) -> None:
        return None  # the ensemble's configs, code, tokenizer and engine are the whole release

    def describe_probe(self, spec: BuildSpec) -> list[str]:
        return [f"probe: examples: the first of {', '.join(examples_dirs(spec))} holding {_example_script(spec)}",
                f"probe: tensorrtllm_backend models: the first of {', '.join(backend_models_dirs(spec))} holding "
                f"{{{','.join(TRITON_MODELS)}}}/config.pbtxt and {{preprocessing,postprocessing}}/1/model.py",
                f"probe: {interpreter(spec)} -c {TRTLLM_VERSION_PROBE!r}",
                f"probe: {' '.join(NVIDIA_SMI_PROBE)}  (fallback: torch.cuda.get_device_capability)"]

    def describe_layout(self, spec: BuildSpec, paths: BuildPaths, version: int) -> list[str]:
        try:
            files = self.model_files(spec, paths)
        except BuildError:
            # Not in the build image: say what the build pod fills, not a config this machine cannot know.
            lines = [f"write: {paths.release}/{{preprocessing,postprocessing}}/model.py from the image's "
                     "<models>/<model>/1/model.py"]
            for name in TRITON_MODELS:
                values = ", ".join(f"{k}={v!r}" for k, v in sorted(spec.template_values(name, version).items()))
                lines.append(f"write: {paths.release}/{name}/config.pbtxt: the image's <models>/{name}/config.pbtxt "
                             f"(not on this machine) filled with {values}")
            return lines
        lines = [f"write: {paths.release}/{name}/model.py from {src}" for name, src in files.code.items()]
        for name, text in spec.render_configs(version, files).items():
            lines.append(f"write: {paths.release}/{name}/config.pbtxt:")
            lines.extend(f"    {t}" for t in text.rstrip("\n").splitlines())
        return lines


register(TensorRTLLMBuilder())


# -- the image's layout -----------------------------------------------------------------------------------


def examples_dirs(spec: BuildSpec) -> tuple[str, ...]:
    return (spec.examples_dir,) if spec.examples_dir else EXAMPLES_DIRS


def backend_models_dirs(spec: BuildSpec) -> tuple[str, ...]:
    return (spec.backend_models_dir,) if spec.backend_models_dir else BACKEND_MODELS_DIRS


def _example_script(spec: BuildSpec) -> str:
    """The conversion script the spec runs, relative to the examples directory."""
    if spec.quantization in CALIBRATED_QUANTIZATIONS:
        return "quantization/quantize.py"
    return f"{FAMILY_EXAMPLES[spec.family]}/convert_checkpoint.py"


def find_examples_dir(spec: BuildSpec) -> Path:
    """The first examples directory holding the spec's conversion script; BuildError naming every path tried."""
    script = _example_script(spec)
    tried = [Path(d) / script for d in examples_dirs(spec)]
    for path in tried:
        if path.is_file():
            return path.parents[len(Path(script).parts) - 1]
    raise BuildError(f"the build image has no {script}: looked for {', '.join(map(str, tried))}",
                     hint="run the build in the TensorRT-LLM build image (docker/Dockerfile.build), or set the "
                          "spec's examples_dir to the directory of TensorRT-LLM's examples in your image")


def find_backend_models_dir(spec: BuildSpec) -> Path:
    """The first tensorrtllm_backend models directory with every template and model.py the release takes."""
    wanted = [f"{m}/config.pbtxt" for m in TRITON_MODELS] + [f"{m}/1/model.py" for m in ("preprocessing",
                                                                                          "postprocessing")]
    looked: list[str] = []
    for d in backend_models_dirs(spec):
        missing = [str(Path(d) / w) for w in wanted if not (Path(d) / w).is_file()]
        if not missing:
            return Path(d)
        looked.extend(missing)
    raise BuildError(f"the build image has no tensorrtllm_backend models to take the ensemble from: missing "
                     f"{', '.join(looked)}",
                     hint="run the build in the TensorRT-LLM build image (docker/Dockerfile.build, the serving "
                          "image's tag), or set the spec's backend_models_dir to its all_models/"
                          "inflight_batcher_llm directory")


# -- the project's checks on the rendered ensemble --------------------------------------------------------


def check_ensemble_configs(spec: BuildSpec, configs: Mapping[str, ModelConfig], version: int) -> None:
    """What the rollout relies on, whatever the image's templates hold (BuildError naming the model and value)."""
    from triton_rollout.triton.config import mc

    def want(model: str, what: str, got: object, expected: object) -> None:
        if got != expected:
            raise BuildError(f"rendered {model}/config.pbtxt: {what} is {got!r}, expected {expected!r}",
                             hint="the image's template or the build spec disagree with what the release needs")

    want("release", "the Triton models", sorted(configs), sorted(TRITON_MODELS))
    for name, cfg in configs.items():
        want(name, "max_batch_size", cfg.max_batch_size, spec.max_batch_size)
    engine = spec.engine_dir(version)

    def param(model: str, key: str) -> str | None:
        p = configs[model].parameters.get(key)
        return None if p is None else p.string_value

    trt = configs["tensorrt_llm"]
    want("tensorrt_llm", "backend", trt.backend, "tensorrtllm")
    want("tensorrt_llm", "gpt_model_path", param("tensorrt_llm", "gpt_model_path"), engine)
    want("tensorrt_llm", "gpt_model_type", param("tensorrt_llm", "gpt_model_type"), spec.batching_strategy)
    want("tensorrt_llm", "decoupled", trt.model_transaction_policy.decoupled, spec.decoupled)
    for name in ("preprocessing", "postprocessing"):
        want(name, "tokenizer_dir", param(name, "tokenizer_dir"), spec.template_values(name, version)["tokenizer_dir"])
    if param("preprocessing", "gpt_model_path") is not None:
        want("preprocessing", "gpt_model_path", param("preprocessing", "gpt_model_path"), engine)
    ens = configs["ensemble"]
    types = {t.name: mc.DataType.Name(t.data_type) for t in ens.input}
    for tensor, dtype in GENERATE_INPUTS.items():
        want("ensemble", f"input {tensor}'s data_type", types.get(tensor), dtype)
    want("ensemble", f"has output {GENERATE_OUTPUT}", GENERATE_OUTPUT in {t.name for t in ens.output}, True)


# -- steps -----------------------------------------------------------------------------------------------


def _convert_step(spec: BuildSpec, paths: BuildPaths) -> Step:
    common = ["--model_dir", str(paths.checkpoint), "--output_dir", str(paths.converted),
              "--dtype", spec.dtype, "--tp_size", str(spec.tp_size), "--pp_size", str(spec.pp_size)]
    script = f"{_examples_dir_for_steps(spec)}/{_example_script(spec)}"
    if spec.quantization in CALIBRATED_QUANTIZATIONS:
        # quantize.py's --qformat names are the spec's quantization values (fp8, int4_awq).
        argv = [interpreter(spec), script, *common,
                "--qformat", spec.quantization, "--calib_size", str(spec.calib_size)]
        if spec.calib_dataset:
            argv += ["--calib_dataset", spec.calib_dataset]
        if spec.kv_cache_dtype != "auto":
            argv += ["--kv_cache_dtype", spec.kv_cache_dtype]
        return Step("quantize", tuple(argv))
    argv = [interpreter(spec), script, *common]
    if spec.quantization in _WEIGHT_ONLY:
        argv += ["--use_weight_only", "--weight_only_precision", _WEIGHT_ONLY[spec.quantization]]
    if spec.kv_cache_dtype == "int8":
        argv += ["--int8_kv_cache"]
    return Step("convert", tuple(argv))


def _examples_dir_for_steps(spec: BuildSpec) -> str:
    """The probed examples directory; off the image (a dry run elsewhere) the first candidate."""
    try:
        return str(find_examples_dir(spec))
    except BuildError:
        return examples_dirs(spec)[0]


def _build_step(spec: BuildSpec, paths: BuildPaths) -> Step:
    def onoff(flag: bool) -> str:
        return "enable" if flag else "disable"

    argv = [
        spec.trtllm_build,
        "--checkpoint_dir", str(paths.converted),
        "--output_dir", str(paths.engine),
        "--gemm_plugin", spec.gemm_plugin,
        "--gpt_attention_plugin", spec.gpt_attention_plugin,
        "--max_batch_size", str(spec.max_batch_size),
        "--max_input_len", str(spec.max_input_len),
        "--max_seq_len", str(spec.max_seq_len),
        "--max_beam_width", str(spec.max_beam_width),
        "--paged_kv_cache", onoff(spec.paged_kv_cache),
        "--remove_input_padding", onoff(spec.remove_input_padding),
        "--context_fmha", onoff(spec.context_fmha),
        "--workers", str(spec.workers),
    ]
    if spec.max_num_tokens is not None:
        argv += ["--max_num_tokens", str(spec.max_num_tokens)]
    return Step("trtllm-build", tuple(argv))


# -- probes ----------------------------------------------------------------------------------------------


def _capture(argv: list[str] | tuple[str, ...], timeout: float = 120) -> tuple[int, str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, (proc.stdout or "") + (proc.stderr or "")


def probe_trtllm_version(spec: BuildSpec) -> str:
    """tensorrt_llm.__version__ from the build image's interpreter (its import banner is skipped)."""
    python = interpreter(spec)
    rc, text = _capture([python, "-c", TRTLLM_VERSION_PROBE])
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    version = lines[-1] if lines else ""
    if rc != 0 or not _VERSION.fullmatch(version):
        raise BuildError(
            f"cannot read the TensorRT-LLM version with `{python} -c '{TRTLLM_VERSION_PROBE}'` "
            f"(exit {rc}): {' | '.join(lines[-3:]) or 'no output'}",
            hint="run the build in the TensorRT-LLM build image (docker/Dockerfile.build), or set the spec's "
                 "python field to the interpreter that has tensorrt_llm",
        )
    return version


def probe_compute_capability(spec: BuildSpec) -> str:
    """The GPU compute capability the engine is built for: nvidia-smi, else torch. All GPUs must agree."""
    rc, text = _capture(NVIDIA_SMI_PROBE)
    values = sorted({normalize_compute_capability(ln) for ln in text.splitlines() if ln.strip()}) if rc == 0 else []
    source = " ".join(NVIDIA_SMI_PROBE)
    if not values:
        rc2, text2 = _capture([interpreter(spec), "-c", TORCH_PROBE])
        lines = [ln.strip() for ln in text2.splitlines() if ln.strip()]
        if rc2 == 0 and lines:
            values, source = [normalize_compute_capability(lines[-1])], "torch.cuda.get_device_capability"
        else:
            raise BuildError(
                f"no GPU visible to the build: `{source}` exited {rc} ({text.strip()[:200] or 'no output'}) and "
                f"torch could not tell either ({(lines[-1] if lines else 'no output')[:200]})",
                hint="the build pod must request nvidia.com/gpu (tp x pp) on a GPU node with the NVIDIA "
                     "device plugin",
            )
    if len(values) > 1:
        raise BuildError(f"the build sees GPUs of different compute capabilities {values} ({source}); "
                         "an engine is tied to one",
                         hint="schedule the build on a node with one GPU type (kubernetes.gpu_product)")
    if not re.fullmatch(r"[0-9]+\.[0-9]", values[0]):
        raise BuildError(f"unexpected compute capability {values[0]!r} from {source}")
    return values[0]
