"""The TensorRT-LLM builder (built in): convert_checkpoint.py or quantize.py, then trtllm-build, on GPUs.

It runs in the build image (nvcr.io/nvidia/tritonserver:<tag>-trtllm-python-py3 layout): the probes read
the TensorRT-LLM version and the GPUs' compute capability, the steps are the examples' scripts with
every flag spelled out, and the release is the tensorrtllm_backend ensemble from this package's
templates with the tokenizer models' code from the image's backend models.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from triton_rollout.build.builders import BuildPaths, ModelFiles, RuntimeFacts, Step, register
from triton_rollout.build.spec import BACKEND_TRTLLM, CALIBRATED_QUANTIZATIONS, BuildSpec, package_templates
from triton_rollout.config.validators import fail
from triton_rollout.errors import BuildError
from triton_rollout.release.compat import normalize_compute_capability

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
        return RuntimeFacts(probe_trtllm_version(spec), probe_compute_capability(spec))

    def model_files(self, spec: BuildSpec, paths: BuildPaths) -> ModelFiles:
        code = {}
        for m in ("preprocessing", "postprocessing"):
            path = Path(spec.backend_models_dir) / m / "1" / "model.py"
            if not path.is_file():
                raise BuildError(f"{path} is missing: the tokenizer models' code comes from tensorrtllm_backend in "
                                 "the build image", hint="set the spec's backend_models_dir to its all_models/"
                                                         "inflight_batcher_llm directory")
            code[m] = path
        return ModelFiles(package_templates(), code)

    def write_extras(self, spec: BuildSpec, paths: BuildPaths) -> None:
        return None  # the ensemble's configs, code, tokenizer and engine are the whole release

    def describe_probe(self, spec: BuildSpec) -> list[str]:
        return [f"probe: {interpreter(spec)} -c {TRTLLM_VERSION_PROBE!r}",
                f"probe: {' '.join(NVIDIA_SMI_PROBE)}  (fallback: torch.cuda.get_device_capability)"]

    def describe_layout(self, spec: BuildSpec, paths: BuildPaths, version: int) -> list[str]:
        lines = [f"write: {paths.release}/{{preprocessing,postprocessing}}/model.py from "
                 f"{spec.backend_models_dir}/<model>/1/model.py"]
        for name, text in spec.render_configs(version).items():
            lines.append(f"write: {paths.release}/{name}/config.pbtxt:")
            lines.extend(f"    {t}" for t in text.rstrip("\n").splitlines())
        return lines


register(TensorRTLLMBuilder())


# -- steps -----------------------------------------------------------------------------------------------


def _convert_step(spec: BuildSpec, paths: BuildPaths) -> Step:
    common = ["--model_dir", str(paths.checkpoint), "--output_dir", str(paths.converted),
              "--dtype", spec.dtype, "--tp_size", str(spec.tp_size), "--pp_size", str(spec.pp_size)]
    if spec.quantization in CALIBRATED_QUANTIZATIONS:
        # quantize.py's --qformat names are the spec's quantization values (fp8, int4_awq).
        argv = [interpreter(spec), f"{spec.examples_dir}/quantization/quantize.py", *common,
                "--qformat", spec.quantization, "--calib_size", str(spec.calib_size)]
        if spec.calib_dataset:
            argv += ["--calib_dataset", spec.calib_dataset]
        if spec.kv_cache_dtype != "auto":
            argv += ["--kv_cache_dtype", spec.kv_cache_dtype]
        return Step("quantize", tuple(argv))
    script = f"{spec.examples_dir}/{FAMILY_EXAMPLES[spec.family]}/convert_checkpoint.py"
    argv = [interpreter(spec), script, *common]
    if spec.quantization in _WEIGHT_ONLY:
        argv += ["--use_weight_only", "--weight_only_precision", _WEIGHT_ONLY[spec.quantization]]
    if spec.kv_cache_dtype == "int8":
        argv += ["--int8_kv_cache"]
    return Step("convert", tuple(argv))


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
    if rc != 0 or not _VERSION.match(version):
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
    if not re.match(r"^[0-9]+\.[0-9]$", values[0]):
        raise BuildError(f"unexpected compute capability {values[0]!r} from {source}")
    return values[0]
