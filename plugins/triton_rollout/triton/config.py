"""config.pbtxt and model directories: parsed with protobuf against Triton's own ModelConfig message.

tritonclient ships the generated ``model_config_pb2`` module, so a config is read and written with
``text_format`` exactly as the server does: a typo fails here, with its line and column, before any
load is attempted. Layout on the PVC (see pvc.py)::

    repository/<model>/config.pbtxt        the promoted config (pins the promoted version)
    repository/<model>/<version>/          an immutable published version, with its own config.pbtxt
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from triton_rollout.errors import ConfigError
from triton_rollout.pvc.layout import atomic_write_bytes

ModelConfig = mc.ModelConfig
CONFIG_NAME = "config.pbtxt"
# Parameter that tells the TensorRT-LLM backend where the engine is (not the version directory).
ENGINE_PARAM = "gpt_model_path"
_VERSION_DIR = re.compile(r"^[1-9][0-9]*$")
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")
# The file each backend loads from a version directory when default_model_filename is not set.
_BACKEND_FILES = {
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "tensorrt": "model.plan",
    "openvino": "model.xml",
}
_PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
}


class ModelConfigError(ConfigError):
    """A config.pbtxt or model directory that Triton would refuse or misread."""

    default_hint = "fix the release's config.pbtxt / files and publish a new version; nothing was loaded"


def parse_config(text: str, *, source: str = "config.pbtxt") -> mc.ModelConfig:
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{source}: not a valid Triton model config: {exc}") from None
    return cfg


def read_config(path: Path) -> mc.ModelConfig:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ModelConfigError(f"{path} is missing") from None
    except UnicodeDecodeError as exc:  # protobuf's text format is UTF-8
        raise ModelConfigError(f"{path}: not a valid Triton model config: not UTF-8 text ({exc})") from None
    except OSError as exc:  # a directory, or unreadable
        raise ModelConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return parse_config(text, source=str(path))


def to_text(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def to_json(cfg: mc.ModelConfig) -> str:
    """The form Triton's load API takes as a config override (the whole config, not a patch)."""
    return json_format.MessageToJson(cfg, preserving_proto_field_name=True, indent=None)


def write_config(path: Path, cfg: mc.ModelConfig) -> None:
    atomic_write_bytes(path, to_text(cfg).encode())


def backend_of(cfg: mc.ModelConfig) -> str:
    if cfg.platform == "ensemble":
        return "ensemble"
    return cfg.backend or _PLATFORM_BACKENDS.get(cfg.platform, cfg.platform)


def is_ensemble(cfg: mc.ModelConfig) -> bool:
    return cfg.platform == "ensemble"


def dependencies(cfg: mc.ModelConfig) -> list[str]:
    """Models an ensemble calls, in step order (empty for other models)."""
    seen: list[str] = []
    for step in cfg.ensemble_scheduling.step:
        if step.model_name not in seen:
            seen.append(step.model_name)
    return seen


def pinned(
    cfg: mc.ModelConfig,
    name: str,
    versions: list[int],
    *,
    engine_dir: str | None = None,
    step_versions: dict[str, int] | None = None,
    step_names: dict[str, str] | None = None,
) -> mc.ModelConfig:
    """A copy of ``cfg`` that serves exactly ``versions``.

    ``engine_dir`` replaces gpt_model_path (TensorRT-LLM reads the engine there, not from the version
    directory). ``step_versions`` pins an ensemble's steps so ensemble version N calls version N of
    each composing model instead of whatever is newest; ``step_names`` points steps at other names of
    those models (a candidate's shadow names).
    """
    out = mc.ModelConfig()
    out.CopyFrom(cfg)
    out.name = name
    out.version_policy.Clear()
    out.version_policy.specific.versions.extend(sorted(set(versions)))
    if engine_dir is not None and (ENGINE_PARAM in out.parameters or backend_of(out) == "tensorrtllm"):
        out.parameters[ENGINE_PARAM].string_value = engine_dir
    for step in out.ensemble_scheduling.step:
        called = step.model_name
        if step_versions and called in step_versions:
            step.model_version = step_versions[called]
        if step_names and called in step_names:
            step.model_name = step_names[called]
    return out


def pinned_versions(cfg: mc.ModelConfig) -> list[int]:
    return sorted(cfg.version_policy.specific.versions) if cfg.version_policy.HasField("specific") else []


def unfilled_placeholders(cfg: mc.ModelConfig) -> list[str]:
    """``${var}`` left in parameters: TRT-LLM's templates keep unfilled ones silently."""
    return sorted(
        f"{key}={p.string_value}" for key, p in cfg.parameters.items() if _PLACEHOLDER.search(p.string_value)
    )


@dataclass
class ModelDir:
    name: str
    path: Path
    versions: list[int] = field(default_factory=list)
    promoted_config: mc.ModelConfig | None = None


def version_config_path(model_dir: Path, version: int) -> Path:
    return model_dir / str(version) / CONFIG_NAME


def validate_version(model_dir: Path, version: int, *, engine_dir: str | None = None) -> mc.ModelConfig:
    """Check one published version before it is loaded; returns its parsed config.

    Fails on: missing/unparseable config.pbtxt, a name that disagrees with the directory, the backend's
    model file missing, unfilled ``${...}`` placeholders (after the engine path is filled in).
    """
    name = model_dir.name
    vdir = model_dir / str(version)
    if not vdir.is_dir():
        raise ModelConfigError(f"model {name!r} version {version}: {vdir} does not exist",
                               hint="sync the release to the PVC first (python -m triton_rollout sync)")
    cfg = read_config(vdir / CONFIG_NAME)
    if cfg.name and cfg.name != name:
        raise ModelConfigError(
            f"{vdir / CONFIG_NAME}: name {cfg.name!r} differs from its directory {name!r} (Triton refuses it)"
        )
    backend = backend_of(cfg)
    if not backend:
        raise ModelConfigError(f"{vdir / CONFIG_NAME}: neither backend nor platform is set")
    expected = cfg.default_model_filename or _BACKEND_FILES.get(backend)
    if expected and backend != "ensemble" and not (vdir / expected).exists():
        raise ModelConfigError(f"model {name!r} version {version}: backend {backend!r} needs {vdir / expected}")
    if is_ensemble(cfg) and not cfg.ensemble_scheduling.step:
        raise ModelConfigError(f"{vdir / CONFIG_NAME}: ensemble without ensemble_scheduling steps")
    check = pinned(cfg, name, [version], engine_dir=engine_dir)
    left = unfilled_placeholders(check)
    if left:
        raise ModelConfigError(
            f"{vdir / CONFIG_NAME}: unfilled template placeholders {', '.join(left)}",
            hint="fill every ${...} when the release is built (fill_template.py); Triton would keep them as text",
        )
    return cfg


def scan_model_dir(model_dir: Path) -> ModelDir:
    """Versions of one model directory; refuses version names Triton would silently ignore."""
    info = ModelDir(name=model_dir.name, path=model_dir)
    for child in sorted(model_dir.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if not _VERSION_DIR.fullmatch(child.name):
            raise ModelConfigError(
                f"{child}: version directories must be positive integers without leading zeros; "
                "Triton ignores this one",
                hint="rename or remove it",
            )
        info.versions.append(int(child.name))
    info.versions.sort()
    promoted = model_dir / CONFIG_NAME
    if promoted.is_file():
        info.promoted_config = read_config(promoted)
    return info


def list_models(repository: Path) -> dict[str, ModelDir]:
    """Every model directory in a repository with its published versions."""
    if not repository.is_dir():
        return {}
    return {
        d.name: scan_model_dir(d)
        for d in sorted(repository.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


def load_order(configs: dict[str, mc.ModelConfig]) -> list[str]:
    """Models in dependency order: what an ensemble calls loads before the ensemble."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ModelConfigError(f"ensemble dependency cycle through {name!r}")
        visiting.add(name)
        for dep in dependencies(configs[name]):
            if dep in configs:
                visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in sorted(configs):
        visit(name)
    return order
