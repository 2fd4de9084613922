"""Airflow glue: the only part of triton_rollout that imports Airflow.

- ``factory``: the deploy DAG (one per configured model) and the reconcile DAG, from the models file.
- ``operators``: one KubernetesPodOperator per rollout step (BuildEngineOperator, SyncOperator, LoadOperator,
  SmokeOperator, PromoteOperator, RollbackOperator, ReconcileOperator), each building its step's typed request
  (``triton_rollout.steps``) and running the pod ``triton_rollout.kube.specs`` renders for it.
- ``sensors`` / ``triggers``: the deferrable wait for a complete release in S3.
- ``tasks``: the worker-side steps (resolve the release, announce the deployment as an Asset event).

Everything here is thin: the decisions live in the plain library modules, which the pods run too.
"""
