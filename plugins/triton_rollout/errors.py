"""Every error the library raises on purpose, in one place.

Each message names the object at fault (file, key, field, version) and ends with what to do, because
these surface in Airflow task logs and pod logs read by someone at 3 a.m. Exit codes let pods and
shell callers tell failures apart without parsing text.
"""

from __future__ import annotations


class RolloutError(Exception):
    """Base class. ``hint`` says what the operator should do next."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  what to do: {self.hint}"
        return self.message


class ConfigError(RolloutError):
    """Bad flags, bad URIs, bad configuration values."""

    exit_code = 2
    default_hint = "fix the value named above and run again"


class ManifestError(RolloutError):
    """A release manifest that is missing a field, malformed or unsafe."""

    exit_code = 3
    default_hint = "re-publish the release with `python -m triton_rollout publish`, which writes a valid manifest"

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        prefix = f"manifest field '{field}': " if field else "manifest: "
        super().__init__(prefix + message, hint=hint)
        self.field = field


class ReleaseNotFound(RolloutError):
    """The release (or its manifest, or one of its files) is not in S3."""

    exit_code = 4
    default_hint = "check the bucket, prefix, model and version; a release is complete only once manifest.json exists"


class BucketNotFound(ReleaseNotFound):
    """The bucket itself is missing (a typo or the wrong account/endpoint, not an unfinished release)."""

    default_hint = "check the bucket name and that AWS_ENDPOINT_URL / the account is the one holding it"


class ReleaseIncomplete(ReleaseNotFound):
    """Files exist under the release prefix but manifest.json does not (upload running or failed)."""

    default_hint = (
        "wait for the producer to finish (manifest.json is written last), or re-publish the release"
    )


class S3AccessDenied(RolloutError):
    """403 / bad credentials / bad signature."""

    exit_code = 5
    default_hint = (
        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the pod's service account role) "
        "and that the policy allows s3:GetObject and s3:ListBucket on this prefix"
    )


class IntegrityError(RolloutError):
    """Bytes that do not match the manifest's size or sha256."""

    exit_code = 6
    default_hint = (
        "the object in S3 differs from its manifest: re-publish the release; nothing was published to Triton"
    )


class CorruptVersion(IntegrityError):
    """A version already published on the PVC whose files no longer match its manifest."""

    exit_code = 7
    default_hint = (
        "re-run the sync with --repair to re-download the damaged files through staging "
        "(the version is swapped in whole), or investigate who edited the model repository"
    )


class DiskFull(RolloutError):
    exit_code = 8
    default_hint = (
        "free space on the PVC (lower retention with --keep, delete old staging) or grow the volume; "
        "the staging copy was removed and published versions are untouched"
    )


class LockHeld(RolloutError):
    exit_code = 9
    default_hint = (
        "another sync or promote of this model is running; wait for it, or if its pod is gone for good, "
        "the lock becomes stale after its heartbeat timeout and is taken over automatically"
    )


class TransferError(RolloutError):
    """The network kept failing after every retry."""

    exit_code = 10
    default_hint = "check the S3 endpoint's health and network; re-running resumes from the verified parts"


class TritonError(RolloutError):
    """Triton refused, timed out or answered wrongly."""

    exit_code = 11
    default_hint = "check the Triton server log and that TRITON_URL points at a running server"


class SmokeTestFailed(RolloutError):
    exit_code = 12
    default_hint = "the candidate was not promoted; the previous version keeps serving. Inspect the release."


class BuildError(RolloutError):
    exit_code = 14
    default_hint = "read the failing step's output above; nothing was published"


class IncompatibleEngine(RolloutError):
    exit_code = 15
    default_hint = (
        "rebuild the engine with the TensorRT-LLM version and on the GPU type that Triton serves with, "
        "or update the model's serving compatibility settings if Triton was upgraded"
    )


class DriftNotRepaired(RolloutError):
    """Reconcile found the promoted version damaged on the PVC or missing from Triton and could not fix it."""

    exit_code = 16
    default_hint = (
        "read the reconcile report above; re-run the model's deploy DAG with force=true, or roll back by hand "
        "(python -m triton_rollout rollback)"
    )


class SignatureError(RolloutError):
    """A release whose manifest is unsigned, mis-signed or signed by a key the model does not trust
    (release/signing.py). Refused before a byte reaches the PVC; a retry cannot change it."""

    exit_code = 17
    default_hint = (
        "deploy only releases signed by a key in the model's signing.trusted_keys; re-publish the release "
        "with `python -m triton_rollout publish --signing-key FILE`; nothing was written to the PVC"
    )


class FleetError(RolloutError):
    """The Triton fleet could not be addressed or changed one replica at a time (triton/fleet.py): the Kubernetes
    API refused, a replica could not be taken out of its Service or did not go quiet, a replica changed under
    the rollout. Whatever the rollout had switched is put back before this is raised."""

    exit_code = 18
    default_hint = (
        "read the message for the replica and the API call; check the rollout's RBAC (k8s/rbac.yaml: pods get/list, "
        "pods/status patch, endpointslices list) and `kubectl -n <namespace> get pods -o wide`, then run again"
    )


class DeployLeaseHeld(RolloutError):
    """Another deploy run of the model holds its deploy lease (pvc/lease.py) past this step's wait: its candidate
    is between load and promote or rollback. Nothing was loaded."""

    exit_code = 19
    default_hint = (
        "wait for that run to end (promoted or rolled back) and run again; if it is dead, its lease expires "
        "--lease-ttl seconds after its last renewal and the next deploy takes it over (`python -m triton_rollout "
        "status` shows the holder)"
    )


class DeployLeaseLost(RolloutError):
    """A step of a deploy run found the model's deploy lease held by another run: its candidate may have been
    replaced since its load, so it stops before testing or promoting anything."""

    exit_code = 20
    default_hint = (
        "a step of this run waited longer than the lease's TTL (--lease-ttl) and another run took the model over; "
        "nothing was promoted by this run: run the deploy again once the other run has ended"
    )


class DowngradeRefused(RolloutError):
    """A deploy would replace the promoted version with an older one and was not allowed to (checked again under
    the deploy lease: another run may have promoted a newer version while this one waited)."""

    exit_code = 21
    default_hint = (
        "nothing was loaded; to roll back to the older version on purpose, trigger the run again with "
        "allow_downgrade=true (a backfill replays the past and needs no flag)"
    )
