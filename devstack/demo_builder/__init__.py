"""The CPU demo builder (backend ``cpu-demo``, family ``demo``): a MOCK of TensorRT-LLM for machines without a GPU.

Its "engine" is a character bigram table that python-backend models serve (engine.py). It is a builder of
triton_rollout.build.builders like the built-in TensorRT-LLM one, found through
``TRITON_ROLLOUT_BUILDERS=devstack.demo_builder``, which the devstack sets for its Airflow, its pods
(devstack.stack) and the tests (tests/conftest.py). Importing this module registers it.

Compared with TensorRT-LLM: the same two steps (``convert``, ``build``) and the same release layout, but
no GPU (the build pod asks for none), no probe (its engines record ``cpu-demo`` / ``cpu``), the
python-backend ensemble taken from the checkpoint (there is no serving image), the tokenizer
(vocab.json) in the models' version directories, and golden smoke cases shipped with the release.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from triton_rollout.build.builders import BuildPaths, ModelFiles, RuntimeFacts, Step, register
from triton_rollout.build.spec import TRITON_MODELS, BuildSpec
from triton_rollout.config.validators import fail
from triton_rollout.errors import BuildError

if TYPE_CHECKING:
    from triton_rollout.triton.config import ModelConfig

from .engine import (
    DEMO_COMPUTE_CAPABILITY,
    DEMO_TRTLLM_VERSION,
    ENGINE_FILE,
    MODELS_DIR,
    PROMPTS_FILE,
    VOCAB_FILE,
    golden_cases,
)

BACKEND = "cpu-demo"
FAMILY = "demo"


class CpuDemoBuilder:
    backend = BACKEND
    families = (FAMILY,)
    tokenizer_dir = ""  # the demo's python models read vocab.json from their version directory

    def validate(self, spec: BuildSpec, path: str) -> None:
        # The CPU demo engine is a float32 table on one process; anything else would be pretended.
        for name, want in (("dtype", "float32"), ("quantization", "none"), ("tp_size", 1), ("pp_size", 1)):
            if getattr(spec, name) != want:
                raise fail(f"{path}.{name}", f"must be {want!r} for backend {BACKEND}, got {getattr(spec, name)!r}")

    def gpus(self, spec: BuildSpec) -> int:
        return 0

    def steps(self, spec: BuildSpec, paths: BuildPaths) -> list[Step]:
        # The interpreter running the build: it has numpy and this module (the build pod's image).
        module = [spec.python or sys.executable, "-m", __name__]
        return [
            Step("convert", (*module, "convert", "--checkpoint_dir", str(paths.checkpoint),
                             "--output_dir", str(paths.converted), "--dtype", spec.dtype)),
            Step("build", (*module, "build", "--checkpoint_dir", str(paths.converted),
                           "--output_dir", str(paths.engine), "--max_batch_size", str(spec.max_batch_size),
                           "--max_input_len", str(spec.max_input_len), "--max_seq_len", str(spec.max_seq_len))),
        ]

    def probe(self, spec: BuildSpec) -> RuntimeFacts:
        # MOCK: no TensorRT-LLM and no GPU; its engines record that instead.
        return RuntimeFacts(DEMO_TRTLLM_VERSION, DEMO_COMPUTE_CAPABILITY)

    def model_files(self, spec: BuildSpec, paths: BuildPaths) -> ModelFiles:
        # The demo's python-backend ensemble travels in its checkpoint (it has no serving image).
        root = paths.checkpoint / MODELS_DIR
        missing = [m for m in TRITON_MODELS if not (root / m / "config.pbtxt").is_file()]
        if missing:
            raise BuildError(f"demo checkpoint lacks {MODELS_DIR}/<model>/config.pbtxt for {missing}",
                             hint="publish it with devstack.demo_models.publish_demo_checkpoint")
        templates = {m: (root / m / "config.pbtxt").read_text() for m in TRITON_MODELS}
        code = {m: root / m / "model.py" for m in TRITON_MODELS if (root / m / "model.py").is_file()}
        return ModelFiles(templates, code)

    def check_configs(self, spec: BuildSpec, configs: Mapping[str, ModelConfig], version: int) -> None:
        # The demo's python models read only what their own templates give them; the generic checks
        # (names, ensemble wiring, no placeholder left) are the whole contract.
        return None

    def write_extras(self, spec: BuildSpec, paths: BuildPaths) -> None:
        """The golden answers (ensemble/smoke.json), computed with the release's own model code."""
        prompts_file = paths.checkpoint / PROMPTS_FILE
        if not prompts_file.is_file():
            return
        vocab = json.loads((paths.checkpoint / VOCAB_FILE).read_text())
        import numpy as np  # here, not at the top: the DAG files import this module at every parse

        table = np.load(paths.release / "tensorrt_llm" / ENGINE_FILE)
        golden = golden_cases(paths.release, vocab, table, json.loads(prompts_file.read_text()))
        (paths.release / "ensemble" / "smoke.json").write_text(json.dumps(golden, indent=1) + "\n")

    def describe_probe(self, spec: BuildSpec) -> list[str]:
        return [f"probe: none ({BACKEND} records trtllm_version {DEMO_TRTLLM_VERSION!r}, "
                f"compute_capability {DEMO_COMPUTE_CAPABILITY!r})"]

    def describe_layout(self, spec: BuildSpec, paths: BuildPaths, version: int) -> list[str]:
        return [f"write: {paths.release}/<model>/config.pbtxt rendered from the checkpoint's {MODELS_DIR}/, "
                "model.py copied, ensemble/smoke.json (golden answers)"]


register(CpuDemoBuilder())
