"""Kubeflow Pipelines: the rollout compiled for KFP v2 (pipeline.py; runs in .venv-kfp, see requirements-kfp.txt)."""
