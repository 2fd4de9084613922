"""Typed per-model deployment config: everything the pods, manifests and DAGs need to know about one model.

Validated once, at construction, with errors that name the field by its path in the source document
(``models[2].kubernetes.sync_resources.limits.memory``), because the DAG factory loads these from a
YAML/JSON file that a person edits.

- :mod:`.validators`: the checks every field goes through (and the build spec's too);
- :mod:`.kubernetes`: namespace, images, credentials, resources, scheduling of the pods;
- :mod:`.model`: one model's deployment (releases, serving, builds, sensor, smoke test) and the project;
- :mod:`.loader`: the config file, its ``${VAR}`` references and its defaults.

This package re-exports what the rest of the code imports from it.
"""

from triton_rollout.config.kubernetes import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    AwsCredentials,
    KubernetesConfig,
    ResourceSpec,
    Toleration,
)
from triton_rollout.config.loader import load_models, read_config_file
from triton_rollout.config.model import BuildSettings, ModelDeployment, ProjectConfig

__all__ = [
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "AwsCredentials",
    "BuildSettings",
    "KubernetesConfig",
    "ModelDeployment",
    "ProjectConfig",
    "ResourceSpec",
    "Toleration",
    "load_models",
    "read_config_file",
]
