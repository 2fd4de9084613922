"""Smoke tests of a loaded version, always addressed by version so they test the candidate itself.

- LLM models (inputs text_input and max_tokens): POST /v2/models/<m>/versions/<v>/generate, check a
  non-empty text_output, the model_version Triton reports, and a latency budget.
- Other models: inputs built from the model metadata (shapes with -1 replaced by 1, zeros or a short
  string by datatype), outputs checked by name, datatype and shape.
- Golden cases the release ships in a version directory as smoke.json are compared exactly:
  ``{"generate": [{"request": {...}, "expected": {"text_output": "..."}}],
     "infer": [{"inputs": {NAME: {"datatype", "shape", "data"}}, "expected": {NAME: {...}}}]}``

A failure is a SmokeTestFailed naming model, version, request and what differed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triton_rollout.errors import SmokeTestFailed, TritonError
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.steps import DEFAULT_LATENCY_BUDGET  # one default for the CLI flag and the library
from triton_rollout.triton.control import TritonControl
from triton_rollout.triton.shadow import shadow_name, shadow_version

GOLDEN_NAME = "smoke.json"
DEFAULT_PROMPT = "the "
DEFAULT_MAX_TOKENS = 8
_NUMPY_TYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


@dataclass
class SmokeCheck:
    model: str
    version: int
    kind: str  # generate | infer | golden-generate | golden-infer
    request: str
    seconds: float
    ok: bool = True
    detail: str = ""


@dataclass
class SmokeReport:
    model: str
    version: int
    checks: list[SmokeCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "ok": self.ok,
                "checks": [c.__dict__ for c in self.checks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmokeReport:
        return cls(model=data["model"], version=data["version"], checks=[SmokeCheck(**c) for c in data["checks"]])


def _fail(model: str, version: int, request: str, what: str) -> SmokeTestFailed:
    return SmokeTestFailed(f"smoke test of model {model!r} version {version} failed: request {request}: {what}")


def is_llm(metadata: dict[str, Any]) -> bool:
    names = {i["name"] for i in metadata.get("inputs", [])}
    return {"text_input", "max_tokens"} <= names


def check_generate(control: TritonControl, model: str, version: int, payload: dict[str, Any], *,
                   expected_text: str | None = None, budget_s: float = DEFAULT_LATENCY_BUDGET) -> SmokeCheck:
    request = f"POST /v2/models/{model}/versions/{version}/generate {json.dumps(payload)}"
    t0 = time.monotonic()
    try:
        resp = control.generate(model, payload, version=version)
    except TritonError as exc:
        raise _fail(model, version, request, f"Triton answered an error: {exc.message}") from exc
    took = time.monotonic() - t0
    text = resp.get("text_output")
    if not isinstance(text, str) or not text.strip():
        raise _fail(model, version, request, f"empty or missing text_output in {json.dumps(resp)[:300]}")
    if str(resp.get("model_version")) != str(version):
        raise _fail(model, version, request, f"answered by model_version {resp.get('model_version')!r}")
    if expected_text is not None and text != expected_text:
        raise _fail(model, version, request, f"text_output {text!r} differs from the golden {expected_text!r}")
    if took > budget_s:
        raise _fail(model, version, request, f"took {took:.2f}s, over the latency budget of {budget_s:.2f}s")
    kind = "golden-generate" if expected_text is not None else "generate"
    return SmokeCheck(model, version, kind, request, round(took, 4), detail=f"text_output={text!r}")


def _dims(shape: list[Any]) -> list[int]:
    return [1 if int(d) < 0 else int(d) for d in shape]


def _synth(datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        return np.full(shape, b"smoke", dtype=np.object_)
    if datatype not in _NUMPY_TYPES:
        raise SmokeTestFailed(f"cannot synthesize an input of datatype {datatype}",
                              hint="ship golden cases (smoke.json) with the release for this model")
    return np.zeros(shape, dtype=_NUMPY_TYPES[datatype])


def _shape_ok(actual: list[int], declared: list[Any]) -> bool:
    if len(actual) != len(declared):
        return False
    return all(int(d) < 0 or int(d) == a for a, d in zip(actual, declared, strict=True))


def check_infer(control: TritonControl, model: str, version: int, metadata: dict[str, Any], *,
                inputs: dict[str, dict[str, Any]] | None = None, expected: dict[str, dict[str, Any]] | None = None,
                budget_s: float = DEFAULT_LATENCY_BUDGET) -> SmokeCheck:
    import tritonclient.http as httpclient

    tensors = []
    described = {}
    for spec in metadata.get("inputs", []):
        name, datatype = spec["name"], spec["datatype"]
        if inputs is not None:
            given = inputs[name]
            arr = np.array(given["data"], dtype=_NUMPY_TYPES[given["datatype"]]).reshape(given["shape"])
        else:
            arr = _synth(datatype, _dims(spec["shape"]))
        t = httpclient.InferInput(name, list(arr.shape), datatype)
        t.set_data_from_numpy(arr)
        tensors.append(t)
        described[name] = f"{datatype}{list(arr.shape)}"
    request = f"infer /v2/models/{model}/versions/{version}/infer inputs {described}"
    t0 = time.monotonic()
    try:
        result = control.infer(model, version, tensors)
    except TritonError as exc:
        raise _fail(model, version, request, f"Triton answered an error: {exc.message}") from exc
    took = time.monotonic() - t0
    resp = result.get_response()
    if str(resp.get("model_version")) != str(version):
        raise _fail(model, version, request, f"answered by model_version {resp.get('model_version')!r}")
    got = {o["name"]: o for o in resp.get("outputs", [])}
    for spec in metadata.get("outputs", []):
        name = spec["name"]
        if name not in got:
            raise _fail(model, version, request, f"output {name!r} missing (got {sorted(got)})")
        if got[name]["datatype"] != spec["datatype"]:
            raise _fail(model, version, request,
                        f"output {name!r} has datatype {got[name]['datatype']}, metadata says {spec['datatype']}")
        if not _shape_ok(got[name]["shape"], spec["shape"]):
            raise _fail(model, version, request,
                        f"output {name!r} has shape {got[name]['shape']}, metadata says {spec['shape']}")
    for name, want in (expected or {}).items():
        arr = result.as_numpy(name)
        if arr is None:
            raise _fail(model, version, request, f"golden output {name!r} missing")
        want_arr = np.array(want["data"], dtype=_NUMPY_TYPES[want["datatype"]]).reshape(want["shape"])
        if list(arr.shape) != list(want_arr.shape) or not np.array_equal(arr, want_arr):
            raise _fail(model, version, request,
                        f"output {name!r} = {arr.reshape(-1).tolist()[:16]} differs from the golden "
                        f"{want_arr.reshape(-1).tolist()[:16]}")
    if took > budget_s:
        raise _fail(model, version, request, f"took {took:.2f}s, over the latency budget of {budget_s:.2f}s")
    return SmokeCheck(model, version, "golden-infer" if expected else "infer", request, round(took, 4))


def load_golden(version_dir: Path) -> dict[str, Any]:
    path = version_dir / GOLDEN_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise SmokeTestFailed(f"{path}: not valid JSON: {exc}", hint="fix the release's golden cases") from None
    if not isinstance(data, dict):
        raise SmokeTestFailed(f"{path}: must be a JSON object with 'generate' and/or 'infer' lists")
    return data


def smoke_model(control: TritonControl, layout: PvcLayout, triton_model: str, version: int, *,
                budget_s: float = DEFAULT_LATENCY_BUDGET, prompt: str = DEFAULT_PROMPT,
                max_tokens: int = DEFAULT_MAX_TOKENS) -> list[SmokeCheck]:
    """All checks for one Triton model version, where it is loaded: under its shadow name when it is a shadow
    candidate (triton/shadow.py), else its own; raises SmokeTestFailed on the first failure. The golden
    cases are the release's, read from ``triton_model``'s version directory either way.
    """
    golden = load_golden(layout.version_dir(triton_model, version))
    model = shadow_name(triton_model) if shadow_version(layout, triton_model) == version else triton_model
    if not control.is_version_ready(model, version):
        raise _fail(model, version, f"GET /v2/models/{model}/versions/{version}/ready", "version is not ready")
    metadata = control.model_metadata(model, version)
    checks: list[SmokeCheck] = []
    if is_llm(metadata):
        checks.append(check_generate(control, model, version, {"text_input": prompt, "max_tokens": max_tokens},
                                     budget_s=budget_s))
    else:
        checks.append(check_infer(control, model, version, metadata, budget_s=budget_s))
    for case in golden.get("generate", []):
        checks.append(check_generate(control, model, version, case["request"],
                                     expected_text=case["expected"]["text_output"], budget_s=budget_s))
    for case in golden.get("infer", []):
        checks.append(check_infer(control, model, version, metadata, inputs=case["inputs"],
                                  expected=case["expected"], budget_s=budget_s))
    return checks


def smoke_release(control: TritonControl, layout: PvcLayout, model: str, version: int, entries: list[str], *,
                  budget_s: float = DEFAULT_LATENCY_BUDGET) -> SmokeReport:
    """Smoke-test every entry model (what clients call) of a release version."""
    report = SmokeReport(model=model, version=version)
    for name in entries:
        report.checks.extend(smoke_model(control, layout, name, version, budget_s=budget_s))
    return report
