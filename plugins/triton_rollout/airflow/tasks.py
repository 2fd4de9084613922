"""Worker-side steps of the deploy DAG: resolve the release (S3 only) and announce the deployment."""

from __future__ import annotations

import logging
import time
from typing import Any

from triton_rollout.config import ModelDeployment

from .runinfo import downgrade_refusal, run_request

log = logging.getLogger(__name__)


def resolve(model: ModelDeployment, context: Any) -> dict[str, Any]:
    """The explicit ``version`` param, else the newest complete release (as of the date a backfill replays).

    Refuses (fails, no retry) a manual run that would replace what Triton serves with an older version
    unless the run sets ``allow_downgrade``."""
    from airflow.sdk.exceptions import AirflowFailException

    from triton_rollout.errors import SignatureError
    from triton_rollout.release.resolve import describe, find_release, serving_version

    from .connections import runtime_model, s3_from_connection

    t0 = time.monotonic()
    model = runtime_model(model)
    request = run_request(context)  # the sensor already refused a bad conf
    version, when = request.version, request.as_of
    s3 = s3_from_connection(model.aws_conn_id)
    try:
        found = find_release(model, version=version, as_of=when, client=s3.client, access=s3.access,
                             trusted_keys=model.signing.trusted_keys)
    except SignatureError as exc:
        raise AirflowFailException(str(exc)) from None  # a retry cannot sign the release
    if found is None:
        wanted = f"v{version}" if version else f"any release created at or before {when}" if when else "any release"
        # Retrying cannot make a missing release appear: fail now, with what was looked for.
        raise AirflowFailException(f"no complete release of {model.name} matches {wanted} under "
                                   f"{model.release_prefix}/{model.name}/ (manifest.json is written last)")
    log.info("resolved %s%s", describe(found), f" (as of {when.isoformat()})" if when and not version else "")
    serving = serving_version(model.triton_url, found.triton_models)
    refusal = downgrade_refusal(request, model.name, found.version, serving)
    if refusal:
        raise AirflowFailException(refusal)
    if serving is not None and found.version < serving:
        why = "allow_downgrade=true" if request.allow_downgrade else "a backfill replays the past"
        log.warning("deploying %s v%d over the newer v%d that Triton serves (%s)", model.name, found.version,
                    serving, why)
    log.info("SUMMARY resolve %s v%d: %s release created %s; bytes=%d; seconds=%.2f; endpoint=%s",
             model.name, found.version, found.kind, found.created_at, found.bytes, time.monotonic() - t0,
             found.uri)
    return found.to_dict()


def announce(model: ModelDeployment, asset: Any, context: Any) -> dict[str, Any]:
    """Check the promoted version answers ready, then record the Asset event (version in its extra)."""
    from triton_rollout.errors import TritonError
    from triton_rollout.triton.control import TritonControl

    from .connections import runtime_model

    t0 = time.monotonic()
    model = runtime_model(model)
    ti = context["ti"]
    release = ti.xcom_pull(task_ids="resolve")
    loaded = ti.xcom_pull(task_ids="load", key="result") or {}
    version = int(release["version"])
    entries = loaded.get("entries") or release["triton_models"]
    with TritonControl(model.triton_url, timeout=10) as control:
        not_ready = [n for n in entries if not control.is_version_ready(n, version)]
        base = control.base_url
    if not_ready:
        raise TritonError(f"{model.name} v{version} was promoted but {not_ready} is not ready on {model.triton_url}",
                          hint="run the reconcile DAG or look at the Triton log")
    endpoints = [f"{base}/v2/models/{n}/versions/{version}/infer" for n in entries]
    extra = {"model": model.name, "version": version, "release": release["release"], "kind": release["kind"],
             "created_at": release["created_at"], "endpoints": endpoints, "run_id": context["run_id"]}
    context["outlet_events"][asset].extra = extra
    log.info("SUMMARY announce %s v%d: deployed and ready; bytes=%d; seconds=%.2f; endpoint=%s",
             model.name, version, release["bytes"], time.monotonic() - t0, endpoints[0])
    return extra
