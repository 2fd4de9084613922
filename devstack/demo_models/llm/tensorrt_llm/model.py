"""Demo LLM "engine": a character bigram table (bigram.npy at gpt_model_path), sampled deterministically.

generate() is plain numpy so the release writer computes the golden answers with the same code.
"""

import json
import os

import numpy as np

MAX_TOKENS = 64


def generate(table, ids, n):
    """Sample n characters from the bigram rows, with a generator seeded by the prompt itself.

    Deterministic (same prompt, same weights -> same text) yet not the loop greedy decoding falls into.
    Only Generator.random() and float64 cumsum/searchsorted are used: bit-stable across numpy 1.x/2.x.
    """
    rng = np.random.default_rng([int(i) for i in ids] or [0])
    out = []
    last = int(ids[-1])
    for _ in range(int(n)):
        cdf = np.cumsum(table[last].astype(np.float64))
        last = int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))
        out.append(last)
    return np.array(out, dtype=np.int32)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        engine_dir = config["parameters"]["gpt_model_path"]["string_value"]
        path = os.path.join(engine_dir, "bigram.npy")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"demo engine {path} not found (is gpt_model_path filled in?)")
        table = np.load(path)
        if table.ndim != 2 or table.shape[0] != table.shape[1]:
            raise ValueError(f"demo engine {path} has shape {table.shape}, want a square bigram table")
        self.table = table

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
            n = int(pb_utils.get_input_tensor_by_name(request, "request_output_len").as_numpy().reshape(-1)[0])
            if n < 1 or n > MAX_TOKENS:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"max_tokens must be 1..{MAX_TOKENS}, got {n}")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("output_ids", generate(self.table, ids, n))]))
        return responses
