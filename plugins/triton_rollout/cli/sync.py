"""Subcommands ``sync``, ``publish`` and ``prune``: S3 release <-> PVC."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from triton_rollout.cli.output import emit_result
from triton_rollout.errors import ConfigError
from triton_rollout.release.manifest import parse_time

_ENV_NOTE = (
    "S3 endpoint and credentials come from the standard AWS environment: AWS_ENDPOINT_URL (omit for AWS), "
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, or the pod's service account (IRSA)."
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "sync",
        help="download a release into the PVC, verified, and publish it atomically",
        description=(
            "Download s3://BUCKET/PREFIX/MODEL/VERSION into PVC/staging, verify every file's size and sha256 "
            "against manifest.json, fsync, and rename each Triton model directory into "
            "PVC/repository/<triton_model>/<VERSION>/ in one step. Re-running resumes; re-syncing an intact "
            "version transfers nothing. " + _ENV_NOTE
        ),
    )
    p.add_argument("--release", required=True, help="s3://BUCKET/[PREFIX/]MODEL/VERSION")
    p.add_argument("--pvc", required=True, help="the PVC mount: holds repository/, staging/ and state/")
    p.add_argument("--concurrency", type=int, default=8,
                   help="parallel GETs of whole small files (default 8)")
    p.add_argument("--large-streams", type=int, default=4,
                   help="parallel ranged GETs into large (multi-part) files (default 4; more helps on "
                        "high-latency links with spare cores)")
    p.add_argument("--write-mode", choices=["mmap", "pwrite"], default="mmap",
                   help="how parts of large files are written: through a shared mapping of each part "
                        "(default) or pwrite, for filesystems where shared mappings misbehave")
    p.add_argument("--request-mib", type=int, default=64, help="bytes per ranged GET in MiB (default 64)")
    p.add_argument("--repair", action="store_true",
                   help="if the published version no longer matches its manifest, re-download the damaged "
                        "files through staging and swap the version in whole (default: report and fail)")
    p.add_argument("--verify", choices=["stat", "full"], default="stat",
                   help="how to check an already-published version: 'stat' compares size/mtime/inode with "
                        "the publish record (fast), 'full' re-hashes every file (default stat)")
    p.add_argument("--keep", type=int, default=3,
                   help="retention: newest versions to keep besides the promoted and previous ones (default 3)")
    p.add_argument("--no-prune", action="store_true", help="skip retention")
    p.add_argument("--lock-timeout", type=float, default=600.0,
                   help="seconds to wait for another sync of this model (default 600)")
    p.add_argument("--progress-interval", type=float, default=5.0,
                   help="seconds between progress lines in the log, 0 for none (default 5)")
    p.add_argument("--expect-trtllm-version",
                   help="refuse an engine release built with another TensorRT-LLM version (before any download)")
    p.add_argument("--expect-compute-capability",
                   help="refuse an engine release built for another GPU compute capability, e.g. 9.0")
    p.add_argument("--result-file", help="also write the JSON result here (e.g. /airflow/xcom/return.json)")
    p.set_defaults(func=_sync)

    p = sub.add_parser(
        "publish",
        help="upload a directory as a release: files first, manifest.json last",
        description=(
            "Hash every file under --src into manifest.json (size, sha256, per-part sha256 for large files), "
            "upload the files, then the manifest last. Engine releases are laid out as "
            "<triton_model>/<files of that model's version>. " + _ENV_NOTE
        ),
    )
    p.add_argument("--src", required=True, help="directory holding the release files")
    p.add_argument("--release", required=True, help="s3://BUCKET/[PREFIX/]MODEL/VERSION")
    p.add_argument("--kind", choices=["engine", "checkpoint"], default="engine")
    p.add_argument("--source", default="", help="free text recorded in the manifest (git sha, CI job, ...)")
    p.add_argument("--created-at", help="ISO-8601 UTC time for the manifest (default now); backfills use it")
    p.add_argument("--compat", help="JSON object of engine compatibility facts "
                                    "(trtllm_version, compute_capability, tp_size, pp_size, dtype)")
    p.add_argument("--part-mib", type=int, default=8, help="part size for per-part hashes in MiB (default 8)")
    p.add_argument("--result-file", help="also write the JSON result here")
    p.set_defaults(func=_publish)

    p = sub.add_parser("prune", help="apply retention to a model's published versions on the PVC")
    p.add_argument("--pvc", required=True)
    p.add_argument("--model", required=True, help="release model name (as in S3)")
    p.add_argument("--keep", type=int, default=3)
    p.set_defaults(func=_prune)


def _sync(args: argparse.Namespace) -> int:
    from triton_rollout.release.sync import SyncOptions, sync_release

    if min(args.concurrency, args.large_streams, args.request_mib) < 1 or args.keep < 0:
        raise ConfigError("--concurrency, --large-streams and --request-mib must be >= 1 and --keep >= 0")
    opts = SyncOptions(
        concurrency=args.concurrency, large_streams=args.large_streams, write_mode=args.write_mode,
        request_size=args.request_mib * 1024 * 1024, repair=args.repair,
        verify=args.verify, keep=args.keep, prune=not args.no_prune, lock_timeout=args.lock_timeout,
        progress_interval=args.progress_interval, expect_trtllm_version=args.expect_trtllm_version,
        expect_compute_capability=args.expect_compute_capability,
    )
    result = sync_release(args.release, Path(args.pvc), options=opts)
    emit_result(result.to_dict(), args.result_file)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from triton_rollout.release.manifest import Compat, parse_compat
    from triton_rollout.release.publish import publish_release

    created_at = parse_time(args.created_at, field_name="--created-at") if args.created_at else None
    compat: Compat | None = None
    if args.compat:
        try:
            compat = parse_compat(json.loads(args.compat))
        except ValueError as exc:
            raise ConfigError(f"--compat is not valid JSON: {exc}") from exc
    manifest = publish_release(
        args.src, args.release, kind=args.kind, source=args.source, created_at=created_at, compat=compat,
        part_size=args.part_mib * 1024 * 1024,
    )
    emit_result(
        {"release": args.release, "files": len(manifest.files), "bytes": manifest.total_size,
         "created_at": manifest.to_dict()["created_at"], "kind": manifest.kind},
        args.result_file,
    )
    return 0


def _prune(args: argparse.Namespace) -> int:
    from triton_rollout.pvc.layout import PvcLayout
    from triton_rollout.pvc.lock import PvcLock
    from triton_rollout.release.sync import prune

    layout = PvcLayout.at(args.pvc, create=False)
    with PvcLock(layout.locks / f"{args.model}.lock", purpose="prune"):
        pruned = prune(layout, args.model, keep=args.keep)
    emit_result({"model": args.model, "pruned": pruned}, None)
    return 0
