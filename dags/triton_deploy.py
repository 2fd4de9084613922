"""One deploy DAG per model in models.yaml (or $TRITON_ROLLOUT_MODELS): S3 release -> PVC -> Triton."""

from pathlib import Path

from triton_rollout.airflow.factory import deploy_dags, load_config

globals().update(deploy_dags(load_config(Path(__file__).parent)))
