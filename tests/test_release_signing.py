"""Signed releases: keygen, publish --signing-key and the sync's signature gate, against the real local S3
(SeaweedFS), the real CLI and the real sync; the Airflow side through the sync operator and one dag.test()."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from triton_rollout.errors import ConfigError, SignatureError
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.release.publish import publish_release
from triton_rollout.release.s3 import ReleaseUri
from triton_rollout.release.signing import SIGNATURE_NAME, PublicKey, SigningKey, generate_key
from triton_rollout.release.sync import sync_release

from tests.chaos.ledger import counted_in
from tests.helpers import cli_env, make_release_dir, result_json, run_cli

# Each refusal case counts into the faults table of `make chaos` (tests/chaos/ledger.py).
UNTRUSTED = counted_in(
    "Signing", "unsigned, mis-signed, changed-after-signing and re-signed releases (engine and checkpoint)",
    injected_how="releases published without a key, with another key, edited in S3 after signing",
    behaviour="SignatureError (exit 17) at resolve, build, sync and reconcile before a byte reaches the PVC; "
              "the run fails without retrying")


def _key(tmp_path: Path, name: str) -> tuple[Path, PublicKey]:
    path = tmp_path / f"{name}.pem"
    return path, generate_key(path)


def _object(s3_client: Any, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _put(s3_client: Any, bucket: str, key: str, body: bytes) -> None:
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)


def _assert_pvc_untouched(pvc: Path) -> None:
    # Not even staging/ or state/: the gate runs before the PVC is opened.
    assert sorted(p.name for p in pvc.iterdir()) == [], sorted(str(p) for p in pvc.rglob("*"))


# -- keygen, publish, sync ------------------------------------------------------------------------------------


def test_keygen_publish_and_sync_round_trip(s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path,
                                            pvc: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

    key_file = tmp_path / "keys" / "release.pem"
    key_file.parent.mkdir()
    made = result_json(run_cli("keygen", "--out", str(key_file)))
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The key id and public key printed are those of the private key written (checked with cryptography).
    private = load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert made["public_key"] == "ed25519:" + base64.b64encode(raw).decode()
    assert made["key_id"] == hashlib.sha256(raw).hexdigest()[:16]
    assert Path(made["public_key_file"]).read_text().strip() == made["public_key"]
    again = run_cli("keygen", "--out", str(key_file))
    assert again.returncode == ConfigError.exit_code and "never overwrites" in again.stderr

    src = make_release_dir(tmp_path / "src", seed=1)
    release = f"s3://{bucket}/releases/llm/1"
    published = result_json(run_cli("publish", "--src", str(src), "--release", release,
                                    "--signing-key", str(key_file)))
    assert published["signed_by"] == made["key_id"]
    uri = ReleaseUri.parse(release)
    manifest_bytes = _object(s3_client, bucket, uri.manifest_key)
    sig = json.loads(_object(s3_client, bucket, uri.signature_key))
    assert (sig["schema"], sig["algorithm"], sig["key_id"]) == (1, "ed25519", made["key_id"])
    # An independent check: the signature is over the exact manifest.json bytes in S3.
    Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(sig["signature"]), manifest_bytes)

    synced = run_cli("sync", "--release", release, "--pvc", str(pvc), "--trusted-keys", made["public_key"])
    assert result_json(synced)["status"] == "published"
    assert f"signed by trusted key {made['key_id']}" in synced.stderr
    assert (PvcLayout.at(pvc).version_dir("llm", 1) / "config.pbtxt").read_bytes() == \
        (src / "llm" / "config.pbtxt").read_bytes()


def test_the_signing_key_can_come_from_the_environment(s3_server: Any, s3_client: Any, bucket: str,
                                                       tmp_path: Path) -> None:
    key_file, public = _key(tmp_path, "env")
    release = f"s3://{bucket}/releases/llm/2"
    out = result_json(run_cli("publish", "--src", str(make_release_dir(tmp_path / "src")), "--release", release,
                              env=cli_env(TRITON_ROLLOUT_SIGNING_KEY_FILE=str(key_file))))
    assert out["signed_by"] == public.key_id
    sig = json.loads(_object(s3_client, bucket, ReleaseUri.parse(release).signature_key))
    assert sig["key_id"] == public.key_id


# -- what the gate refuses, before the PVC is touched ---------------------------------------------------------


@UNTRUSTED
def test_an_unsigned_release_is_refused_with_its_own_exit_code_and_accepted_without_keys(
        s3_server: Any, bucket: str, tmp_path: Path, pvc: Path) -> None:
    _, trusted = _key(tmp_path, "trusted")
    release = f"s3://{bucket}/releases/llm/1"
    publish_release(make_release_dir(tmp_path / "src"), release)

    proc = run_cli("sync", "--release", release, "--pvc", str(pvc), "--trusted-keys", trusted.text)
    assert proc.returncode == SignatureError.exit_code == 17, proc.stderr
    assert "is not signed" in proc.stderr and trusted.key_id in proc.stderr and "what to do:" in proc.stderr
    _assert_pvc_untouched(pvc)

    # Without trusted keys (a model with no signing section) behaviour is unchanged: it syncs.
    assert sync_release(release, pvc, prune=False).status == "published"


@UNTRUSTED
def test_a_manifest_changed_after_signing_is_refused_and_the_pvc_untouched(
        s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path, pvc: Path) -> None:
    key_file, public = _key(tmp_path, "publisher")
    src = make_release_dir(tmp_path / "src", seed=2)
    release = ReleaseUri.parse(f"s3://{bucket}/releases/llm/1")
    publish_release(src, release, signing_key=SigningKey.load(key_file))

    # The attack the signature exists for: someone with write access to the bucket swaps a file and
    # rewrites its manifest entry to match, so the sha256 checks alone would pass.
    manifest = json.loads(_object(s3_client, bucket, release.manifest_key))
    entry = next(f for f in manifest["files"] if f["path"] == "llm/config.pbtxt")
    evil = b'name: "llm"\nbackend: "python"\n# not what was published\n'
    _put(s3_client, bucket, release.file_key(entry["path"]), evil)
    entry.update(size=len(evil), sha256=hashlib.sha256(evil).hexdigest())
    _put(s3_client, bucket, release.manifest_key, (json.dumps(manifest, indent=1) + "\n").encode())

    with pytest.raises(SignatureError) as info:
        sync_release(release, pvc, trusted_keys=(public,), prune=False)
    assert "does not match manifest.json" in info.value.message and public.key_id in info.value.message
    _assert_pvc_untouched(pvc)

    # Proof that the gate is what stopped it: without keys the swapped file verifies and is published.
    sync_release(release, pvc, prune=False)
    assert (PvcLayout.at(pvc).version_dir("llm", 1) / "config.pbtxt").read_bytes() == evil


@UNTRUSTED
def test_a_release_signed_or_re_signed_by_another_key_is_refused_naming_both_key_ids(
        s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path, pvc: Path) -> None:
    trusted_file, trusted = _key(tmp_path, "trusted")
    other_file, other = _key(tmp_path, "other")
    src = make_release_dir(tmp_path / "src", seed=3)

    signed_by_other = ReleaseUri.parse(f"s3://{bucket}/releases/llm/1")
    publish_release(src, signed_by_other, signing_key=SigningKey.load(other_file))
    proc = run_cli("sync", "--release", str(signed_by_other), "--pvc", str(pvc), "--trusted-keys", trusted.text)
    assert proc.returncode == SignatureError.exit_code, proc.stderr
    assert f"signed by key '{other.key_id}'" in proc.stderr and f"trusted: [{trusted.key_id}]" in proc.stderr

    # Published by the trusted key, then its signature replaced by another key's over the same bytes.
    re_signed = ReleaseUri.parse(f"s3://{bucket}/releases/llm/2")
    publish_release(src, re_signed, signing_key=SigningKey.load(trusted_file))
    assert sync_release(re_signed, tmp_path / "check-pvc", trusted_keys=(trusted,), prune=False).status == "published"
    manifest_bytes = _object(s3_client, bucket, re_signed.manifest_key)
    _put(s3_client, bucket, re_signed.signature_key, SigningKey.load(other_file).signature_document(manifest_bytes))
    with pytest.raises(SignatureError, match=f"signed by key '{other.key_id}'.*trusted: \\[{trusted.key_id}\\]"):
        sync_release(re_signed, pvc, trusted_keys=(trusted,), prune=False)

    # Another key's signature that claims the trusted key's id does not verify.
    forged = json.loads(SigningKey.load(other_file).signature_document(manifest_bytes))
    forged["key_id"] = trusted.key_id
    _put(s3_client, bucket, re_signed.signature_key, json.dumps(forged).encode())
    with pytest.raises(SignatureError, match=r"does not match manifest\.json"):
        sync_release(re_signed, pvc, trusted_keys=(trusted,), prune=False)
    _assert_pvc_untouched(pvc)


@UNTRUSTED
def test_an_unsigned_re_publish_removes_the_old_signature(s3_server: Any, s3_client: Any, bucket: str,
                                                          tmp_path: Path) -> None:
    key_file, _ = _key(tmp_path, "k")
    release = ReleaseUri.parse(f"s3://{bucket}/releases/llm/1")
    publish_release(make_release_dir(tmp_path / "src"), release, signing_key=SigningKey.load(key_file))
    assert _object(s3_client, bucket, release.signature_key)
    publish_release(make_release_dir(tmp_path / "src2", seed=9), release, overwrite=True)
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=release.key + "/")["Contents"]
    assert SIGNATURE_NAME not in {o["Key"].rsplit("/", 1)[-1] for o in listed}
    # And a source directory cannot smuggle in a signature of its own.
    (tmp_path / "src2" / SIGNATURE_NAME).write_text("{}")
    with pytest.raises(ConfigError, match="written by publish itself"):
        publish_release(tmp_path / "src2", f"s3://{bucket}/releases/llm/2")


# -- configuration -------------------------------------------------------------------------------------------


def _models(signing: object) -> dict[str, Any]:
    return {"models": [{"name": "llm", "release_prefix": "s3://models/releases", "signing": signing}]}


def test_models_yaml_keys_are_validated_at_parse_and_travel_to_the_sync_pod(tmp_path: Path) -> None:
    from triton_rollout.config.loader import load_models
    from triton_rollout.kube.specs import step_pod
    from triton_rollout.steps import SyncRequest, request_from_argv

    _, a = _key(tmp_path, "a")
    _, b = _key(tmp_path, "b")
    short = "ed25519:" + base64.b64encode(b"short").decode()
    for bad, field in ((["ed25519:not-base64!"], "models[0].signing.trusted_keys[0]"),
                       ([a.text, short], "models[0].signing.trusted_keys[1]"),
                       ([a.text, "ssh-ed25519 AAAA"], "models[0].signing.trusted_keys[1]"),
                       (a.text, "models[0].signing.trusted_keys"),
                       ([a.text, a.text], "models[0].signing.trusted_keys")):
        with pytest.raises(ConfigError, match=re.escape(f"config field '{field}'")):
            load_models(_models({"trusted_keys": bad}))
    with pytest.raises(ConfigError, match=r"'models\[0\]\.signing': unknown key"):
        load_models(_models({"trusted_key": [a.text]}))

    (model,) = load_models(_models({"trusted_keys": [a.text, b.text]}))
    assert model.signing.required and [k.key_id for k in model.signing.trusted_keys] == [a.key_id, b.key_id]
    request = SyncRequest.for_model(model, model.release(3))
    args = step_pod(model, request).spec.containers[0].args
    assert args[args.index("--trusted-keys") + 1] == f"{a.text},{b.text}"
    assert request_from_argv(args).public_keys == (a, b)  # what the pod parses back
    # No signing section: the sync is asked for no signature, as before.
    (plain,) = load_models({"models": [{"name": "llm", "release_prefix": "s3://models/releases"}]})
    assert not plain.signing.required and "--trusted-keys" not in SyncRequest.for_model(plain, plain.release(3)
                                                                                        ).to_argv()


def test_a_bad_trusted_key_flag_is_a_config_error(tmp_path: Path) -> None:
    proc = run_cli("sync", "--release", "s3://models/releases/llm/1", "--pvc", str(tmp_path),
                   "--trusted-keys", "ed25519:AAAA")
    assert proc.returncode == ConfigError.exit_code and "--trusted-keys[0]" in proc.stderr


# -- engines built in the cluster -----------------------------------------------------------------------------


def test_the_build_pod_mounts_the_signing_key_secret(tmp_path: Path) -> None:
    from triton_rollout.config.loader import load_models
    from triton_rollout.kube.specs import step_pod
    from triton_rollout.release.signing import SIGNING_KEY_ENV
    from triton_rollout.steps import BuildRequest

    from devstack import demo_models

    _, a = _key(tmp_path, "a")
    (model,) = load_models({"models": [{"name": "llm", "release_prefix": "s3://models/releases",
                                        "build": {"spec": demo_models.LLM_BUILD_SPEC},
                                        "signing": {"trusted_keys": [a.text], "build_key_secret": "llm-signer"}}]})
    ckpt = model.release(1)
    pod = step_pod(model, BuildRequest.for_model(model, ckpt, ckpt.engine_release()))
    container = pod.spec.containers[0]
    volume = next(v for v in pod.spec.volumes if v.secret is not None and v.secret.secret_name == "llm-signer")
    mount = next(m for m in container.volume_mounts if m.name == volume.name)
    env = {e.name: e for e in container.env}
    assert mount.read_only and env[SIGNING_KEY_ENV].value == f"{mount.mount_path}/signing-key.pem"
    assert env[SIGNING_KEY_ENV].value_from is None  # a path, never the key itself
    with pytest.raises(ConfigError, match=r"models\[0\]\.signing\.build_key_secret"):
        load_models(_models({"build_key_secret": "Not_A_Secret"}))


@pytest.mark.slow
@UNTRUSTED
def test_an_engine_built_with_the_build_key_syncs_and_one_built_without_is_refused(
        s3_server: Any, bucket: str, tmp_path: Path, pvc: Path) -> None:
    from devstack import demo_models

    key_file, build_key = _key(tmp_path, "build")
    built = {}
    for version, env in ((1, {"TRITON_ROLLOUT_SIGNING_KEY_FILE": str(key_file)}), (2, {})):
        ckpt = demo_models.publish_demo_checkpoint(bucket, tmp_path, version)
        output = str(ReleaseUri.parse(ckpt).engine_release())
        result = result_json(run_cli("build", "--spec-json", json.dumps(demo_models.LLM_BUILD_SPEC),
                                     "--checkpoint", ckpt, "--output", output,
                                     env=cli_env(SCRATCH_DIR=str(tmp_path / "scratch"), **env)))
        assert result["signed_by"] == (build_key.key_id if env else None)
        built[version] = output
    assert sync_release(built[1], pvc, trusted_keys=(build_key,), prune=False).status == "published"
    proc = run_cli("sync", "--release", built[2], "--pvc", str(tmp_path / "pvc2"), "--trusted-keys", build_key.text)
    assert proc.returncode == SignatureError.exit_code, proc.stderr
    assert "is not signed" in proc.stderr and "build pod" in proc.stderr
    assert not (tmp_path / "pvc2").exists()


@pytest.mark.slow
@UNTRUSTED
def test_a_build_refuses_a_checkpoint_the_model_does_not_trust_before_downloading_it(
        s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    """The checkpoint is what the build compiles into the engine: it passes the same gate as an engine release,
    before the GPU probe and before a byte is downloaded; a signed one builds."""
    from devstack import demo_models

    key_file, trusted = _key(tmp_path, "publisher")
    spec = json.dumps(demo_models.LLM_BUILD_SPEC)
    unsigned = demo_models.publish_demo_checkpoint(bucket, tmp_path, 1)
    scratch = tmp_path / "scratch"
    proc = run_cli("build", "--spec-json", spec, "--checkpoint", unsigned, "--workdir", str(scratch),
                   "--output", str(ReleaseUri.parse(unsigned).engine_release()), "--trusted-keys", trusted.text,
                   env=cli_env())
    assert proc.returncode == SignatureError.exit_code, proc.stderr
    assert "is not signed" in proc.stderr and trusted.key_id in proc.stderr
    assert not scratch.exists() or not any(p.is_file() for p in scratch.rglob("*"))  # nothing downloaded
    engines = s3_client.list_objects_v2(Bucket=bucket, Prefix="engines/").get("KeyCount", 0)
    assert engines == 0

    signed = demo_models.release_uri(bucket, "checkpoints", demo_models.LLM_MODEL, 2)
    publish_release(demo_models.write_llm_checkpoint(tmp_path / "ckpt2", 2), signed, kind="checkpoint",
                    signing_key=SigningKey.load(key_file))
    result = result_json(run_cli("build", "--spec-json", spec, "--checkpoint", signed,
                                 "--output", str(ReleaseUri.parse(signed).engine_release()),
                                 "--trusted-keys", trusted.text, env=cli_env(SCRATCH_DIR=str(scratch))))
    assert result["status"] == "published", result


@UNTRUSTED
def test_resolve_reads_only_manifests_the_model_trusts(s3_server: Any, s3_client: Any, bucket: str,
                                                       tmp_path: Path) -> None:
    """find_release with the model's keys: a trusted release resolves; an unsigned newer one (anyone who can
    write the bucket) fails the resolve naming it instead of steering the run with its kind or created_at, or
    being passed over for an older one."""
    from triton_rollout.config.loader import load_models
    from triton_rollout.release.resolve import find_release

    key_file, trusted = _key(tmp_path, "publisher")
    (model,) = load_models({"models": [{"name": "llm", "release_prefix": f"s3://{bucket}/prod",
                                        "signing": {"trusted_keys": [trusted.text]}}]})
    src = make_release_dir(tmp_path / "src", small=2)
    publish_release(src, str(model.release(1)), signing_key=SigningKey.load(key_file))
    keys = model.signing.trusted_keys
    assert find_release(model, trusted_keys=keys).version == 1  # type: ignore[union-attr]
    publish_release(src, str(model.release(2)), kind="checkpoint")  # unsigned
    with pytest.raises(SignatureError, match=r"llm/2.*not signed"):
        find_release(model, trusted_keys=keys)
    with pytest.raises(SignatureError, match="not signed"):
        find_release(model, version=2, trusted_keys=keys)
    assert find_release(model, version=1, trusted_keys=keys).version == 1  # type: ignore[union-attr]
    # Without keys (the release sensor, which only notices releases) the newest is found as before.
    assert find_release(model).version == 2  # type: ignore[union-attr]


# -- Airflow ---------------------------------------------------------------------------------------------------


def test_the_sync_operator_fails_a_signature_error_without_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from triton_rollout.airflow.operators import PERMANENT_EXIT_CODES, StepFailed
    from triton_rollout.steps import StepFailure

    from tests.test_dags_deploy import _deploy_dag

    assert PERMANENT_EXIT_CODES[SignatureError.exit_code] == "SignatureError"
    _, dag = _deploy_dag(monkeypatch)
    sync = dag.get_task("sync")
    assert sync.retries > 0  # retries are for transient errors; the signature gate must not use them
    sync._exit_code, sync._pod_name = SignatureError.exit_code, "demo-llm-sync-x"
    sync._failure = StepFailure("release s3://b/p/demo-llm/1 is not signed", "publish it signed")
    with pytest.raises(AirflowFailException, match=r"(?s)exit code 17 \(SignatureError\).*not retried"), \
            sync._fail_fast_on_permanent_errors():
        raise RuntimeError("Pod demo-llm-sync-x returned a failure")
    sync._exit_code = 10  # a transient error (TransferError) still goes to the task's retries
    with pytest.raises(StepFailed), sync._fail_fast_on_permanent_errors():
        raise RuntimeError("Pod demo-llm-sync-x returned a failure")


@pytest.mark.slow
@UNTRUSTED
def test_a_deploy_of_an_unsigned_release_fails_the_resolve_task_at_once(
        rollout: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    import yaml

    from tests.helpers import DEPLOY_LLM, LLM, output

    _, trusted = _key(tmp_path, "trusted")
    config = yaml.safe_load((rollout.dags / "models.yaml").read_text())
    for model in config["models"]:
        model["signing"] = {"trusted_keys": [trusted.text]}
    models_file = tmp_path / "models-signed.yaml"
    models_file.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("TRITON_ROLLOUT_MODELS", str(models_file))
    rollout.publish(LLM, 1)  # unsigned

    dr, states = rollout.run(DEPLOY_LLM)
    out = output(capfd, caplog)
    # Refused where the manifest is first read, before any pod: its fields (kind, created_at) decide the run.
    assert dr.state == "failed" and states["resolve"] == "failed", (states, out[-4000:])
    assert states.get("sync") in (None, "upstream_failed"), states
    resolve_ti = next(ti for ti in dr.get_task_instances() if ti.task_id == "resolve")
    assert resolve_ti.try_number == 1  # failed on its first try: not up_for_retry
    assert "is not signed" in out and trusted.key_id in out
    assert not PvcLayout.at(rollout.pvc, create=False).repository.joinpath("ensemble", "1").exists()


@UNTRUSTED
def test_reconcile_repairs_drift_only_from_a_release_the_model_trusts(
        s3_server: Any, bucket: str, tmp_path: Path, pvc: Path) -> None:
    """The promoted version, damaged on the PVC, and its release rewritten in S3 by someone who can write the
    bucket: the reconcile's re-sync goes through the same gate as the first sync, so it refuses the rewritten
    copy (and leaves the damage for a person) instead of repairing from it."""
    from triton_rollout.triton.control import TritonControl
    from triton_rollout.triton.reconcile import reconcile_model

    key_file, trusted = _key(tmp_path, "trusted")
    release = ReleaseUri.parse(f"s3://{bucket}/releases/llm/1")
    publish_release(make_release_dir(tmp_path / "src", seed=4), release, signing_key=SigningKey.load(key_file))
    assert sync_release(release, pvc, trusted_keys=(trusted,), prune=False).status == "published"
    layout = PvcLayout.at(pvc)
    state = layout.deployment("llm")
    state.promoted = 1
    layout.save_deployment(state)
    publish_release(make_release_dir(tmp_path / "rewritten", seed=5), release, overwrite=True)  # unsigned
    damaged = layout.version_dir("llm", 1) / "tokenizer" / "f0000.json"
    damaged.write_bytes(b"damaged")

    # Triton is never reached: the re-sync fails first (a closed port, tiny timeout).
    with TritonControl("http://127.0.0.1:9", timeout=0.5) as control:
        refused = reconcile_model(layout, control, "llm", release_prefix=f"s3://{bucket}/releases",
                                  trusted_keys=(trusted,))
        assert not refused.repaired and damaged.read_bytes() == b"damaged"
        assert any("is not signed" in e for e in refused.errors), refused.errors
        # Without keys (a model that does not sign), the same reconcile repairs from the rewritten copy.
        repaired = reconcile_model(layout, control, "llm", release_prefix=f"s3://{bucket}/releases")
    assert repaired.repaired and damaged.read_bytes() != b"damaged"
