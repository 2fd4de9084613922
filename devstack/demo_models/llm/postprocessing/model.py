"""Demo LLM postprocessing: ids -> text with vocab.json from this version's directory."""

import json
import os

import numpy as np


def decode(vocab, ids):
    return "".join(vocab[int(i)] for i in ids if 0 <= int(i) < len(vocab))


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "vocab.json")) as fh:
            self.vocab = json.load(fh)

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy().reshape(-1)
            text = decode(self.vocab, ids).encode("utf-8")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", np.array([text], dtype=object))]))
        return responses
