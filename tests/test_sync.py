"""The sync engine against a real SeaweedFS server and real files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
from triton_rollout.errors import (
    ConfigError,
    CorruptVersion,
    IntegrityError,
    LockHeld,
    ManifestError,
    ReleaseIncomplete,
    ReleaseNotFound,
)
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.pvc.lock import PvcLock
from triton_rollout.pvc.records import DeploymentState
from triton_rollout.release.publish import publish_release
from triton_rollout.release.sync import sync_release

from devstack.s3 import SeaweedS3
from tests.helpers import FaultProxy, cli_env, make_release_dir, result_json, run_cli, tree_digest


def _publish(tmp_path: Path, bucket: str, version: int = 1, **kw: object) -> tuple[str, Path]:
    src = make_release_dir(tmp_path / f"src{version}", seed=version, **kw)  # type: ignore[arg-type]
    uri = f"s3://{bucket}/prod/llm/{version}"
    publish_release(src, uri, part_size=1024 * 1024)
    return uri, src


def test_sync_publishes_verified_copy(tmp_path: Path, bucket: str, pvc: Path) -> None:
    uri, src = _publish(tmp_path, bucket, big_mib=5, small=20)
    result = sync_release(uri, pvc)
    assert result.status == "published"
    assert result.files_transferred == 22 and result.bytes_transferred == result.bytes_total > 5 * 2**20
    assert tree_digest(pvc / "repository" / "llm" / "1") == tree_digest(src / "llm")
    assert list((pvc / "staging").iterdir()) == [pvc / "staging" / ".trash"]
    assert not any((pvc / "staging" / ".trash").iterdir())


def test_noop_resync_transfers_nothing_via_cli(tmp_path: Path, bucket: str, pvc: Path) -> None:
    uri, _ = _publish(tmp_path, bucket, small=30)
    first = result_json(run_cli("sync", "--release", uri, "--pvc", str(pvc)))
    assert first["files_transferred"] == 31
    again = result_json(run_cli("sync", "--release", uri, "--pvc", str(pvc), "--result-file", str(tmp_path / "r.json")))
    assert again["status"] == "unchanged"
    assert again["bytes_transferred"] == 0 and again["files_skipped"] == 31
    assert json.loads((tmp_path / "r.json").read_text()) == again


def test_progress_lines_in_log(tmp_path: Path, bucket: str, pvc: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri, _ = _publish(tmp_path, bucket, big_mib=8, small=2)
    caplog.set_level(logging.INFO)
    sync_release(uri, pvc, progress_interval=0.001, concurrency=1)
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert lines, "no progress line was logged"
    assert "/ 8.0 MiB" in lines[-1] and "100%" in lines[-1] and "files 4/4" in lines[-1]


def test_local_edit_is_reported_then_repaired(tmp_path: Path, bucket: str, pvc: Path) -> None:
    uri, src = _publish(tmp_path, bucket, big_mib=3, small=10)
    sync_release(uri, pvc)
    victim = pvc / "repository" / "llm" / "1" / "tokenizer" / "f0003.json"
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.write_bytes(bytes(data))  # same size, new content and mtime
    with pytest.raises(CorruptVersion, match=r"tokenizer/f0003\.json"):
        sync_release(uri, pvc)
    assert victim.read_bytes() == bytes(data), "a report must not touch the published files"
    repaired = sync_release(uri, pvc, repair=True)
    assert repaired.status == "repaired"
    assert repaired.files_transferred == 1 and repaired.bytes_transferred == victim.stat().st_size
    assert tree_digest(pvc / "repository" / "llm" / "1") == tree_digest(src / "llm")
    assert sync_release(uri, pvc).status == "unchanged"


def test_silent_bitrot_needs_full_verify(tmp_path: Path, bucket: str, pvc: Path) -> None:
    uri, _ = _publish(tmp_path, bucket, big_mib=2)
    sync_release(uri, pvc)
    victim = pvc / "repository" / "llm" / "1" / "rank0.engine"
    st = victim.stat()
    with open(victim, "r+b") as fh:  # in place: same inode, same size
        fh.seek(1_500_000)
        fh.write(b"\x00\x01\x02")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sync_release(uri, pvc).status == "unchanged"  # the cheap check cannot see it
    with pytest.raises(CorruptVersion, match=r"rank0\.engine: content differs"):
        sync_release(uri, pvc, verify="full")


def test_corrupt_object_in_s3_publishes_nothing(tmp_path: Path, bucket: str, pvc: Path, s3_client) -> None:  # type: ignore[no-untyped-def]
    uri, src = _publish(tmp_path, bucket, big_mib=3, small=3)
    key = "prod/llm/1/llm/rank0.engine"
    body = bytearray((src / "llm" / "rank0.engine").read_bytes())
    body[2 * 1024 * 1024 + 5] ^= 0x55  # inside part 2
    s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    with pytest.raises(IntegrityError) as info:
        sync_release(uri, pvc)
    msg = str(info.value)
    assert "llm/rank0.engine part 2" in msg and "expected sha256" in msg and "got" in msg
    assert not (pvc / "repository" / "llm").exists()
    assert not (pvc / "staging" / "llm").exists()


def test_object_of_wrong_size(tmp_path: Path, bucket: str, pvc: Path, s3_client) -> None:  # type: ignore[no-untyped-def]
    uri, _ = _publish(tmp_path, bucket, small=3)
    s3_client.put_object(Bucket=bucket, Key="prod/llm/1/llm/tokenizer/f0001.json", Body=b"short")
    with pytest.raises(IntegrityError, match=r"f0001\.json"):
        sync_release(uri, pvc)
    assert not (pvc / "repository" / "llm").exists()


def test_traversal_in_manifest_writes_nothing_outside(tmp_path: Path, bucket: str, pvc: Path, s3_client) -> None:  # type: ignore[no-untyped-def]
    evil = {
        "schema_version": 1, "model": "llm", "version": 1, "created_at": "2026-01-01T00:00:00Z", "kind": "engine",
        "source": "x", "files": [{"path": "llm/../../../escaped", "size": 1, "sha256": "0" * 64}],
    }
    s3_client.put_object(Bucket=bucket, Key="prod/llm/1/manifest.json", Body=json.dumps(evil).encode())
    with pytest.raises(ManifestError, match="path traversal"):
        sync_release(f"s3://{bucket}/prod/llm/1", pvc)
    assert not list(tmp_path.rglob("escaped"))
    with pytest.raises(ConfigError, match="path traversal"):
        sync_release(f"s3://{bucket}/prod/../llm/1", pvc)


def test_manifest_location_mismatch(tmp_path: Path, bucket: str, pvc: Path, s3_client) -> None:  # type: ignore[no-untyped-def]
    _publish(tmp_path, bucket)
    body = s3_client.get_object(Bucket=bucket, Key="prod/llm/1/manifest.json")["Body"].read()
    s3_client.put_object(Bucket=bucket, Key="prod/llm/2/manifest.json", Body=body)
    with pytest.raises(ManifestError, match=r"describes llm v1 but sits at"):
        sync_release(f"s3://{bucket}/prod/llm/2", pvc)


def test_missing_release_manifest_and_bucket(tmp_path: Path, bucket: str, pvc: Path, s3_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ReleaseNotFound, match="not found"):
        sync_release(f"s3://{bucket}/prod/llm/9", pvc)
    s3_client.put_object(Bucket=bucket, Key="prod/llm/8/llm/a.bin", Body=b"half an upload")
    with pytest.raises(ReleaseIncomplete, match=r"no manifest\.json"):
        sync_release(f"s3://{bucket}/prod/llm/8", pvc)
    with pytest.raises(ReleaseNotFound, match="bucket 'no-such-bucket-here' does not exist"):
        sync_release("s3://no-such-bucket-here/prod/llm/1", pvc)


def test_cli_errors_have_exit_codes_and_hints(tmp_path: Path, bucket: str, pvc: Path, s3_server: SeaweedS3) -> None:
    uri, _ = _publish(tmp_path, bucket)
    bad = run_cli("sync", "--release", uri, "--pvc", str(pvc), env=cli_env(AWS_SECRET_ACCESS_KEY="wrong-secret"))
    assert bad.returncode == 5 and "access denied" in bad.stderr and "what to do:" in bad.stderr
    missing = run_cli("sync", "--release", f"s3://{bucket}/prod/llm/77", "--pvc", str(pvc))
    assert missing.returncode == 4 and "not found" in missing.stderr
    garbage = run_cli("sync", "--release", "s3://xyz/llm/01", "--pvc", str(pvc))
    assert garbage.returncode == 2 and "leading zeros" in garbage.stderr
    no_stall_timeout = run_cli("sync", "--release", uri, "--pvc", str(pvc), "--stall-timeout", "0")
    assert no_stall_timeout.returncode == 2 and "--stall-timeout must be a positive" in no_stall_timeout.stderr
    assert not (pvc / "repository" / "llm").exists()


def test_checkpoint_release_is_not_synced(tmp_path: Path, bucket: str, pvc: Path) -> None:
    src = make_release_dir(tmp_path / "ckpt", seed=3)
    publish_release(src, f"s3://{bucket}/prod/llm/3", kind="checkpoint")
    with pytest.raises(ManifestError, match="checkpoint"):
        sync_release(f"s3://{bucket}/prod/llm/3", pvc)


def test_publish_refuses_to_overwrite_a_release(tmp_path: Path, bucket: str) -> None:
    uri, src = _publish(tmp_path, bucket)
    with pytest.raises(ConfigError, match="immutable"):
        publish_release(src, uri)


def test_failed_upload_leaves_release_incomplete(tmp_path: Path, bucket: str, pvc: Path, s3_client) -> None:  # type: ignore[no-untyped-def]
    src = make_release_dir(tmp_path / "src", seed=4, small=6)

    class Flaky:
        """A producer whose 4th upload fails: the manifest must never be written."""

        def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
            self.real, self.calls = real, 0

        def upload_file(self, *a, **kw):  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls == 4:
                raise OSError("network went away")
            return self.real.upload_file(*a, **kw)

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.real, name)

    with pytest.raises(OSError, match="network went away"):
        publish_release(src, f"s3://{bucket}/prod/llm/4", client=Flaky(s3_client), concurrency=1)
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="prod/llm/4/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert keys and "prod/llm/4/manifest.json" not in keys
    with pytest.raises(ReleaseIncomplete):
        sync_release(f"s3://{bucket}/prod/llm/4", pvc)


@pytest.mark.parametrize("mode", ["503", "reset", "stall"])
def test_retries_through_throttling_and_resets(tmp_path: Path, bucket: str, pvc: Path, s3_server: SeaweedS3,
                                                 monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    uri, src = _publish(tmp_path, bucket, big_mib=4, small=3)
    proxy = FaultProxy(s3_server.port, mode=mode, failures=3, match="rank0.engine")
    started = time.monotonic()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        # stall: the proxy stops sending mid-body and keeps the connection open; the stall timeout drops it.
        result = sync_release(uri, pvc, request_size=1024 * 1024, stall_timeout=0.5)
    finally:
        proxy.close()
    assert proxy.broken == 3 and result.retries >= 3
    assert time.monotonic() - started < 15  # 3 stalls of 0.5 s plus backoff; the old fixed 60 s would be 180 s
    assert tree_digest(pvc / "repository" / "llm" / "1") == tree_digest(src / "llm")


def test_a_long_file_under_sparse_resets_finishes_only_failures_in_a_row_count(
        tmp_path: Path, bucket: str, pvc: Path, s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 resets of one 10-part file on one stream, each after a part and a half: more than the 6 attempts a part
    range gets, but each attempt verified a part first. The counter used to run over the whole file, so a long
    engine under sparse faults failed although every attempt made progress."""
    uri, src = _publish(tmp_path, bucket, big_mib=10, small=1)
    proxy = FaultProxy(s3_server.port, mode="reset", failures=8, match="rank0.engine", cut_after=3 * 2**19)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        result = sync_release(uri, pvc, request_size=16 * 2**20, large_streams=1)  # one GET for the rest of the file
    finally:
        proxy.close()
    assert proxy.broken == 8 and result.retries >= 8
    assert tree_digest(pvc / "repository" / "llm" / "1") == tree_digest(src / "llm")


def test_lock_held_by_live_owner(tmp_path: Path, bucket: str, pvc: Path) -> None:
    uri, _ = _publish(tmp_path, bucket)
    layout = PvcLayout.at(pvc)
    with PvcLock(layout.lock_file("llm"), purpose="test holder"):
        with pytest.raises(LockHeld, match="test holder"):
            sync_release(uri, pvc, lock_timeout=0.5)
        assert not (pvc / "repository" / "llm").exists()
    assert sync_release(uri, pvc).status == "published"


def test_stale_locks_are_taken_over(tmp_path: Path, bucket: str, pvc: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri, _ = _publish(tmp_path, bucket)
    lock = PvcLayout.at(pvc).lock_file("llm")
    # A killed process on this host: its pid no longer exists.
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "start": "1", "token": "old"}))
    caplog.set_level(logging.WARNING)
    assert sync_release(uri, pvc, lock_timeout=2).status == "published"
    assert any("took over stale lock" in r.getMessage() for r in caplog.records)
    assert not lock.exists()
    # An owner on another node whose heartbeat stopped long ago.
    lock.write_text(json.dumps({"host": "node-that-died", "pid": 1, "token": "old2"}))
    os.utime(lock, (0, 0))
    assert sync_release(uri, pvc, lock_timeout=2).status == "unchanged"
    # ...but a fresh heartbeat from another node is respected.
    lock.write_text(json.dumps({"host": "busy-node", "pid": 1, "token": "live"}))
    with pytest.raises(LockHeld, match="busy-node"):
        sync_release(uri, pvc, lock_timeout=0.3)


def test_concurrent_syncs_are_serialized(tmp_path: Path, bucket: str, pvc: Path) -> None:
    uris = [_publish(tmp_path, bucket, version=v, big_mib=16, small=5)[0] for v in (1, 2)]
    procs = [
        subprocess.Popen(
            [*_cli(), "sync", "--release", u, "--pvc", str(pvc), "--concurrency", "1", "--progress-interval", "0"],
            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for u in uris
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert any("waiting for lock" in err for _, err in outs), "neither sync waited for the other"
    assert {p.name for p in (pvc / "repository" / "llm").iterdir()} == {"1", "2"}


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "triton_rollout"]


def test_retention_keeps_promoted_and_rollback(tmp_path: Path, bucket: str, pvc: Path) -> None:
    layout = PvcLayout.at(pvc)
    layout.save_deployment(DeploymentState(model="llm", promoted=1, previous=2))
    pruned: list[int] = []
    for v in range(1, 7):
        uri, _ = _publish(tmp_path, bucket, version=v, small=2)
        pruned += sync_release(uri, pvc, keep=2).pruned
    on_disk = sorted(int(p.name) for p in (pvc / "repository" / "llm").iterdir())
    assert on_disk == [1, 2, 5, 6]
    assert sorted(pruned) == [3, 4]
    assert layout.published_versions("llm") == [1, 2, 5, 6]
    # A re-sync of a pruned version brings it back (and keeps it: it is the one just synced).
    uri3 = f"s3://{bucket}/prod/llm/3"
    assert sync_release(uri3, pvc, keep=2).status == "published"
    assert sorted(int(p.name) for p in (pvc / "repository" / "llm").iterdir()) == [1, 2, 3, 5, 6]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs as a full disk")
def test_disk_full_keeps_previous_version(tmp_path: Path, bucket: str) -> None:
    mnt = tmp_path / "small-pvc"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount not permitted here")
    try:
        uri1, src1 = _publish(tmp_path, bucket, version=1, big_mib=2)
        sync_release(uri1, mnt)
        uri2, _ = _publish(tmp_path, bucket, version=2, big_mib=20)
        from triton_rollout.errors import DiskFull

        with pytest.raises(DiskFull, match="free but the release needs"):
            sync_release(uri2, mnt)
        assert tree_digest(mnt / "repository" / "llm" / "1") == tree_digest(src1 / "llm")
        assert not (mnt / "repository" / "llm" / "2").exists()
        assert not (mnt / "staging" / "llm" / "2").exists()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs as a nearly full disk")
def test_resume_on_a_nearly_full_pvc_counts_the_space_staging_holds(tmp_path: Path, bucket: str,
                                                                    s3_server: SeaweedS3) -> None:
    import shutil
    import signal

    mnt = tmp_path / "small-pvc"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount not permitted here")
    try:
        uri, src = _publish(tmp_path, bucket, big_mib=8, small=2)
        # A slow store, so the sync is killed with a part of the big file verified and the rest still to come.
        with FaultProxy(s3_server.port, mode="503", failures=0, match="rank0.engine", delay=0.3) as proxy:
            proc = subprocess.Popen([*_cli(), "sync", "--release", uri, "--pvc", str(mnt), "--concurrency", "1",
                                     "--large-streams", "1", "--request-mib", "1", "--progress-interval", "0"],
                                    env=cli_env(AWS_ENDPOINT_URL=proxy.endpoint), stderr=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL)
            journal = mnt / "staging" / "llm" / "1" / "llm" / "rank0.engine.parts"
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline and not (
                    journal.exists() and journal.read_text().split()):
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        # The killed sync's .partial holds the big file's blocks (allocated up front): what is free now is less
        # than the release, but the resume needs only what staging does not hold yet.
        assert shutil.disk_usage(mnt).free < 8 * 2**20
        result = sync_release(uri, mnt)
        assert result.status == "published" and result.parts_reused >= 1
        assert tree_digest(mnt / "repository" / "llm" / "1") == tree_digest(src / "llm")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_small_files_are_durable_by_one_syncfs_before_anything_is_published(
        tmp_path: Path, bucket: str, pvc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One fsync per small file cost ~15% of a 3,000-file sync: they share one syncfs(2), which must come
    before the publish record and the rename into repository/; multi-part files keep their own fsync."""
    import stat

    from triton_rollout.release import transfer

    uri, src = _publish(tmp_path, bucket, big_mib=3, small=40)
    events: list[str] = []
    real_fsync, real_syncfs = os.fsync, transfer._syncfs

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            events.append("fsync " + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def syncfs(path: Path) -> bool:
        published = (pvc / "repository" / "llm" / "1").exists() or any((pvc / "state").rglob("*.json"))
        events.append(f"syncfs published={published}")
        return real_syncfs(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(transfer, "_syncfs", syncfs)
    assert sync_release(uri, pvc).status == "published"
    assert tree_digest(pvc / "repository" / "llm" / "1") == tree_digest(src / "llm")
    assert real_syncfs(pvc), "syncfs(2) is missing here: the fallback (an fsync per file) ran instead"
    assert events.count("syncfs published=False") == 1 and "syncfs published=True" not in events, events
    staged_syncs = [e for e in events if e.startswith("fsync") and "/staging/" in e]
    assert len(staged_syncs) == 1 and staged_syncs[0].endswith("rank0.engine.partial"), events


def test_a_resume_downloads_again_a_staged_small_file_whose_bytes_did_not_survive(
        tmp_path: Path, bucket: str, pvc: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A node crash after a small file was renamed in, before the syncfs, can leave it at its final staging
    name with its size and without its bytes: a resume re-hashes it instead of trusting its size."""
    uri, src = _publish(tmp_path, bucket, big_mib=2, small=5)
    staged = PvcLayout.at(pvc).staging_release("llm", 1)
    good = src / "llm" / "tokenizer" / "f0001.json"
    lost = staged / "llm" / "tokenizer" / "f0001.json"
    lost.parent.mkdir(parents=True)
    lost.write_bytes(bytes(good.stat().st_size))  # right size, zeros: what an unsynced file can come back as
    kept = staged / "llm" / "tokenizer" / "f0002.json"
    kept.write_bytes((src / "llm" / "tokenizer" / "f0002.json").read_bytes())  # survived: not fetched again
    caplog.set_level(logging.WARNING)
    result = sync_release(uri, pvc)
    assert result.status == "published"
    assert tree_digest(pvc / "repository" / "llm" / "1") == tree_digest(src / "llm")
    assert result.files_skipped == 1 and result.files_transferred == result.files_total - 1
    assert any("tokenizer/f0001.json" in r.getMessage() and "downloading it again" in r.getMessage()
               for r in caplog.records)


def test_without_syncfs_each_small_file_is_fsynced_before_publishing(
        tmp_path: Path, bucket: str, pvc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from triton_rollout.release import transfer

    uri, src = _publish(tmp_path, bucket, small=12)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if "/staging/" in path and not (pvc / "repository" / "llm" / "1").exists():
            synced.append(path)
        real_fsync(fd)

    monkeypatch.setattr(transfer, "_syncfs", lambda path: False)  # a libc without syncfs(2)
    monkeypatch.setattr(os, "fsync", fsync)
    assert sync_release(uri, pvc).status == "published"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert {p.split("/staging/llm/1/", 1)[-1] for p in synced if os.path.basename(p) != "1"} >= files, synced
