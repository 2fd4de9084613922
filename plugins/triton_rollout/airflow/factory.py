"""DAGs from the models config file: one deploy DAG per model, and one reconcile DAG for all of them.

The file is ``$TRITON_ROLLOUT_MODELS`` (default ``dags/models.yaml`` next to the DAG files); an invalid
entry is an import error that names the file and the field. Parsing imports Airflow, the providers the
operators subclass (cncf-kubernetes, which brings the kubernetes clients, and http) and the small config
module; the project imports boto3 and tritonclient only inside tasks. The DAG files name those providers so the
dag-processor imports them once, not at every parse (dags/triton_deploy.py).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, TriggerRule, task

from triton_rollout.config import ModelDeployment, ProjectConfig, read_config_file
from triton_rollout.errors import ConfigError

from .notify import failure_callbacks, rollback_callbacks
from .operators import (
    BuildEngineOperator,
    LoadOperator,
    PromoteOperator,
    ReconcileOperator,
    RollbackOperator,
    SmokeOperator,
    SyncOperator,
)
from .schedules import deploy_schedule
from .sensors import ReleaseSensor

CONFIG_ENV = "TRITON_ROLLOUT_MODELS"
# Backfills cannot start before this; it is early enough for any release history worth replaying.
START_DATE = pendulum.datetime(2024, 1, 1, tz="UTC")
DEFAULT_SENSOR_TIMEOUT = 3000.0  # under the default @hourly interval, so runs never pile up
TAGS = ["triton", "model-rollout"]


def config_path(dags_folder: str | os.PathLike[str] | None = None) -> Path:
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path(dags_folder or Path(__file__).resolve().parents[3] / "dags") / "models.yaml"


def load_config(dags_folder: str | os.PathLike[str] | None = None) -> ProjectConfig:
    """The models file the DAG files are made from. Its pods really run, so the placeholder images are
    refused here (the code's defaults stay usable for rendering examples and for tests)."""
    path = config_path(dags_folder)
    config = read_config_file(path)
    try:
        for i, model in enumerate(config.models):
            model.kubernetes.images.require_published(f"models[{i}].kubernetes.images")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", hint=exc.hint) from exc
    return config


def model_asset(model: ModelDeployment) -> Asset:
    """What a successful deploy updates; downstream DAGs can be scheduled on it (schedule=[asset])."""
    return Asset(name=f"triton-model-{model.name}", uri=f"triton://models/{model.name}", group="triton-models")


def deploy_params(model: ModelDeployment) -> dict[str, Param]:
    return {
        "version": Param(None, type=["null", "integer"], minimum=1, title="Release version",
                         description="Deploy exactly this version. Empty: the newest complete release (a "
                                     "backfill: the one current at its date)."),
        "allow_downgrade": Param(False, type="boolean", title="Allow an older version",
                                 description="Let this run replace what Triton serves with an older version (a "
                                             "deliberate rollback). Without it such a run fails before any change."),
        "force": Param(model.params.force, type="boolean", title="Force re-sync",
                       description="Re-hash every file already on the PVC (sha256) and repair what differs."),
        "skip_smoke": Param(model.params.skip_smoke, type="boolean", title="Skip the smoke test",
                            description="Promote without the smoke test. Logged loudly; for emergencies."),
        "only_if_new": Param(False, type="boolean", title="Only if new",
                             description="Wait for a release newer than what Triton serves (what scheduled runs "
                                         "do); skip the run if none arrives."),
    }


DEPLOY_DOC = """
### Deploy `{name}` to Triton

`wait_for_release` (deferrable; skipped when nothing new arrives) -> `resolve` (param `version`, else the
newest complete release as of the run's date) -> `build_engine` (GPU pod, checkpoint releases only) ->
`sync` (pod: S3 -> PVC, verified) -> `load` (candidate, pinned version) -> `smoke` -> `promote` ->
`announce` (Asset event `triton://models/{name}`, version in its extra). A failed load/smoke/promote runs
`rollback`: the previous version keeps serving and the run fails.

Releases: `{prefix}/{name}/<version>/` · Triton: `{triton}` · schedule: `{schedule}`
"""


def deploy_dag(model: ModelDeployment) -> DAG:
    asset = model_asset(model)
    timeout = model.sensor.timeout_s if model.sensor.timeout_s is not None else DEFAULT_SENSOR_TIMEOUT
    with DAG(
        dag_id=f"deploy_{model.name}",
        description=f"Deploy {model.name} releases from S3 to Triton",
        schedule=deploy_schedule(model),
        start_date=START_DATE,
        catchup=False,
        # Manual and scheduled runs one at a time; backfill runs, which Airflow 3 does not count here, and Jobs or
        # Kubeflow runs beside Airflow wait at their load for the model's deploy lease (pvc/lease.py).
        max_active_runs=1,
        params=deploy_params(model),
        tags=[*TAGS, model.name],
        doc_md=DEPLOY_DOC.format(name=model.name, prefix=model.release_prefix, triton=model.triton_url,
                                 schedule=model.schedule if not model.events.enabled else
                                 f"{model.schedule} or an S3 event (SQS {model.events.sqs_queue_url})"),
        # notify.when failure: every task's final failure is posted (a skip is not one); none when unset.
        default_args={"retries": 0, "retry_delay": timedelta(seconds=30), **failure_callbacks(model)},
    ) as dag:
        wait = ReleaseSensor(task_id="wait_for_release", model=model, timeout=timeout,
                             poke_interval=model.sensor.poke_interval_s)

        @task(task_id="resolve", retries=2)  # S3 hiccups are worth a retry; a missing release is not
        def resolve_task(**context: Any) -> dict[str, Any]:
            from .tasks import resolve

            return resolve(model, context)

        @task(task_id="announce", outlets=[asset])
        def announce_task(**context: Any) -> dict[str, Any]:
            from .tasks import announce

            return announce(model, asset, context)

        resolved = resolve_task()
        build = BuildEngineOperator(
            task_id="build_engine", model=model, pool=model.build.pool,
            pool_slots=model.build.pool_slots,
            deferrable=model.build.deferrable, execution_timeout=timedelta(seconds=model.build.timeout_s),
            retries=1,  # a lost GPU node (spot, eviction) is the usual cause; the build starts over
        )
        # Syncs resume from verified parts, so a retry after a network failure is cheap.
        sync = SyncOperator(task_id="sync", model=model, retries=2,
                                  trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        load = LoadOperator(task_id="load", model=model)
        smoke = SmokeOperator(task_id="smoke", model=model)
        promote = PromoteOperator(task_id="promote", model=model, retries=1,
                                     trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
        rollback = RollbackOperator(task_id="rollback", model=model,
                                      trigger_rule=TriggerRule.ONE_FAILED, **rollback_callbacks(model))
        wait >> resolved >> build >> sync
        resolved >> sync >> load >> smoke >> promote >> announce_task()
        load >> promote
        [load, smoke, promote] >> rollback
    return dag


def deploy_dags(config: ProjectConfig | None = None) -> dict[str, DAG]:
    config = config or load_config()
    return {f"deploy_{m.name}".replace("-", "_").replace(".", "_"): deploy_dag(m) for m in config.models}


def reconcile_dag(config: ProjectConfig | None = None) -> DAG:
    config = config or load_config()
    settings = config.reconcile
    with DAG(
        dag_id="reconcile_triton_models",
        description="Check every model's promoted version on the PVC and in Triton; repair drift",
        schedule=settings.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        params={
            "full_verify": Param(False, type="boolean", title="Full sha256 verification",
                                 description="Re-hash every file instead of comparing stat records "
                                             f"(runs in UTC hour {settings.full_verify_hour} do it anyway)."),
            "repair": Param(True, type="boolean", title="Repair drift",
                            description="Re-sync damaged files and reload Triton; off: report only (fails on drift)."),
        },
        tags=[*TAGS, "reconcile"],
        doc_md="Checks the promoted version of each model: files on the PVC (stat, or sha256) and loaded + "
               "ready in Triton. Repairs drift through staging and reloads. One task per model.",
        default_args={"retries": 1, "retry_delay": timedelta(seconds=60)},
    ) as dag:
        for model in config.models:
            ReconcileOperator(task_id=f"reconcile_{model.name}".replace("-", "_"), model=model,
                              full_verify_hour=settings.full_verify_hour)
    return dag
