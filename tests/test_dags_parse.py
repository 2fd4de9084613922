"""The DAG files parse cleanly from the project's models.yaml; bad config and bad params are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from triton_rollout.config import read_config_file
from triton_rollout.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def project_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_ROLLOUT_MODELS", raising=False)
    monkeypatch.setenv("TRITON_URL", "http://127.0.0.1:8000")


def bag(folder: Path):  # type: ignore[no-untyped-def]
    from airflow.models import DagBag

    return DagBag(dag_folder=str(folder))


def test_dagbag_loads_every_dag_without_import_errors(project_env: None) -> None:
    b = bag(REPO / "dags")
    assert b.import_errors == {}
    assert sorted(b.dags) == ["deploy_demo-llm", "deploy_demo-tensor", "reconcile_triton_models"]
    dag = b.dags["deploy_demo-llm"]
    assert dag.max_active_runs == 1 and dag.schedule == "@hourly" and not dag.catchup
    assert [t.task_id for t in dag.topological_sort()][:3] == ["wait_for_release", "resolve", "build_engine"]
    build = dag.get_task("build_engine")
    assert build.pool == "gpu_builds" and build.deferrable
    assert dag.get_task("rollback").trigger_rule == "one_failed"
    assert {o.uri for o in dag.get_task("announce").outlets} == {"triton://models/demo-llm"}
    assert [t.task_id for t in b.dags["reconcile_triton_models"].tasks] == ["reconcile_demo_llm",
                                                                            "reconcile_demo_tensor"]


def test_a_bad_models_file_is_an_import_error_naming_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              project_env: None) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text((REPO / "dags" / "models.yaml").read_text().replace("- name: demo-tensor\n",
                                                                       "- name: demo-tensor\n    keep: -1\n"))
    monkeypatch.setenv("TRITON_ROLLOUT_MODELS", str(bad))
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "triton_deploy.py").symlink_to(REPO / "dags" / "triton_deploy.py")
    errors = bag(tmp_path / "dags").import_errors
    (message,) = errors.values()
    assert "models[1].keep" in message and "must be between 0 and 1000" in message and str(bad) in message

    bad.write_text("models:\n  - name: m\n    release_prefix: s3://b/p\n    triton_url: ${NO_SUCH_VAR_X}\n")
    with pytest.raises(ConfigError, match=r"models\[0\]\.triton_url.*NO_SUCH_VAR_X"):
        read_config_file(bad)


@pytest.mark.parametrize("conf", [{"version": 0}, {"version": "latest"}, {"force": "yes"}, {"skip_smoke": 1}],
                         ids=["version-0", "version-text", "force-text", "skip-int"])
def test_invalid_trigger_params_are_rejected_by_the_form_schema(conf: dict[str, object], project_env: None) -> None:
    params = serialized_params()
    # What the api-server does with a UI form / REST trigger's conf before it creates the run.
    with pytest.raises(Exception, match=next(iter(conf))) as info:
        params.deep_merge(conf).validate()
    assert type(info.value).__name__ == "ParamValidationError"


def test_valid_trigger_params_pass(project_env: None) -> None:
    params = serialized_params()
    assert params.deep_merge({"version": 7, "force": True}).validate() == {
        "version": 7, "force": True, "skip_smoke": False, "only_if_new": False, "allow_downgrade": False}
    assert params.deep_merge({}).validate()["version"] is None


def serialized_params():  # type: ignore[no-untyped-def]
    """The deploy DAG's params as the scheduler / api-server hold them (after serialization)."""
    from airflow.serialization.serialized_objects import DagSerialization

    dag = bag(REPO / "dags").dags["deploy_demo-llm"]
    return DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).params


def test_parsing_the_deploy_dag_file_does_not_import_numpy(project_env: None) -> None:
    """Every parse of the deploy DAG file imports the builder registry; the demo builder's numpy (0.1-0.2 s
    of each forked parse in bench/parse_time.py) belongs to its build steps, not to the parse."""
    import os
    import subprocess
    import sys

    code = ("import sys; from airflow.models import DagBag; "
            "b = DagBag(dag_folder=sys.argv[1]); assert not b.import_errors, b.import_errors; "
            "print(sorted(m for m in ('numpy', 'tritonclient') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "dags" / "triton_deploy.py")],
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
