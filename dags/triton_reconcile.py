"""The reconcile DAG: every model's promoted version intact on the PVC and ready in Triton, or repaired."""

from pathlib import Path

# The dag-processor imports the airflow.* modules a DAG file names at its top level once, in its manager, and
# forks every parse from there ([dag_processor] parsing_pre_import_modules, on by default; Airflow 3.3
# dag_processing/processor.py). Naming the providers the operators build on here keeps their imports (the
# kubernetes and kubernetes_asyncio clients: most of a cold parse) out of each parse after the first; the
# amazon one is what an Asset's URI check loads (the providers' asset handlers; amazon's imports boto3).
import airflow.providers.amazon.aws.assets.s3
import airflow.providers.cncf.kubernetes.operators.pod
import airflow.providers.http.notifications.http  # noqa: F401
from triton_rollout.airflow.factory import load_config, reconcile_dag

reconcile_triton_models = reconcile_dag(load_config(Path(__file__).parent))
