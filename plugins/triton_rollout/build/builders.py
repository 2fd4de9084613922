"""Engine builders behind one small protocol: what the build spec and the build runner need from a backend.

A build spec's ``backend`` names a builder. The runner is the same for every backend (probe, download the
checkpoint, run the steps, lay out the Triton models, publish); the builder supplies what differs: the
spec values it accepts, the GPUs it asks for, its steps, the compatibility facts its engines record, the
Triton model files its release ships, and how ``--dry-run`` describes the probe and the layout.

The TensorRT-LLM builder is built in (build/trtllm.py). A builder outside this package lives in a module
named in ``$TRITON_ROLLOUT_BUILDERS`` (comma-separated import paths); the module calls ``register()`` on
import. An environment variable rather than Python entry points because the builder must be found in
every process that validates or runs a spec (the Airflow DAG parse, the build pod, the CLI, the tests):
an image (Dockerfile ENV), a pod spec or a scheduler's environment sets a variable, while entry points
need each builder packaged and pip-installed into every one of those environments.
"""

from __future__ import annotations

import importlib
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from triton_rollout.config.validators import fail
from triton_rollout.errors import ConfigError

if TYPE_CHECKING:
    from triton_rollout.build.spec import BuildSpec
    from triton_rollout.triton.config import ModelConfig

BUILDERS_ENV = "TRITON_ROLLOUT_BUILDERS"
# Imported like the modules named in $TRITON_ROLLOUT_BUILDERS: each registers its builders on import.
BUILTIN_MODULES = ("triton_rollout.build.trtllm",)


@dataclass(frozen=True)
class Step:
    """One subprocess of the build, with the exact argv that runs (no shell)."""

    name: str
    argv: tuple[str, ...]

    def shell(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class BuildPaths:
    """Where a build works: the downloaded checkpoint, the converted checkpoint, the engine, the release."""

    workdir: Path

    @property
    def checkpoint(self) -> Path:
        return self.workdir / "checkpoint"

    @property
    def converted(self) -> Path:
        return self.workdir / "trtllm_checkpoint"

    @property
    def engine(self) -> Path:
        return self.workdir / "engine"

    @property
    def release(self) -> Path:
        return self.workdir / "release"


@dataclass(frozen=True)
class RuntimeFacts:
    """What the build's runtime is, recorded in the engine release's compat (what the sync gates on)."""

    trtllm_version: str
    compute_capability: str


@dataclass(frozen=True)
class ModelFiles:
    """The Triton model files a release ships besides the engine, by Triton model."""

    templates: Mapping[str, str]  # config.pbtxt templates, filled by BuildSpec.render_configs
    code: Mapping[str, Path]  # python-backend model.py files, copied as they are
    # Where the templates were read (named in errors and in the rendered configs' first line).
    template_sources: Mapping[str, str] | None = None
    # None: the builder's own templates, every placeholder required (build/templates.fill_template).
    # Otherwise the serving image's templates: per Triton model, the parameters its code cannot do without;
    # any other parameter left unfilled is left out.
    required_parameters: Mapping[str, frozenset[str]] | None = None

    def source(self, name: str) -> str:
        return (self.template_sources or {}).get(name, f"{name}/config.pbtxt")


class Builder(Protocol):
    """One backend's toolchain. Methods get the validated spec; ``paths`` is where the build works."""

    backend: str  # the spec's ``backend`` value
    families: tuple[str, ...]  # the spec ``family`` values it builds
    # Where preprocessing / postprocessing keep the checkpoint's tokenizer files, under their version
    # directory ("" = in it).
    tokenizer_dir: str

    def validate(self, spec: BuildSpec, path: str) -> None:
        """Refuse backend-specific values with a field error (``fail(f"{path}.<field>", ...)``)."""
        ...

    def gpus(self, spec: BuildSpec) -> int:
        """GPUs the build pod asks for (0: no GPU, no GPU node)."""
        ...

    def steps(self, spec: BuildSpec, paths: BuildPaths) -> list[Step]:
        """The subprocesses, in order, that turn ``paths.checkpoint`` into engine files in ``paths.engine``."""
        ...

    def probe(self, spec: BuildSpec) -> RuntimeFacts:
        """The runtime's compat facts, before anything is downloaded (BuildError when it cannot build)."""
        ...

    def model_files(self, spec: BuildSpec, paths: BuildPaths) -> ModelFiles:
        """Config templates and model code for the release (after the steps ran)."""
        ...

    def check_configs(self, spec: BuildSpec, configs: Mapping[str, ModelConfig], version: int) -> None:
        """The builder's checks on the rendered configs of release ``version`` (BuildError naming the problem)."""
        ...

    def write_extras(self, spec: BuildSpec, paths: BuildPaths) -> None:
        """Files beyond the common layout (e.g. golden smoke cases), once ``paths.release`` is laid out."""
        ...

    def describe_probe(self, spec: BuildSpec) -> list[str]:
        """The dry-run's ``probe:`` lines."""
        ...

    def describe_layout(self, spec: BuildSpec, paths: BuildPaths, version: int) -> list[str]:
        """The dry-run's ``write:`` lines for the config and model files of release ``version``."""
        ...


_registry: dict[str, Builder] = {}


def register(builder: Builder) -> None:
    """Make ``builder`` the one for its backend; a builder module calls this on import (and it stays)."""
    existing = _registry.get(builder.backend)
    if existing is not None and type(existing) is not type(builder):
        raise ConfigError(f"backend {builder.backend!r} has two builders: {_qualname(existing)} and "
                          f"{_qualname(builder)}", hint=f"name only one of their modules in {BUILDERS_ENV}")
    _registry[builder.backend] = builder


def _qualname(builder: Builder) -> str:
    return f"{type(builder).__module__}.{type(builder).__qualname__}"


def _builder_modules() -> tuple[str, ...]:
    """The modules named in $TRITON_ROLLOUT_BUILDERS."""
    return tuple(name.strip() for name in os.environ.get(BUILDERS_ENV, "").split(",") if name.strip())


def registered() -> dict[str, Builder]:
    """Every builder by backend: the built-in ones, then those of the modules in $TRITON_ROLLOUT_BUILDERS."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for module in _builder_modules():
        try:
            importlib.import_module(module)  # a no-op once imported
        except ImportError as exc:
            raise ConfigError(f"{BUILDERS_ENV} names module {module!r}, which cannot be imported: {exc}",
                              hint=f"put the module on PYTHONPATH (or install it), or remove it from "
                                   f"{BUILDERS_ENV}") from None
    return dict(_registry)


def get_builder(backend: object, path: str = "build.backend") -> Builder:
    """The builder of ``backend``; a field error at ``path`` naming the known backends when there is none."""
    known = registered()
    if not isinstance(backend, str) or backend not in known:
        value = os.environ.get(BUILDERS_ENV, "")
        source = f"{BUILDERS_ENV}={value!r}" if value.strip() else f"{BUILDERS_ENV} is unset"
        raise fail(path, f"must be one of {', '.join(sorted(known))}; got {backend!r} (a backend outside "
                         f"triton_rollout comes from a module named in {BUILDERS_ENV}, which registers it on "
                         f"import; {source})")
    return known[backend]
