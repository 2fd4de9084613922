"""The reconcile DAG: every model's promoted version intact on the PVC and ready in Triton, or repaired."""

from pathlib import Path

from triton_rollout.airflow.factory import load_config, reconcile_dag

reconcile_triton_models = reconcile_dag(load_config(Path(__file__).parent))
