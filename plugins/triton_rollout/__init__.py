"""triton_rollout: ship TensorRT-LLM / Triton model releases from S3 to a serving Triton.

The library is plain Python (no Airflow imports outside ``triton_rollout.airflow``) so the same code
runs in Airflow workers and inside the sync / promote / build pods as ``python -m triton_rollout``.
"""

__version__ = "0.1.0"
