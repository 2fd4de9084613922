"""Unit tests: the typed deployment config (validators, schema, defaults merge, env expansion, config files)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from triton_rollout.config.kubernetes import AwsCredentials, KubernetesConfig, ResourceSpec, Toleration
from triton_rollout.config.loader import expand_env, load_models, load_project, read_config_file
from triton_rollout.config.model import ModelDeployment, ProjectConfig, ReconcileSettings, SmokeSettings
from triton_rollout.config.validators import (
    DNS_LABEL,
    boolean,
    check_keys,
    fail,
    field_names,
    integer,
    labels,
    load_section,
    mapping,
    number,
    string,
    url,
)
from triton_rollout.errors import ConfigError

MODEL = {"name": "m", "release_prefix": "s3://bkt/p"}


def raises_at(field: str, message: str = "") -> pytest.RaisesExc[ConfigError]:
    """ConfigError for ``field`` (by its path in the document), whose message contains ``message``."""
    return pytest.raises(ConfigError, match=re.escape(f"config field '{field}': ") + ".*" + re.escape(message))


# -- validators --------------------------------------------------------------------------------------


def test_fail_names_the_field_and_keeps_the_default_hint() -> None:
    err = fail("models[0].keep", "must be >= 0")
    assert isinstance(err, ConfigError)
    assert err.message == "config field 'models[0].keep': must be >= 0"
    assert err.hint == ConfigError.default_hint


def test_mapping_and_check_keys() -> None:
    assert mapping({"a": 1}, "x") == {"a": 1}
    with raises_at("x.y", "must be a mapping, got list"):
        mapping([1], "x.y")
    check_keys({"a": 1}, {"a", "c"}, "x")
    with raises_at("x", "unknown key(s) ['b']; allowed: ['a', 'c']"):
        check_keys({"a": 1, "b": 2}, {"a", "c"}, "x")


def test_string_checks_type_emptiness_and_pattern() -> None:
    assert string("serving", "ns", DNS_LABEL, "namespace name") == "serving"
    with raises_at("ns", "must be a non-empty string, got ''"):
        string("", "ns")
    with raises_at("ns", "must be a non-empty string, got 3"):
        string(3, "ns")
    with raises_at("ns", "'Bad_NS' is not a valid namespace name"):
        string("Bad_NS", "ns", DNS_LABEL, "namespace name")


@pytest.mark.parametrize(
    ("value", "minimum", "maximum", "message"),
    [
        (True, 0, None, "must be an integer, got True"),
        (1.0, 0, None, "must be an integer, got 1.0"),
        ("3", 0, None, "must be an integer, got '3'"),
        (0, 1, None, "must be >= 1, got 0"),
        (11, 0, 10, "must be between 0 and 10, got 11"),
        (-1, 0, 10, "must be between 0 and 10, got -1"),
    ],
)
def test_integer_refuses(value: object, minimum: int, maximum: int | None, message: str) -> None:
    with raises_at("a.b", message):
        integer(value, "a.b", minimum, maximum)


def test_integer_and_number_accept_their_bounds() -> None:
    assert integer(0, "p", 0, 10) == 0 and integer(10, "p", 0, 10) == 10 and integer(10**9, "p", 1) == 10**9
    assert number(5, "p", 0.1, 5) == 5.0 and isinstance(number(5, "p", 0.1, 5), float)
    assert number(0.1, "p", 0.1) == 0.1


@pytest.mark.parametrize(
    ("value", "maximum", "message"),
    [
        (False, None, "must be a number, got False"),
        ("1", None, "must be a number, got '1'"),
        (0.05, None, "must be >= 0.1, got 0.05"),
        (6, 5, "must be between 0.1 and 5, got 6"),
    ],
)
def test_number_refuses(value: object, maximum: float | None, message: str) -> None:
    with raises_at("smoke.x", message):
        number(value, "smoke.x", 0.1, maximum)


@pytest.mark.parametrize("value", [1, 0, "true", "yes", None])
def test_boolean_takes_only_real_booleans(value: object) -> None:
    with raises_at("params.force", f"must be true or false, got {value!r}"):
        boolean(value, "params.force")


def test_boolean_accepts_booleans() -> None:
    assert boolean(True, "p") is True and boolean(False, "p") is False


def test_labels_checks_keys_prefixes_and_values() -> None:
    good = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "gpu", "empty": ""}
    assert labels(good, "sel") == good
    with raises_at("sel.bad key", "is not a valid Kubernetes label key"):
        labels({"bad key": "x"}, "sel")
    with raises_at("sel.Bad_Prefix/name", "is not a valid Kubernetes label key"):
        labels({"Bad_Prefix/name": "x"}, "sel")
    with raises_at("sel.pool", "label value 'has space' is not valid"):
        labels({"pool": "has space"}, "sel")
    with raises_at("sel.pool", "label value 1 is not valid"):
        labels({"pool": 1}, "sel")
    with raises_at("sel.pool", "label value"):
        labels({"pool": "x" * 64}, "sel")
    with raises_at("sel", "must be a mapping"):
        labels(["pool=gpu"], "sel")


def test_url_wants_http_with_a_host_and_drops_trailing_slashes() -> None:
    assert url("https://triton:8000/", "u") == "https://triton:8000"
    assert url("http://h/v2//", "u") == "http://h/v2"
    for bad in ("ftp://triton", "http://", "triton:8000"):
        with raises_at("u", f"must be an http(s) URL, got {bad!r}"):
            url(bad, "u")
    with raises_at("u", "must be a non-empty string"):
        url(None, "u")


def test_field_names_and_load_section() -> None:
    assert field_names(SmokeSettings) == {"latency_budget_s", "ready_deadline_s"}
    smoke = load_section(SmokeSettings, {"ready_deadline_s": 30}, "models[1].smoke")
    assert smoke == SmokeSettings(ready_deadline_s=30)
    # The path travels into the section, so its own checks name the field in the document.
    with raises_at("models[1].smoke.ready_deadline_s", "must be between 1 and 7200, got 0"):
        load_section(SmokeSettings, {"ready_deadline_s": 0}, "models[1].smoke")
    with raises_at("models[1].smoke", "unknown key(s) ['_path']"):
        load_section(SmokeSettings, {"_path": "x"}, "models[1].smoke")


# -- schema ------------------------------------------------------------------------------------------


def test_config_from_dict_roundtrip_and_normalisation() -> None:
    m = ModelDeployment.from_dict({
        "name": "llama",
        "release_prefix": "s3://releases/prod/",
        "triton_url": "http://triton:8000/",
        "keep": 3,
        "kubernetes": {
            "namespace": "serving",
            "sync_resources": {"requests": {"cpu": 1, "memory": "1Gi"}},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "aws": {"irsa_role_arn": "arn:aws:iam::123456789012:role/rollout"},
        },
    })
    assert str(m.release(7)) == "s3://releases/prod/llama/7"
    assert m.triton_url == "http://triton:8000"
    assert m.kubernetes.sync_resources.requests == {"cpu": "1", "memory": "1Gi"}
    assert m.kubernetes.tolerations == (Toleration("gpu", "Exists", None, "NoSchedule"),)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "m", "release_prefix": "s3://bkt/p", "keep": -1}, "model.keep"),
        ({"name": "m", "release_prefix": "gs://b/p"}, "model.release_prefix"),
        ({"name": "m", "release_prefix": "s3://bkt/p", "kubernetes": {"namespace": "Bad_NS"}},
         "model.kubernetes.namespace"),
        ({"name": "m", "release_prefix": "s3://bkt/p", "kubernetes": {"run_as_user": 0}},
         "model.kubernetes.run_as_user"),
        ({"name": "m", "release_prefix": "s3://bkt/p", "kubernetes": {"tolerationz": []}}, "model.kubernetes"),
        ({"name": "m", "release_prefix": "s3://bkt/p",
          "kubernetes": {"sync_resources": {"limits": {"memory": "lots"}}}},
         "model.kubernetes.sync_resources.limits.memory"),
        ({"name": "m", "release_prefix": "s3://bkt/p",
          "kubernetes": {"tolerations": [{"key": "k", "operator": "Maybe"}]}},
         "model.kubernetes.tolerations[0].operator"),
        ({"name": "m", "release_prefix": "s3://bkt/p",
          "kubernetes": {"aws": {"secret_name": "s", "irsa_role_arn": "arn:aws:iam::123456789012:role/r"}}},
         "model.kubernetes.aws"),
        ({"name": "m", "release_prefix": "s3://bkt/p", "kubernetes": {"images": {"sync": "has space:1"}}},
         "model.kubernetes.images.sync"),
        ({"name": "m", "release_prefix": "s3://bkt/p", "tp_size": 0}, "model.tp_size"),
        ({"release_prefix": "s3://bkt/p"}, "model.name"),
    ],
)
def test_config_errors_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelDeployment.from_dict(data)
    assert f"config field '{field}'" in str(info.value)


def test_resource_spec_rejects_non_quantities() -> None:
    with pytest.raises(ConfigError, match=r"requests\.cpu"):
        ResourceSpec(requests={"cpu": "two"})


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**MODEL, "kepp": 2}, "model"),
        ({**MODEL, "smoke": {"latency_budget": 1}}, "model.smoke"),
        ({**MODEL, "kubernetes": {"aws": {"secret": "s"}}}, "model.kubernetes.aws"),
        ({**MODEL, "kubernetes": {"sync_resources": {"limit": {}}}}, "model.kubernetes.sync_resources"),
        ({**MODEL, "build": {"spec": {"family": "llama", "dtyp": "float16"}}}, "model.build.spec"),
    ],
)
def test_unknown_keys_are_refused_with_the_allowed_list(data: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelDeployment.from_dict(data)
    message = info.value.message
    assert message.startswith(f"config field '{field}': unknown key(s) [")
    # The allowed keys are listed, so the typo is easy to fix.
    assert "; allowed: [" in message


def test_unknown_model_key_lists_every_model_field() -> None:
    with pytest.raises(ConfigError) as info:
        ModelDeployment.from_dict({**MODEL, "kepp": 2})
    assert f"allowed: {sorted(field_names(ModelDeployment))}" in info.value.message
    assert "'keep'" in info.value.message and "'_path'" not in info.value.message


def test_release_refuses_version_zero() -> None:
    with raises_at("version", "must be >= 1, got 0"):
        ModelDeployment(**MODEL).release(0)


def test_aws_credentials_need_exactly_one_source() -> None:
    with raises_at("aws", "set exactly one of secret_name"):
        AwsCredentials()
    with raises_at("aws.region", "is not a valid AWS region"):
        AwsCredentials(secret_name="s", region="EU West")
    with raises_at("aws.endpoint_url", "must be an http(s) URL, got 's3:9000'"):
        AwsCredentials(secret_name="s", endpoint_url="s3:9000")


def test_kubernetes_mount_paths_refuse_shared_or_relative_dirs() -> None:
    for bad in ("pvc", "/", "/tmp", "/dev/shm/", "/a/../b"):
        with raises_at("kubernetes.pvc_mount_path", "must be an absolute path other than /, /tmp, /dev/shm"):
            KubernetesConfig(pvc_mount_path=bad)


# -- build spec inside the model ---------------------------------------------------------------------


def test_build_spec_shape_comes_from_the_model() -> None:
    m = ModelDeployment.from_dict({**MODEL, "tp_size": 2, "pp_size": 2,
                                   "kubernetes": {"triton_repository_path": "/repo"},
                                   "build": {"spec": {"family": "llama"}}})
    spec = m.build.build_spec
    assert spec is not None
    assert (spec.tp_size, spec.pp_size, spec.triton_repository) == (2, 2, "/repo")
    assert m.build.pool_slots == 4
    assert ModelDeployment(**MODEL).build.build_spec is None


def test_build_spec_tp_pp_must_match_the_served_shape() -> None:
    data = {**MODEL, "tp_size": 2, "build": {"spec": {"family": "llama", "tp_size": 4}}}
    with raises_at("model.build.spec.tp_size", "built for tp=4 x pp=1 but the model is served with tp=2 x pp=1"):
        ModelDeployment.from_dict(data)
    data = {**MODEL, "build": {"spec": {"family": "llama", "pp_size": 2}}}
    with raises_at("model.build.spec.tp_size", "built for tp=1 x pp=2 but the model is served with tp=1 x pp=1"):
        ModelDeployment.from_dict(data)


def test_a_bad_build_spec_field_is_named_under_the_model() -> None:
    with raises_at("models[0].build.spec.dtype", "must be one of"):
        load_models({"models": [{**MODEL, "build": {"spec": {"family": "llama", "dtype": "fp16"}}}]})


# -- schedules and the reconcile DAG -----------------------------------------------------------------


@pytest.mark.parametrize("schedule", [None, "@hourly", "@daily", "*/30 * * * *", "0 3 * * MON-FRI", "0 0 L * ?"])
def test_valid_schedules(schedule: str | None) -> None:
    assert ModelDeployment(**MODEL, schedule=schedule).schedule == schedule
    assert ReconcileSettings(schedule=schedule).schedule == schedule


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("every hour", "'every hour' is neither a preset"),
        ("* * * *", "nor a 5-field cron expression"),
        ("* * * * * *", "nor a 5-field cron expression"),
        ("0 3 * * $(reboot)", "nor a 5-field cron expression"),
        ("@often", "is neither a preset ('@hourly'"),
        ("", "must be a non-empty string"),
        (30, "must be a non-empty string"),
    ],
)
def test_invalid_schedules_name_the_field(schedule: object, message: str) -> None:
    with raises_at("model.schedule", message):
        ModelDeployment(**MODEL, schedule=schedule)  # type: ignore[arg-type]
    with raises_at("reconcile.schedule", message):
        ReconcileSettings(schedule=schedule)  # type: ignore[arg-type]


def test_reconcile_full_verify_hour_bounds() -> None:
    assert ReconcileSettings() == ReconcileSettings(schedule="*/30 * * * *", full_verify_hour=3)
    assert ReconcileSettings(full_verify_hour=0).full_verify_hour == 0
    assert ReconcileSettings(full_verify_hour=23).full_verify_hour == 23
    assert ReconcileSettings(full_verify_hour=None).full_verify_hour is None
    for bad in (24, -1):
        with raises_at("reconcile.full_verify_hour", f"must be between 0 and 23, got {bad}"):
            ReconcileSettings(full_verify_hour=bad)
    with raises_at("reconcile.full_verify_hour", "must be an integer, got True"):
        ReconcileSettings(full_verify_hour=True)


def test_load_project_reads_the_reconcile_section() -> None:
    project = load_project({"models": [MODEL], "reconcile": {"schedule": None, "full_verify_hour": 0}})
    assert project.reconcile == ReconcileSettings(schedule=None, full_verify_hour=0)
    assert project.model("m").release_prefix == "s3://bkt/p"
    assert load_project({"models": [MODEL]}).reconcile == ReconcileSettings()
    with raises_at("reconcile", "unknown key(s) ['hour']"):
        load_project({"models": [MODEL], "reconcile": {"hour": 3}})
    with raises_at("reconcile.full_verify_hour", "got 24"):
        load_project({"models": [MODEL], "reconcile": {"full_verify_hour": 24}})


def test_project_model_lookup_names_the_configured_models() -> None:
    project = ProjectConfig(models=[ModelDeployment(**MODEL)])
    with pytest.raises(ConfigError, match=r"model 'other' is not configured; configured: \['m'\]"):
        project.model("other")


# -- defaults and the models list --------------------------------------------------------------------


def test_load_models_merges_defaults_and_rejects_duplicates() -> None:
    doc = {
        "defaults": {"namespace": "serving", "sync_resources": {"limits": {"cpu": "1"}}},
        "models": [
            {"name": "a", "release_prefix": "s3://bkt/r"},
            {"name": "b", "release_prefix": "s3://bkt/r", "kubernetes": {"namespace": "other"}},
        ],
    }
    a, b = load_models(doc)
    assert (a.kubernetes.namespace, b.kubernetes.namespace) == ("serving", "other")
    assert b.kubernetes.sync_resources.limits == {"cpu": "1"}
    doc["models"].append({"name": "a", "release_prefix": "s3://bkt/r"})
    with pytest.raises(ConfigError, match=r"models\[2\]\.name"):
        load_models(doc)


def test_defaults_deep_merge_keeps_the_keys_a_model_does_not_override() -> None:
    doc = {
        "defaults": {
            "release_prefix": "s3://bkt/r",
            "kubernetes": {"namespace": "serving",
                           "sync_resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            "smoke": {"latency_budget_s": 2.0, "ready_deadline_s": 30},
        },
        "models": [
            {"name": "a"},
            {"name": "b", "kubernetes": {"sync_resources": {"limits": {"memory": "4Gi"}}},
             "smoke": {"ready_deadline_s": 60}},
        ],
    }
    before = json.dumps(doc, sort_keys=True)
    a, b = load_models(doc)
    assert b.kubernetes.sync_resources.limits == {"cpu": "1", "memory": "4Gi"}
    assert b.kubernetes.namespace == "serving"
    assert (b.smoke.latency_budget_s, b.smoke.ready_deadline_s) == (2.0, 60)
    # One model's override neither leaks into the next nor into the document.
    assert a.kubernetes.sync_resources.limits == {"cpu": "1", "memory": "1Gi"}
    assert a.smoke.ready_deadline_s == 30
    assert json.dumps(doc, sort_keys=True) == before


def test_kubernetes_only_defaults_still_load() -> None:
    # The older form: the defaults block holds only kubernetes settings, without the `kubernetes:` level.
    (m,) = load_models({"defaults": {"namespace": "serving", "gpu_product": "NVIDIA-L4"}, "models": [MODEL]})
    assert (m.kubernetes.namespace, m.kubernetes.gpu_product) == ("serving", "NVIDIA-L4")
    # Mixing both forms is refused: with a model key present, the kubernetes key is unknown at this level.
    with raises_at("defaults", "unknown key(s) ['namespace']"):
        load_models({"defaults": {"keep": 3, "namespace": "serving"}, "models": [MODEL]})


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        ({"models": []}, "models", "must be a non-empty list"),
        ({"models": {"m": MODEL}}, "models", "must be a non-empty list"),
        ({"modles": [MODEL]}, "<root>", "unknown key(s) ['modles']; allowed: ['defaults', 'models']"),
        ({"models": ["m"]}, "models[0]", "must be a mapping, got str"),
        ({"defaults": [], "models": [MODEL]}, "defaults", "must be a mapping, got list"),
        ({"models": [MODEL, {**MODEL, "name": "n"}, MODEL]}, "models[2].name", "duplicate model name 'm'"),
    ],
)
def test_models_document_errors(doc: dict, field: str, message: str) -> None:
    with raises_at(field, message):
        load_models(doc)


# -- ${VAR} expansion --------------------------------------------------------------------------------


def test_expand_env_substitutes_and_applies_defaults() -> None:
    env = {"HOST": "triton", "PORT": "8000", "EMPTY": ""}
    doc = {"url": "http://${HOST}:${PORT}", "list": ["${HOST}", "${NOPE:-fallback}"], "n": 3,
           "empty_is_unset": "${EMPTY:-used}", "plain": "no refs", "default_empty": "a${NOPE:-}b"}
    assert expand_env(doc, environ=env) == {
        "url": "http://triton:8000", "list": ["triton", "fallback"], "n": 3,
        "empty_is_unset": "used", "plain": "no refs", "default_empty": "ab"}


def test_expand_env_keeps_scalar_types_of_whole_value_references() -> None:
    env = {"N": "30", "F": "0.5", "B": "true", "S": "abc", "PAD": "030"}
    assert expand_env("${N}", environ=env) == 30
    assert expand_env("${F}", environ=env) == 0.5
    assert expand_env("${B}", environ=env) is True
    assert expand_env("${S}", environ=env) == "abc"
    assert expand_env("${PAD}", environ=env) == "030"  # not JSON: stays text
    assert expand_env("${NOPE:-7}", environ=env) == 7
    # Inside a longer string a reference is text.
    assert expand_env("x${N}", environ=env) == "x30"


def test_expand_env_whole_empty_reference_is_none() -> None:
    assert expand_env({"endpoint_url": "${AWS_ENDPOINT_URL:-}"}, environ={}) == {"endpoint_url": None}
    assert expand_env("${SET_BUT_EMPTY:-}", environ={"SET_BUT_EMPTY": ""}) is None


def test_expand_env_missing_variable_names_the_field() -> None:
    doc = {"models": [{"name": "m"}, {"kubernetes": {"aws": {"region": "${AWS_REGION_X}"}}}]}
    with raises_at("<root>.models[1].kubernetes.aws.region",
                   "refers to ${AWS_REGION_X}, which is not set in the environment "
                   "(set it, or give a default: ${AWS_REGION_X:-value})"):
        expand_env(doc, environ={})
    with raises_at("x.y", "${MISSING}"):
        expand_env("a-${MISSING}", "x.y", environ={})


def test_expand_env_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_ROLLOUT_TEST_VAR", "from-env")
    assert expand_env("${TRITON_ROLLOUT_TEST_VAR}") == "from-env"


# -- config files ------------------------------------------------------------------------------------


def test_read_config_file_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_URL_X", "http://triton:8000/")
    monkeypatch.setenv("KEEP_X", "3")
    monkeypatch.delenv("ENDPOINT_X", raising=False)
    monkeypatch.delenv("ENV_NAME_X", raising=False)
    cfg = tmp_path / "models.yaml"
    cfg.write_text(
        "defaults:\n"
        "  release_prefix: s3://releases/${ENV_NAME_X:-prod}\n"
        "  triton_url: ${TRITON_URL_X}\n"
        "  kubernetes:\n"
        "    aws: {secret_name: s3-creds, endpoint_url: '${ENDPOINT_X:-}'}\n"
        "models:\n"
        "  - name: llama\n"
        "    keep: ${KEEP_X}\n"
        "  - name: other\n"
        "    serving: {compute_capability: 9.0}\n"
        "reconcile:\n"
        "  full_verify_hour: 5\n"
    )
    project = read_config_file(cfg)
    llama, other = project.models
    assert (llama.release_prefix, llama.triton_url, llama.keep) == ("s3://releases/prod", "http://triton:8000", 3)
    assert llama.kubernetes.aws.endpoint_url is None
    assert other.keep == 2 and other.serving.compute_capability == "9.0"
    assert project.reconcile.full_verify_hour == 5


def test_read_config_file_json_and_errors_name_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "models.json"
    cfg.write_text(json.dumps({"models": [MODEL], "reconcile": {"schedule": "@daily"}}))
    project = read_config_file(str(cfg))
    assert [m.name for m in project.models] == ["m"] and project.reconcile.schedule == "@daily"
    cfg.write_text(json.dumps({"models": [{**MODEL, "keep": -1}]}))
    with pytest.raises(ConfigError) as info:
        read_config_file(cfg)
    assert info.value.message.startswith(f"{cfg}: config field 'models[0].keep': must be between 0 and 1000")


@pytest.mark.parametrize(("name", "text", "kind"), [
    ("models.yaml", "models: [unclosed\n", "YAML"),
    ("models.yml", "models:\n  - name: m\n - bad indent\n", "YML"),  # the suffix, as written
    ("models.json", '{"models": ', "JSON"),
])
def test_read_config_file_broken_file_names_the_file(tmp_path: Path, name: str, text: str, kind: str) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_config_file(cfg)
    assert info.value.message.startswith(f"{cfg} is not valid {kind}: ")


def test_read_config_file_missing_file_says_which_variable_points_at_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        read_config_file(missing)
    assert info.value.message.startswith(f"cannot read the models config file {missing}: ")
    assert "TRITON_ROLLOUT_MODELS" in info.value.hint


# -- the Kubernetes API, images and start-up waits ------------------------------------------------------------


def test_the_api_defaults_to_in_cluster_and_takes_one_other_way() -> None:
    from triton_rollout.config.kubernetes import KubernetesApi

    assert KubernetesConfig().api == KubernetesApi(in_cluster=True)
    kube = ModelDeployment.from_dict({**MODEL, "kubernetes": {"api": {"config_file": "/etc/kube/config",
                                                                      "context": "prod"}}}).kubernetes
    assert (kube.api.in_cluster, kube.api.config_file, kube.api.context) == (False, "/etc/kube/config", "prod")
    api = ModelDeployment.from_dict({**MODEL, "kubernetes": {"api": {"conn_id": "k8s"}}}).kubernetes.api
    assert (api.in_cluster, api.conn_id) == (False, "k8s")


@pytest.mark.parametrize(
    ("api", "field", "message"),
    [
        ({"in_cluster": True, "config_file": "/k"}, "model.kubernetes.api", "exactly one of"),
        ({"config_file": "/k", "conn_id": "k8s"}, "model.kubernetes.api", "exactly one of"),
        ({"in_cluster": False}, "model.kubernetes.api.in_cluster", "name a kubeconfig"),
        ({"in_cluster": "yes"}, "model.kubernetes.api.in_cluster", "true or false"),
        ({"config_file": "kube/config"}, "model.kubernetes.api.config_file", "one absolute kubeconfig path"),
        ({"config_file": "/a/config:/b/config"}, "model.kubernetes.api.config_file", "not a KUBECONFIG list"),
        ({"context": "prod"}, "model.kubernetes.api.context", "no meaning in-cluster"),
        ({"kubeconfig": "/k"}, "model.kubernetes.api", "unknown key"),
    ],
)
def test_api_errors_name_the_field(api: dict, field: str, message: str) -> None:
    with raises_at(field, message):
        ModelDeployment.from_dict({**MODEL, "kubernetes": {"api": api}})


def test_the_local_stack_kubeconfig_becomes_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dags/models.yaml: $KUBECONFIG when set (make up, the tests), else in-cluster (Airflow on the cluster)."""
    monkeypatch.setenv("TRITON_URL", "http://127.0.0.1:8000")
    models = Path(__file__).resolve().parents[1] / "dags" / "models.yaml"
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    assert {m.kubernetes.api.config_file for m in read_config_file(models).models} == {str(tmp_path / "kubeconfig")}
    monkeypatch.delenv("KUBECONFIG")
    assert all(m.kubernetes.api.in_cluster and m.kubernetes.api.config_file is None
               for m in read_config_file(models).models)


def test_image_pull_secrets_are_secret_names() -> None:
    kube = ModelDeployment.from_dict({**MODEL, "kubernetes": {"image_pull_secrets": ["ngc", "ecr-pull"]}}).kubernetes
    assert kube.image_pull_secrets == ("ngc", "ecr-pull")
    assert KubernetesConfig().image_pull_secrets == ()
    with raises_at("model.kubernetes.image_pull_secrets[1]", "not a valid Secret name"):
        ModelDeployment.from_dict({**MODEL, "kubernetes": {"image_pull_secrets": ["ngc", "Not_A_Name"]}})
    with raises_at("model.kubernetes.image_pull_secrets", "must be a list"):
        ModelDeployment.from_dict({**MODEL, "kubernetes": {"image_pull_secrets": "ngc"}})


def test_placeholder_images_are_refused_naming_the_field() -> None:
    from triton_rollout.config.kubernetes import PLACEHOLDER_REGISTRY

    images = KubernetesConfig().images
    assert images.sync.startswith(PLACEHOLDER_REGISTRY)  # the code's default stays a placeholder
    with raises_at("models[0].kubernetes.images.sync", "is the placeholder"):
        images.require_published("models[0].kubernetes.images")
    named = {"sync": "registry.example.com/ml/sync:1.2", "build": "registry.example.com/ml/build:1.2"}
    kube = ModelDeployment.from_dict({**MODEL, "kubernetes": {"images": {"sync": named["sync"]}}}).kubernetes
    with raises_at("m.images.build", "docker/Dockerfile.build"):
        kube.images.require_published("m.images")
    kube = ModelDeployment.from_dict({**MODEL, "kubernetes": {"images": named}}).kubernetes
    kube.images.require_published("m.images")  # real names pass (Triton's default is NGC's real image)


def test_start_timeouts_per_pod_kind() -> None:
    kube = KubernetesConfig()
    # A GPU node scale-up and a ~30 GB pull: the build pod waits longer than the small sync pods.
    assert kube.build_start_timeouts.schedule_s > kube.sync_start_timeouts.schedule_s
    assert kube.build_start_timeouts.startup_s > kube.sync_start_timeouts.startup_s
    kube = ModelDeployment.from_dict({**MODEL, "kubernetes": {
        "build_start_timeouts": {"schedule_s": 2400, "startup_s": 5400}}}).kubernetes
    assert (kube.build_start_timeouts.schedule_s, kube.build_start_timeouts.startup_s) == (2400, 5400)
    with raises_at("model.kubernetes.sync_start_timeouts.startup_s", "between 1 and 86400"):
        ModelDeployment.from_dict({**MODEL, "kubernetes": {"sync_start_timeouts": {"startup_s": 0}}})
    with raises_at("model.kubernetes.build_start_timeouts", "unknown key"):
        ModelDeployment.from_dict({**MODEL, "kubernetes": {"build_start_timeouts": {"pull_s": 60}}})
