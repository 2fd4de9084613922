"""Demo releases built from the small files in this folder (no downloads), for the demo and the tests.

Two release models, both python-backend models that run on the CPU tritonserver:

- ``demo-llm``: the TensorRT-LLM ensemble layout (ensemble, preprocessing, tensorrt_llm,
  postprocessing) with the generate interface (text_input, max_tokens -> text_output). The
  "engine" is a character bigram table trained from a corpus text at release time; sampling is seeded
  by the prompt, so each release ships golden answers (smoke.json) computed with the same code.
- ``demo-tensor``: one model, OUTPUT0 = INPUT0 @ W + b, integer weights (exact float32 results).

Variants make the failure cases real: ``init_error`` ships weights that make initialize() raise (the
load fails), ``wrong`` ships weights that load fine but answer differently from the golden cases.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from triton_rollout.release.manifest import Compat

from devstack.demo_builder.engine import (
    CORPUS_FILE,
    DEMO_COMPUTE_CAPABILITY,
    DEMO_TRTLLM_VERSION,
    MODELS_DIR,
    PROMPTS_FILE,
    VOCAB_FILE,
    bigram_table_from_text,
    generate_text,
)

HERE = Path(__file__).resolve().parent
LLM_MODEL = "demo-llm"
TENSOR_MODEL = "demo-tensor"
LLM_TRITON_MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing")
TENSOR_TRITON_MODEL = "demo_tensor"
VARIANTS = ("good", "init_error", "wrong")
GOLDEN_PROMPTS = (("the ", 12), ("model ", 8))
# The character vocabulary: id 0 is the space that unknown characters map to.
VOCAB = list(" abcdefghijklmnopqrstuvwxyz.,'")


def corpus_path(version: int) -> Path:
    """The corpus a version is trained on (v1, v3, .. and v2, v4, ..)."""
    return sorted((HERE / "corpus").glob("*.txt"))[(version - 1) % 2]


def bigram_table(version: int) -> np.ndarray:
    """Character bigram counts from the corpus this version is trained on (the demo engine builder's code)."""
    return bigram_table_from_text(corpus_path(version).read_text(), VOCAB)


def llm_generate(table: np.ndarray, prompt: str, max_tokens: int) -> str:
    """What the deployed bundle answers, computed with the bundle's own code."""
    return generate_text(HERE / "llm", VOCAB, table, prompt, max_tokens)


def write_llm_release(dest: Path, version: int, variant: str = "good") -> Path:
    """Write the files of one demo-llm release (<triton_model>/<file>) into ``dest``."""
    _check_variant(variant)
    dest = _fresh(dest)
    for triton_model in LLM_TRITON_MODELS:
        src = HERE / "llm" / triton_model
        out = dest / triton_model
        out.mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and f.suffix in (".pbtxt", ".py"):
                shutil.copy2(f, out / f.name)
    for triton_model in ("preprocessing", "postprocessing"):
        (dest / triton_model / "vocab.json").write_text(json.dumps(VOCAB))
    table = bigram_table(version)
    golden = [
        {"request": {"text_input": p, "max_tokens": n}, "expected": {"text_output": llm_generate(table, p, n)}}
        for p, n in GOLDEN_PROMPTS
    ]
    if variant == "wrong":
        table = table.T.copy()  # loads fine, answers differently
    elif variant == "init_error":
        table = table[0]  # 1-D: initialize() raises ValueError
    np.save(dest / "tensorrt_llm" / "bigram.npy", table)
    _write_json(dest / "ensemble" / "smoke.json", {"generate": golden})
    return dest


def tensor_weights(version: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(version)
    return rng.integers(-3, 4, size=(4, 3)).astype(np.float32), rng.integers(-5, 6, size=3).astype(np.float32)


def write_tensor_release(dest: Path, version: int, variant: str = "good") -> Path:
    _check_variant(variant)
    dest = _fresh(dest)
    out = dest / TENSOR_TRITON_MODEL
    out.mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        shutil.copy2(HERE / "tensor" / name, out / name)
    w, b = tensor_weights(version)
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    expected = x @ w + b
    golden: dict[str, Any] = {
        "infer": [{
            "inputs": {"INPUT0": {"datatype": "FP32", "shape": [1, 4], "data": x.reshape(-1).tolist()}},
            "expected": {"OUTPUT0": {"datatype": "FP32", "shape": [1, 3], "data": expected.reshape(-1).tolist()}},
        }]
    }
    if variant == "wrong":
        w = -w
    elif variant == "init_error":
        w = w[:3]  # wrong shape: initialize() raises
    np.savez(out / "weights.npz", w=w, b=b)
    _write_json(out / "smoke.json", golden)
    return dest


def release_compat(model: str) -> Compat | None:
    """The compatibility facts a pre-built demo release carries (manifest ``compat``), or None.

    demo-llm is served with the CPU demo's "TensorRT-LLM" (dags/models.yaml ``serving``), so its engine
    releases must say they were built for it, exactly as the CPU demo builder's output does; the
    tensor model is not an engine and is not gated.
    """
    if model != LLM_MODEL:
        return None
    return Compat(trtllm_version=DEMO_TRTLLM_VERSION, compute_capability=DEMO_COMPUTE_CAPABILITY,
                  tp_size=1, pp_size=1, dtype="float32")


def write_release(model: str, dest: Path, version: int, variant: str = "good") -> Path:
    if model == LLM_MODEL:
        return write_llm_release(dest, version, variant)
    if model == TENSOR_MODEL:
        return write_tensor_release(dest, version, variant)
    raise ValueError(f"unknown demo model {model!r}; demo models are {LLM_MODEL!r} and {TENSOR_MODEL!r}")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")


def _fresh(dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    return dest


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def release_uri(bucket: str, prefix: str, model: str, version: int) -> str:
    return f"s3://{bucket}/{prefix}/{model}/{version}" if prefix else f"s3://{bucket}/{model}/{version}"


def publish_version(bucket: str, work_dir: Path, model: str, version: int, *, variant: str = "good",
                    created_at: datetime | None = None, prefix: str = "releases", source: str = "") -> str:
    """Write one demo release (``variant``) under ``work_dir`` and publish it to
    ``s3://bucket/prefix/model/version`` (manifest last, with the model's compat facts); returns the URI."""
    from triton_rollout.release.publish import publish_release

    uri = release_uri(bucket, prefix, model, version)
    src = write_release(model, work_dir / model / f"{version}-{variant}", version, variant)
    publish_release(src, uri, source=source or f"devstack demo model {model} v{version}",
                    created_at=created_at, compat=release_compat(model))
    return uri


def publish_demo_releases(bucket: str, work_dir: Path, *, prefix: str = "releases",
                          versions: tuple[int, ...] = (1, 2)) -> list[str]:
    """Publish good versions of both demo models to S3 (what `make up` does); returns the release URIs.

    Already-published versions are skipped (releases are immutable), so this can run on every `make up`.
    """
    from triton_rollout.errors import ConfigError

    uris = []
    for model in (LLM_MODEL, TENSOR_MODEL):
        for version in versions:
            try:
                uris.append(publish_version(bucket, work_dir, model, version, prefix=prefix))
            except ConfigError as exc:
                if "already exists" not in exc.message:
                    raise
                uris.append(release_uri(bucket, prefix, model, version))
    return uris


# -- the demo checkpoint: what the CPU demo builder (devstack.demo_builder, backend cpu-demo) builds ------------

# The build spec of the demo LLM: the CPU demo builder, no GPU (the build pod asks for none).
LLM_BUILD_SPEC: dict[str, Any] = {
    "backend": "cpu-demo", "family": "demo", "dtype": "float32", "max_batch_size": 1,
    "max_input_len": 256, "max_output_len": 64, "tokenizer_files": ["vocab.json"],
}


def write_llm_checkpoint(dest: Path, version: int) -> Path:
    """A demo-llm checkpoint release (kind checkpoint): corpus ("weights"), vocab ("tokenizer"), the golden
    prompts and the python-backend ensemble (what the serving image would provide for a real model)."""
    dest = _fresh(dest)
    shutil.copy2(corpus_path(version), dest / CORPUS_FILE)
    (dest / VOCAB_FILE).write_text(json.dumps(VOCAB))
    _write_json(dest / PROMPTS_FILE, [list(p) for p in GOLDEN_PROMPTS])
    for triton_model in LLM_TRITON_MODELS:
        out = dest / MODELS_DIR / triton_model
        out.mkdir(parents=True)
        for f in (HERE / "llm" / triton_model).iterdir():
            if f.is_file() and f.suffix in (".pbtxt", ".py"):
                shutil.copy2(f, out / f.name)
    return dest


def publish_demo_checkpoint(bucket: str, work_dir: Path, version: int, *, prefix: str = "checkpoints",
                            model: str = LLM_MODEL) -> str:
    """Publish the demo-llm checkpoint release ``version`` (skipped when it exists); returns its URI."""
    from triton_rollout.errors import ConfigError
    from triton_rollout.release.publish import publish_release

    uri = release_uri(bucket, prefix, model, version)
    src = write_llm_checkpoint(work_dir / f"checkpoint-{model}-{version}", version)
    try:
        publish_release(src, uri, kind="checkpoint", source=f"devstack demo checkpoint {model} v{version}")
    except ConfigError as exc:
        if "already exists" not in exc.message:
            raise
    return uri
