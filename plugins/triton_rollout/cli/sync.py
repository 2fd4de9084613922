"""Subcommands ``sync``, ``publish``, ``prune`` and ``keygen``: S3 release <-> PVC, and the keys releases are
signed with."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from triton_rollout.cli.output import emit_result
from triton_rollout.errors import ConfigError
from triton_rollout.release.manifest import parse_time
from triton_rollout.release.signing import SIGNING_KEY_ENV
from triton_rollout.steps import S3_ENV_NOTE, SyncRequest


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    SyncRequest.add_parser(sub).set_defaults(func=_sync)

    p = sub.add_parser(
        "publish",
        help="upload a directory as a release: files first, manifest.json last",
        description=(
            "Hash every file under --src into manifest.json (size, sha256, per-part sha256 for large files), "
            "upload the files, then the manifest last. Engine releases are laid out as "
            "<triton_model>/<files of that model's version>. " + S3_ENV_NOTE
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
    p.add_argument("--signing-key", default=os.environ.get(SIGNING_KEY_ENV),
                   help="Ed25519 private key PEM file (from keygen): sign manifest.json, writing manifest.json.sig "
                        f"before it (default ${SIGNING_KEY_ENV}; unset: the release is unsigned)")
    p.add_argument("--result-file", help="also write the JSON result here")
    p.set_defaults(func=_publish)

    p = sub.add_parser(
        "keygen",
        help="create an Ed25519 key pair for signing releases",
        description="Write a new private key (PEM, mode 0600; never over an existing file) and print its key id "
                    "and public key (ed25519:<base64>), the line models.yaml's signing.trusted_keys takes. The "
                    "public key is also written to OUT.pub.",
    )
    p.add_argument("--out", required=True, help="private key file to create")
    p.set_defaults(func=_keygen)

    p = sub.add_parser("prune", help="apply retention to a model's published versions on the PVC")
    p.add_argument("--pvc", required=True)
    p.add_argument("--model", required=True, help="release model name (as in S3)")
    p.add_argument("--keep", type=int, default=3)
    p.set_defaults(func=_prune)


def _sync(args: argparse.Namespace) -> int:
    from triton_rollout.release.sync import SyncOptions, sync_release

    req = SyncRequest.from_args(args)
    opts = SyncOptions(
        concurrency=req.concurrency, large_streams=req.large_streams, write_mode=req.write_mode,
        request_size=req.request_mib * 1024 * 1024, repair=req.repair,
        verify=req.verify, keep=req.keep, prune=not req.no_prune, lock_timeout=req.lock_timeout,
        progress_interval=req.progress_interval, expect_trtllm_version=req.expect_trtllm_version,
        expect_compute_capability=req.expect_compute_capability, trusted_keys=req.public_keys,
        stall_timeout=req.stall_timeout,
    )
    result = sync_release(req.release, Path(req.pvc), options=opts)
    emit_result(result.to_dict(), req.result_file)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from triton_rollout.release.manifest import Compat, parse_compat
    from triton_rollout.release.publish import publish_release
    from triton_rollout.release.signing import SigningKey

    signing_key = SigningKey.load(args.signing_key) if args.signing_key else None
    created_at = parse_time(args.created_at, field_name="--created-at") if args.created_at else None
    compat: Compat | None = None
    if args.compat:
        try:
            compat = parse_compat(json.loads(args.compat))
        except (ValueError, RecursionError) as exc:  # json recurses per nesting level
            raise ConfigError(f"--compat is not valid JSON: {exc}") from exc
    manifest = publish_release(
        args.src, args.release, kind=args.kind, source=args.source, created_at=created_at, compat=compat,
        part_size=args.part_mib * 1024 * 1024, signing_key=signing_key,
    )
    emit_result(
        {"release": args.release, "files": len(manifest.files), "bytes": manifest.total_size,
         "created_at": manifest.to_dict()["created_at"], "kind": manifest.kind,
         "signed_by": signing_key.public_key.key_id if signing_key else None},
        args.result_file,
    )
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from triton_rollout.release.signing import generate_key

    public = generate_key(args.out)
    pub_file = Path(f"{args.out}.pub")
    pub_file.write_text(public.text + "\n")
    emit_result({"key_id": public.key_id, "public_key": public.text, "private_key_file": str(args.out),
                 "public_key_file": str(pub_file)}, None)
    return 0


def _prune(args: argparse.Namespace) -> int:
    from triton_rollout.pvc.layout import PvcLayout
    from triton_rollout.pvc.lock import PvcLock
    from triton_rollout.release.sync import prune

    layout = PvcLayout.at(args.pvc, create=False)
    with PvcLock(layout.lock_file(args.model), purpose="prune"):
        pruned = prune(layout, args.model, keep=args.keep)
    emit_result({"model": args.model, "pruned": pruned}, None)
    return 0
