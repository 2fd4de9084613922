"""The CPU demo builder's toolchain: a MOCK of TensorRT-LLM's two build steps for machines without a GPU.

No TensorRT-LLM and no GPU are involved. It exists so the demo and the tests run the real pipeline
(checkpoint release -> ``python -m triton_rollout build`` in a pod -> engine release -> sync -> Triton)
with the same subcommand, the same subprocess steps and the same release layout as a real build. Its
two steps run as ``python -m devstack.demo_builder {convert,build}`` (CpuDemoBuilder.steps):

- ``convert`` stands in for ``convert_checkpoint.py``: it turns the checkpoint's corpus (the "weights")
  and vocabulary (the "tokenizer") into a converted checkpoint, a character bigram table.
- ``build`` stands in for ``trtllm-build``: it checks that table and writes the "engine" the demo
  tensorrt_llm python model loads from gpt_model_path (``bigram.npy``) plus an engine config.json.

A demo checkpoint release holds ``corpus.txt``, ``vocab.json``, ``smoke_prompts.json`` and
``triton_models/<triton_model>/{config.pbtxt, model.py}`` (the python-backend ensemble that stands in
for the tensorrtllm_backend models of the serving image); see devstack.demo_models.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

# numpy is imported where it is used: every parse of the deploy DAG file imports this module (the builder
# registry, via devstack.demo_builder) and should not pay ~0.1 s for numpy there.
if TYPE_CHECKING:
    import numpy as np

# Compatibility facts a demo engine records: there is no TensorRT-LLM runtime and no GPU to tie it to.
DEMO_TRTLLM_VERSION = "cpu-demo"
DEMO_COMPUTE_CAPABILITY = "cpu"
CORPUS_FILE = "corpus.txt"
VOCAB_FILE = "vocab.json"
PROMPTS_FILE = "smoke_prompts.json"
MODELS_DIR = "triton_models"
CONVERTED_WEIGHTS = "rank0.npy"
ENGINE_FILE = "bigram.npy"
ENGINE_CONFIG = "config.json"


def bigram_table_from_text(text: str, vocab: Sequence[str]) -> np.ndarray:
    """Character bigram counts of ``text``; characters outside ``vocab`` count as id 0 (a space)."""
    import numpy as np

    index = {ch: i for i, ch in enumerate(vocab)}
    ids = [index.get(ch, 0) for ch in text.lower().replace("\n", " ")]
    table = np.zeros((len(vocab), len(vocab)), dtype=np.float32)
    for a, b in itertools.pairwise(ids):
        table[a, b] += 1.0
    # A tiny deterministic tie-breaker so no row is all zeros.
    table += np.arange(len(vocab), dtype=np.float32)[::-1] * 1e-3
    return table


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def generate_text(models_dir: Path, vocab: Sequence[str], table: np.ndarray, prompt: str, max_tokens: int) -> str:
    """What the deployed ensemble answers, computed with the ensemble's own model.py files."""
    pre = _module(models_dir / "preprocessing" / "model.py", "_demo_pre")
    eng = _module(models_dir / "tensorrt_llm" / "model.py", "_demo_engine")
    post = _module(models_dir / "postprocessing" / "model.py", "_demo_post")
    return str(post.decode(vocab, eng.generate(table, pre.encode(vocab, prompt), max_tokens)))


def golden_cases(models_dir: Path, vocab: Sequence[str], table: np.ndarray,
                 prompts: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """smoke.json content: each prompt with the exact text the release must answer."""
    return {"generate": [
        {"request": {"text_input": str(p), "max_tokens": int(n)},
         "expected": {"text_output": generate_text(models_dir, vocab, table, str(p), int(n))}}
        for p, n in prompts
    ]}


def _convert(args: argparse.Namespace) -> int:
    import numpy as np

    ckpt, out = Path(args.checkpoint_dir), Path(args.output_dir)
    vocab = json.loads((ckpt / VOCAB_FILE).read_text())
    table = bigram_table_from_text((ckpt / CORPUS_FILE).read_text(), vocab)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / CONVERTED_WEIGHTS, table.astype(args.dtype))
    (out / ENGINE_CONFIG).write_text(json.dumps({
        "architecture": "DemoBigram", "dtype": args.dtype, "vocab_size": len(vocab),
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
    }, indent=1) + "\n")
    print(f"converted {ckpt / CORPUS_FILE} into a {table.shape[0]}x{table.shape[1]} bigram table at {out}")
    return 0


def _build(args: argparse.Namespace) -> int:
    import numpy as np

    src, out = Path(args.checkpoint_dir), Path(args.output_dir)
    config = json.loads((src / ENGINE_CONFIG).read_text())
    table = np.load(src / CONVERTED_WEIGHTS)
    if table.ndim != 2 or table.shape != (config["vocab_size"], config["vocab_size"]):
        print(f"error: {src / CONVERTED_WEIGHTS} has shape {table.shape}, want a square table of the vocab size")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / ENGINE_FILE, table)
    (out / ENGINE_CONFIG).write_text(json.dumps({
        "pretrained_config": config,
        "build_config": {"max_batch_size": args.max_batch_size, "max_input_len": args.max_input_len,
                         "max_seq_len": args.max_seq_len},
    }, indent=1) + "\n")
    print(f"built demo engine {out / ENGINE_FILE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo_builder",
                                     description="CPU mock of the TensorRT-LLM build steps (demo only)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="corpus + vocab -> converted checkpoint (stands in for convert_checkpoint.py)")
    c.add_argument("--checkpoint_dir", required=True)
    c.add_argument("--output_dir", required=True)
    c.add_argument("--dtype", choices=["float32"], default="float32")
    c.set_defaults(func=_convert)
    b = sub.add_parser("build", help="converted checkpoint -> demo engine (stands in for trtllm-build)")
    b.add_argument("--checkpoint_dir", required=True)
    b.add_argument("--output_dir", required=True)
    b.add_argument("--max_batch_size", type=int, required=True)
    b.add_argument("--max_input_len", type=int, required=True)
    b.add_argument("--max_seq_len", type=int, required=True)
    b.set_defaults(func=_build)
    args = parser.parse_args(argv)
    return int(args.func(args))

