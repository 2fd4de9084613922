"""Demo tensor model for triton_rollout: a tiny affine map whose weights live in the version dir."""

import json
import os

import numpy as np


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        # A broken release (missing or damaged weights) must fail here, at load, not at inference.
        with np.load(os.path.join(version_dir, "weights.npz")) as data:
            self.w = data["w"].astype(np.float32)
            self.b = data["b"].astype(np.float32)
        if self.w.shape != (4, 3) or self.b.shape != (3,):
            raise ValueError(f"demo_tensor weights have shapes {self.w.shape} / {self.b.shape}, want (4, 3) / (3,)")
        self.config = json.loads(args["model_config"])

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy().astype(np.float32)
            y = (x @ self.w + self.b).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y)]))
        return responses
