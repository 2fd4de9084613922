"""The engine/runtime compatibility gate: refuse an engine Triton cannot load, before a byte is synced.

A TensorRT-LLM engine is serialized for one TensorRT-LLM version and one GPU compute capability; a
mismatch only shows at load time as a serialization error (tensorrtllm_backend#531), after the sync has
filled the PVC. The engine release's manifest records what it was built with (``compat``, written by
the build); the per-model config says what Triton serves with. The sync checks the two right after it
reads the manifest, so a mismatched release is refused with both values named and the PVC untouched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from triton_rollout.errors import ConfigError, IncompatibleEngine
from triton_rollout.release.manifest import Manifest

_CC = re.compile(r"^(?:sm_?)?([0-9]{1,2})\.?([0-9])$")


def normalize_compute_capability(value: str) -> str:
    """``9.0``, ``90``, ``sm_90`` and ``sm90`` all mean 9.0; anything else (e.g. ``cpu``) is kept as is."""
    text = value.strip().lower()
    m = _CC.fullmatch(text)
    if m:
        return f"{int(m.group(1))}.{m.group(2)}"
    return text


@dataclass(frozen=True)
class ServingCompat:
    """What the serving Triton runs: engines built for anything else are refused. None = not checked."""

    trtllm_version: str | None = None
    compute_capability: str | None = None
    _path: str = field(default="serving", repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("trtllm_version", "compute_capability"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"config field '{self._path}.{name}': must be a non-empty string, got {value!r}")

    @classmethod
    def from_dict(cls, data: object, path: str = "serving") -> ServingCompat:
        if not isinstance(data, Mapping):
            raise ConfigError(f"config field '{path}': must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"trtllm_version", "compute_capability"})
        if unknown:
            raise ConfigError(f"config field '{path}': unknown key(s) {unknown}; "
                              "allowed: ['compute_capability', 'trtllm_version']")
        return cls(data.get("trtllm_version"), data.get("compute_capability"), path)


def check_compat(manifest: Manifest, *, trtllm_version: str | None = None,
                 compute_capability: str | None = None) -> None:
    """Raise IncompatibleEngine when the release was built for another runtime than expected."""
    if not trtllm_version and not compute_capability:
        return
    what = f"engine release {manifest.model} v{manifest.version}"
    if manifest.compat is None:
        raise IncompatibleEngine(
            f"{what} records no compatibility facts (manifest field 'compat'), but Triton serves with "
            f"TensorRT-LLM {trtllm_version or 'any'} on compute capability {compute_capability or 'any'}",
            hint="build the engine with `python -m triton_rollout build`, which records them, or publish it "
                 "with --compat; nothing was written to the PVC",
        )
    problems = []
    if trtllm_version and manifest.compat.trtllm_version.strip() != trtllm_version.strip():
        problems.append(f"TensorRT-LLM version: built with {manifest.compat.trtllm_version}, "
                        f"Triton serves with {trtllm_version}")
    if compute_capability and (normalize_compute_capability(manifest.compat.compute_capability)
                               != normalize_compute_capability(compute_capability)):
        problems.append(f"GPU compute capability: built for {manifest.compat.compute_capability}, "
                        f"Triton runs on {compute_capability}")
    if problems:
        raise IncompatibleEngine(
            f"{what} cannot be served by this Triton; " + "; ".join(problems)
            + " (the engine would fail to deserialize at load); nothing was written to the PVC"
        )
