"""Demo LLM preprocessing: characters -> ids with vocab.json from this version's directory."""

import json
import os

import numpy as np


def encode(vocab, text):
    index = {ch: i for i, ch in enumerate(vocab)}
    # Unknown characters map to id 0 (a space), like an <unk> token.
    return np.array([index.get(ch, 0) for ch in text.lower()], dtype=np.int32)


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "vocab.json")) as fh:
            self.vocab = json.load(fh)

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy().reshape(-1)[0]
            text = query.decode("utf-8") if isinstance(query, bytes) else str(query)
            n = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy().reshape(-1)[:1]
            ids = encode(self.vocab, text)
            if ids.size == 0:
                ids = np.zeros(1, dtype=np.int32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("INPUT_ID", ids),
                pb_utils.Tensor("REQUEST_OUTPUT_LEN_OUT", n.astype(np.int32)),
            ]))
        return responses
