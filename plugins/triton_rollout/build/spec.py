"""The typed engine build spec: what to build from a checkpoint, and the exact commands and configs it renders.

One spec per model (JSON or YAML; in the per-model config under ``build``), validated once with errors
that name the field. From it come:

- the build steps of its ``backend``'s builder (build/builders.py; TensorRT-LLM's in build/trtllm.py:
  the family's checkpoint conversion or ``quantization/quantize.py``, then ``trtllm-build``);
- the config.pbtxt files of its builder's Triton models (TensorRT-LLM: the tensorrtllm_backend ensemble
  ensemble, preprocessing, tensorrt_llm, postprocessing, from the build image's own templates), filled
  as upstream's fill step does but refusing what would only fail at load time (build/templates.py), then
  checked: the generic checks here, the builder's own (``Builder.check_configs``) on top.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triton_rollout.build.builders import Builder, BuildPaths, ModelFiles, Step, get_builder, registered
from triton_rollout.build.templates import fill_template

# The config's validators: a spec error reads like any other config error (field path first).
from triton_rollout.config.validators import boolean, check_keys, fail, field_names, integer, mapping
from triton_rollout.errors import BuildError, ConfigError

if TYPE_CHECKING:
    from triton_rollout.triton.config import ModelConfig

BACKEND_TRTLLM = "tensorrt-llm"
DTYPES = ("float16", "bfloat16", "float32")
# none / weight-only go through convert_checkpoint.py; fp8 / int4_awq through quantize.py (calibration).
QUANTIZATIONS = ("none", "int8_weight_only", "int4_weight_only", "fp8", "int4_awq")
CALIBRATED_QUANTIZATIONS = ("fp8", "int4_awq")
KV_CACHE_DTYPES = ("auto", "int8", "fp8")
PLUGIN_VALUES = ("auto", "disable", "float16", "bfloat16", "float32")
BATCHING_STRATEGIES = ("inflight_fused_batching", "V1")
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
TRITON_MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing")
DEFAULT_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "vocab.json", "merges.txt", "*.tiktoken",
)
# Paths land inside quoted pbtxt strings and on command lines: keep them to a safe alphabet.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9._/+-]+$")


def _choice(value: object, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise fail(path, f"must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _word(value: object, path: str) -> str:
    if not isinstance(value, str) or not _SAFE_WORD.fullmatch(value):
        raise fail(path, f"must be a non-empty string of letters, digits and ._/+-, got {value!r}")
    return value


def _abs_path(value: object, path: str) -> str:
    if not isinstance(value, str) or not _SAFE_PATH.fullmatch(value) or ".." in value.split("/"):
        raise fail(path, f"must be an absolute path of letters, digits and ._/- without '..', got {value!r}")
    return value.rstrip("/") or "/"


def _pb_bool(value: bool) -> str:
    return "true" if value else "false"


@dataclass(frozen=True)
class BuildSpec:
    """How one model's checkpoint becomes an engine release. Validated at construction."""

    family: str
    backend: str = BACKEND_TRTLLM
    dtype: str = "float16"
    quantization: str = "none"
    kv_cache_dtype: str = "auto"
    tp_size: int = 1
    pp_size: int = 1
    # trtllm-build limits (fixed in the engine; a request beyond them is refused at serve time).
    max_batch_size: int = 8
    max_input_len: int = 1024
    max_output_len: int = 1024
    max_num_tokens: int | None = None
    max_beam_width: int = 1
    gemm_plugin: str = "auto"
    gpt_attention_plugin: str = "auto"
    paged_kv_cache: bool = True
    remove_input_padding: bool = True
    context_fmha: bool = True
    workers: int = 1
    calib_size: int = 512
    calib_dataset: str | None = None
    # Serving settings rendered into the ensemble's config.pbtxt files.
    batching_strategy: str = "inflight_fused_batching"
    batch_scheduler_policy: str = "guaranteed_no_evict"
    kv_cache_free_gpu_mem_fraction: float = 0.9
    enable_kv_cache_reuse: bool = False
    enable_chunked_context: bool = False
    decoupled: bool = False
    exclude_input_in_output: bool = True
    max_queue_delay_microseconds: int = 0
    preprocessing_instance_count: int = 1
    postprocessing_instance_count: int = 1
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    tokenizer_files: tuple[str, ...] = DEFAULT_TOKENIZER_FILES
    # Where Triton mounts the PVC's repository/ (KubernetesConfig.triton_repository_path).
    triton_repository: str = "/models"
    # Tools inside the build image (nvcr.io/nvidia/tritonserver:<tag>-trtllm-python-py3). None: the builder
    # probes the image's known locations at build time (build/trtllm.py) and fails naming them.
    python: str | None = None
    examples_dir: str | None = None
    trtllm_build: str = "trtllm-build"
    backend_models_dir: str | None = None
    _path: str = field(default="build", repr=False, compare=False)

    def __post_init__(self) -> None:
        p = self._path
        builder = get_builder(self.backend, f"{p}.backend")
        if self.family not in builder.families:
            others = [b.backend for b in registered().values() if self.family in b.families]
            hint = f" (family {self.family!r} needs backend {others[0]!r})" if others else ""
            raise fail(f"{p}.family", f"must be one of {', '.join(builder.families)} for backend {self.backend!r}; "
                                      f"got {self.family!r}{hint}")
        _choice(self.dtype, f"{p}.dtype", DTYPES)
        _choice(self.quantization, f"{p}.quantization", QUANTIZATIONS)
        _choice(self.kv_cache_dtype, f"{p}.kv_cache_dtype", KV_CACHE_DTYPES)
        if self.kv_cache_dtype == "fp8" and self.quantization not in CALIBRATED_QUANTIZATIONS:
            raise fail(f"{p}.kv_cache_dtype", "fp8 KV cache is produced by quantize.py: set quantization to "
                                              f"fp8 or int4_awq, got quantization {self.quantization!r}")
        integer(self.tp_size, f"{p}.tp_size", 1, 64)
        integer(self.pp_size, f"{p}.pp_size", 1, 64)
        integer(self.max_batch_size, f"{p}.max_batch_size", 1, 4096)
        integer(self.max_input_len, f"{p}.max_input_len", 1)
        integer(self.max_output_len, f"{p}.max_output_len", 1)
        if self.max_num_tokens is not None:
            integer(self.max_num_tokens, f"{p}.max_num_tokens", 1)
        integer(self.max_beam_width, f"{p}.max_beam_width", 1, 64)
        _choice(self.gemm_plugin, f"{p}.gemm_plugin", PLUGIN_VALUES)
        _choice(self.gpt_attention_plugin, f"{p}.gpt_attention_plugin", PLUGIN_VALUES)
        for name in ("paged_kv_cache", "remove_input_padding", "context_fmha", "enable_kv_cache_reuse",
                     "enable_chunked_context", "decoupled", "exclude_input_in_output", "add_special_tokens",
                     "skip_special_tokens"):
            boolean(getattr(self, name), f"{p}.{name}")
        integer(self.workers, f"{p}.workers", 1, 64)
        integer(self.calib_size, f"{p}.calib_size", 1)
        if self.calib_dataset is not None:
            _word(self.calib_dataset, f"{p}.calib_dataset")
        _choice(self.batching_strategy, f"{p}.batching_strategy", BATCHING_STRATEGIES)
        _choice(self.batch_scheduler_policy, f"{p}.batch_scheduler_policy", SCHEDULER_POLICIES)
        frac = self.kv_cache_free_gpu_mem_fraction
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 < frac < 1:
            raise fail(f"{p}.kv_cache_free_gpu_mem_fraction", f"must be a number between 0 and 1, got {frac!r}")
        integer(self.max_queue_delay_microseconds, f"{p}.max_queue_delay_microseconds", 0)
        integer(self.preprocessing_instance_count, f"{p}.preprocessing_instance_count", 1, 64)
        integer(self.postprocessing_instance_count, f"{p}.postprocessing_instance_count", 1, 64)
        files = self.tokenizer_files
        if isinstance(files, str) or not isinstance(files, list | tuple) or not files:
            raise fail(f"{p}.tokenizer_files", "must be a non-empty list of file names or glob patterns")
        for i, pattern in enumerate(files):
            if not isinstance(pattern, str) or not pattern or "/" in pattern or pattern.startswith("."):
                raise fail(f"{p}.tokenizer_files[{i}]", f"must be a top-level file name or pattern, got {pattern!r}")
        object.__setattr__(self, "tokenizer_files", tuple(files))
        object.__setattr__(self, "triton_repository", _abs_path(self.triton_repository, f"{p}.triton_repository"))
        if self.python is not None:
            _word(self.python, f"{p}.python")
        for name in ("examples_dir", "backend_models_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _abs_path(getattr(self, name), f"{p}.{name}"))
        _word(self.trtllm_build, f"{p}.trtllm_build")
        builder.validate(self, p)

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: object, path: str = "build") -> BuildSpec:
        data = mapping(data, path)
        check_keys(data, field_names(cls), path)
        if "family" not in data:
            raise fail(f"{path}.family", "is required")
        return cls(**dict(data), _path=path)

    @classmethod
    def from_json(cls, text: str, *, source: str = "--spec-json") -> BuildSpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{source} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> BuildSpec:
        """A spec file: JSON, or YAML (.yaml/.yml) when PyYAML is installed."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read build spec {p}: {exc.strerror}") from None
        if p.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"{p} is YAML but PyYAML is not installed; write the spec as JSON") from None
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"build spec {p} is not valid YAML: {exc}") from None
            return cls.from_dict(data)
        return cls.from_json(text, source=f"build spec {p}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        out["tokenizer_files"] = list(self.tokenizer_files)
        return out

    # -- derived facts -----------------------------------------------------------------------------
    @property
    def builder(self) -> Builder:
        """The builder of this spec's backend (build/builders.py)."""
        return get_builder(self.backend)

    @property
    def gpus(self) -> int:
        """GPUs the build pod asks for (TensorRT-LLM: one per rank, tp x pp)."""
        return self.builder.gpus(self)

    @property
    def max_seq_len(self) -> int:
        return self.max_input_len + self.max_output_len

    # -- commands ----------------------------------------------------------------------------------
    def commands(self, paths: BuildPaths) -> list[Step]:
        """The backend's steps (TensorRT-LLM: the conversion, then trtllm-build), with every flag spelled out."""
        return self.builder.steps(self, paths)

    # -- config.pbtxt ------------------------------------------------------------------------------
    def engine_dir(self, version: int) -> str:
        """gpt_model_path as Triton sees it: the tensorrt_llm version directory (the loader pins it too)."""
        return f"{self.triton_repository.rstrip('/')}/tensorrt_llm/{version}"

    def template_values(self, triton_model: str, version: int) -> dict[str, str]:
        """Every template variable the project sets, as text, for one Triton model of release ``version``.

        Placeholders of the image's templates not named here stay unset (build/templates.py), as with
        upstream's fill step: the image's code then uses its own defaults.
        """
        repo = self.triton_repository.rstrip("/")
        return {
            "triton_backend": "tensorrtllm",
            "triton_max_batch_size": str(self.max_batch_size),
            "decoupled_mode": _pb_bool(self.decoupled),
            "max_queue_delay_microseconds": str(self.max_queue_delay_microseconds),
            "batching_strategy": self.batching_strategy,
            "engine_dir": self.engine_dir(version),
            "max_beam_width": str(self.max_beam_width),
            "batch_scheduler_policy": self.batch_scheduler_policy,
            "kv_cache_free_gpu_mem_fraction": f"{self.kv_cache_free_gpu_mem_fraction:g}",
            "enable_kv_cache_reuse": _pb_bool(self.enable_kv_cache_reuse),
            "enable_chunked_context": _pb_bool(self.enable_chunked_context),
            "exclude_input_in_output": _pb_bool(self.exclude_input_in_output),
            "normalize_log_probs": "true",
            # Each tokenizer-using model ships its own copy, so its directory is its own version dir.
            "tokenizer_dir": f"{repo}/{triton_model}/{version}/tokenizer",
            "add_special_tokens": _pb_bool(self.add_special_tokens),
            "skip_special_tokens": _pb_bool(self.skip_special_tokens),
            "preprocessing_instance_count": str(self.preprocessing_instance_count),
            "postprocessing_instance_count": str(self.postprocessing_instance_count),
            # Text-only families: preprocessing reads visual_model_path unconditionally, "" as none (facts file).
            "visual_model_path": "",
            # The data_type of the logits outputs: float32 unless an engine is built to gather them otherwise.
            "logits_datatype": "TYPE_FP32",
            # Encoder-decoder engines only; the decoder-only tensorrt_llm config still needs a valid type.
            "encoder_input_features_data_type": "TYPE_FP16",
        }

    def render_configs(self, version: int, files: ModelFiles) -> dict[str, str]:
        """config.pbtxt text per Triton model of ``files``, filled (build/templates.py), parsed and checked.

        Generic checks: each config names its own model and an ensemble's steps wire tensors that exist
        (and every required input of each step's model); then the builder's ``check_configs``.
        """
        from triton_rollout.triton.config import parse_config

        out: dict[str, str] = {}
        parsed: dict[str, ModelConfig] = {}
        for name, text in files.templates.items():
            source = files.source(name)
            required = None if files.required_parameters is None else files.required_parameters.get(name, frozenset())
            rendered = fill_template(text, self.template_values(name, version), source=source,
                                     required_parameters=required)
            cfg = parse_config(rendered, source=f"rendered {source}")
            if cfg.name and cfg.name != name:
                raise BuildError(f"rendered {source} names model {cfg.name!r}, not {name!r}",
                                 hint="the template's name must match its Triton model directory")
            out[name], parsed[name] = rendered, cfg
        check_ensemble_wiring(parsed)
        self.builder.check_configs(self, parsed, version)
        return out


def check_ensemble_wiring(configs: Mapping[str, ModelConfig]) -> None:
    """Every ensemble step calls a shipped model, maps only tensors it has and feeds all its required inputs."""
    for name, cfg in configs.items():
        for step in cfg.ensemble_scheduling.step:
            model = configs.get(step.model_name)
            where = f"rendered {name}/config.pbtxt step {step.model_name!r}"
            if model is None:
                raise BuildError(f"{where}: the release ships no model {step.model_name!r}",
                                 hint=f"ship it, or fix the ensemble's steps (models: {', '.join(sorted(configs))})")
            inputs, outputs = {t.name for t in model.input}, {t.name for t in model.output}
            unknown = sorted(set(step.input_map) - inputs) + sorted(set(step.output_map) - outputs)
            unfed = sorted(t.name for t in model.input if not t.optional and t.name not in step.input_map)
            if unknown or unfed:
                raise BuildError(f"{where}: maps tensor(s) the model lacks {unknown} and leaves required input(s) "
                                 f"unfed {unfed}", hint="the ensemble and its models come from different "
                                                        "templates: take them from the same image")
