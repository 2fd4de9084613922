"""Subcommand ``render-manifests``: write the Kubernetes manifests for teams that deploy without Airflow."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from triton_rollout.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from triton_rollout.kube.manifests import RenderOptions

    d = RenderOptions()
    p = sub.add_parser(
        "render-manifests",
        help="write the Kustomize base (namespace, PVC, RBAC, Triton, deploy Job, reconcile CronJob) and overlays",
        description="Render the manifests from the same pod builders KubernetesPodOperator uses: a Kustomize base "
                    "in --out and example overlays (eks-efs, nfs, local) in --out/overlays. Without --config, "
                    "renders the built-in example model (what k8s/ in the repository holds). The PVC's storage "
                    "class, size, access mode and write-permission method come from the model's "
                    "kubernetes.storage config.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (rendered files are overwritten)")
    p.add_argument("--config", type=Path, help="models config file (JSON or YAML: {defaults, models})")
    p.add_argument("--model", help="which model of --config (default: the only one)")
    p.add_argument("--version", type=int, default=d.version, help=f"release version the deploy Job deploys "
                                                                  f"({d.version})")
    p.add_argument("--storage", help="PVC size, overriding kubernetes.storage.size")
    p.add_argument("--storage-class", help="PVC storageClassName, overriding kubernetes.storage.class_name")
    p.add_argument("--schedule", default=d.reconcile_schedule, help="reconcile CronJob schedule")
    p.add_argument("--airflow-namespace", default=d.airflow_namespace)
    p.add_argument("--airflow-service-account", default=d.airflow_service_account)
    p.add_argument("--triton-replicas", type=int, default=d.triton_replicas)
    p.set_defaults(func=_render)


def _load_model(path: Path | None, name: str | None):  # type: ignore[no-untyped-def]
    from triton_rollout.config import read_config_file
    from triton_rollout.kube.manifests import example_deployment

    if path is None:
        return example_deployment()
    models = read_config_file(path).models
    if name is None:
        if len(models) != 1:
            raise ConfigError(f"{path} holds {len(models)} models; choose one with --model")
        return models[0]
    for m in models:
        if m.name == name:
            return m
    raise ConfigError(f"model {name!r} is not in {path}; it has {[m.name for m in models]}")


def _with_storage_flags(model, size: str | None, class_name: str | None):  # type: ignore[no-untyped-def]
    """The model with the storage flags applied (validated as the config file's values are)."""
    changes = {k: v for k, v in (("size", size), ("class_name", class_name)) if v is not None}
    if not changes:
        return model
    storage = dataclasses.replace(model.kubernetes.storage, **changes)
    return dataclasses.replace(model, kubernetes=dataclasses.replace(model.kubernetes, storage=storage))


def _render(args: argparse.Namespace) -> int:
    from triton_rollout.cli.output import emit_result
    from triton_rollout.kube.manifests import RenderOptions, write

    if args.version < 1 or args.triton_replicas < 0:
        raise ConfigError("--version must be >= 1 and --triton-replicas >= 0")
    model = _with_storage_flags(_load_model(args.config, args.model), args.storage, args.storage_class)
    options = RenderOptions(version=args.version, reconcile_schedule=args.schedule,
                            airflow_namespace=args.airflow_namespace,
                            airflow_service_account=args.airflow_service_account,
                            triton_replicas=args.triton_replicas)
    written = write(model, args.out, options)
    emit_result({"model": model.name, "written": [str(p) for p in written]}, None)
    return 0
