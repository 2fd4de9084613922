"""The PVC fills up mid-sync: another process fills the volume while the real `triton_rollout sync` CLI writes.

The PVC is a small tmpfs (root only: mount). The up-front free-space check passes (the release fits when the
sync starts), then a filler process (dd, as another tenant of the volume would) takes the rest of the space
while the sync is writing, so ENOSPC hits mid-write. The sync must fail with DiskFull (its exit code, a message
naming the free and needed bytes and what to do), nothing of the new version visible (RepositoryWatcher), the
previous version intact, its staging removed, and the same sync must succeed once the space is freed.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from triton_rollout.errors import DiskFull
from triton_rollout.release.publish import publish_release

from devstack.s3 import SeaweedS3
from tests.chaos.ledger import LEDGER
from tests.helpers import FaultProxy, RepositoryWatcher, cli_env, make_release_dir, result_json, run_cli, tree_digest

pytestmark = pytest.mark.slow

VOLUME_MIB = 24  # the previous version (9 MiB) and the next one fit, with a few MiB to spare
# A DiskFull message names what is free and what was needed, e.g. "1.2 MiB free, the file needs 384.0 KiB".
NAMES_FREE_AND_NEEDED = re.compile(r"[\d.]+ (B|KiB|MiB|GiB) free\b.*needs [\d.]+ (B|KiB|MiB|GiB)")
BOUND_S = 60.0  # one sync of a 9 MiB release slowed to ~0.1 s per file: anything longer is a hang


@pytest.fixture()
def small_pvc(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as the PVC")
    mnt = tmp_path / "small-pvc"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={VOLUME_MIB}m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _release(path: Path, seed: int, *, files: int, kib: int) -> Path:
    """llm/config.pbtxt + ``files`` files of ``kib`` KiB each (random bytes, deterministic per seed)."""
    rng = random.Random(seed)
    model = path / "llm"
    (model / "weights").mkdir(parents=True)
    (model / "config.pbtxt").write_text(f'name: "llm"\nbackend: "python"\n# seed {seed}\n')
    for i in range(files):
        (model / "weights" / f"w{i:03d}.bin").write_bytes(rng.randbytes(kib * 1024))
    return path


def _staged_files(staging: Path) -> int:
    """Files the sync has finished in staging (verified, fsynced, renamed from .partial)."""
    if not staging.exists():
        return 0
    return sum(1 for p in staging.rglob("*.bin") if p.is_file())


def test_pvc_fills_up_mid_sync(tmp_path: Path, bucket: str, small_pvc: Path, s3_server: SeaweedS3) -> None:
    row = LEDGER.row("Storage", "PVC fills up mid-sync",
                     injected_how=f"a {VOLUME_MIB} MiB tmpfs PVC; once the sync has written N files of a 9 MiB "
                                  "release (past the up-front free-space check), another process (dd) fills the "
                                  "volume; then the filler is deleted and the sync run again",
                     behaviour=f"DiskFull (exit code {DiskFull.exit_code}) naming the free and needed bytes and "
                               "what to do; staging removed; nothing visible; the re-run publishes")
    pvc = small_pvc
    v1 = make_release_dir(tmp_path / "src1", seed=1, small=3)
    publish_release(v1, f"s3://{bucket}/prod/llm/1", part_size=1024 * 1024)
    result_json(run_cli("sync", "--release", f"s3://{bucket}/prod/llm/1", "--pvc", str(pvc), "--progress-interval",
                        "0"))
    current, current_src = 1, v1 / "llm"
    failures: list[str] = []
    # (files the sync has finished when the filler starts, part size): early and late in the sync, and large
    # files written in parts (the per-part journal, shared mappings) as well as whole small files.
    rounds = [(2, 1024 * 1024), (18, 1024 * 1024), (1, 128 * 1024)]
    for i, (after_files, part_size) in enumerate(rounds):
        version = i + 2
        src = _release(tmp_path / f"src{version}", version, files=24, kib=384)
        uri = f"s3://{bucket}/prod/llm/{version}"
        publish_release(src, uri, part_size=part_size)
        expected = {p.relative_to(src / "llm").as_posix(): p.stat().st_size
                    for p in (src / "llm").rglob("*") if p.is_file()}
        version_dir = pvc / "repository" / "llm" / str(version)
        staging = pvc / "staging" / "llm" / str(version)
        watcher = RepositoryWatcher(version_dir, expected)
        watcher.start()
        filler = pvc / f"filler-{i}"
        started = time.monotonic()
        # The store answers each file ~0.1 s late, so the filler runs while the sync is still writing.
        with FaultProxy(s3_server.port, mode="503", failures=0, match=f"/prod/llm/{version}/llm/", delay=0.1) as proxy:
            sync = subprocess.Popen(
                [sys.executable, "-m", "triton_rollout", "sync", "--release", uri, "--pvc", str(pvc), "--no-prune",
                 "--progress-interval", "0", "--concurrency", "1", "--large-streams", "1"],
                env=cli_env(AWS_ENDPOINT_URL=proxy.endpoint), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            while sync.poll() is None and _staged_files(staging) < after_files:
                time.sleep(0.005)
            fill = subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, text=True)
            try:
                _, err = sync.communicate(timeout=BOUND_S)
                hung = False
            except subprocess.TimeoutExpired:
                sync.kill()
                _, err = sync.communicate()
                hung = True
        seconds = time.monotonic() - started
        filled_mid_sync = "No space left" in fill.stderr and _staged_files(staging) < len(expected)
        previous_intact = tree_digest(pvc / "repository" / "llm" / str(current)) == tree_digest(current_src)
        failed_cleanly = (sync.returncode == DiskFull.exit_code and NAMES_FREE_AND_NEEDED.search(err) is not None
                          and "what to do:" in err
                          and not version_dir.exists() and not staging.exists())
        filler.unlink(missing_ok=True)
        # Space freed: the same sync, straight to S3, publishes the version whole (and retention makes room for
        # the next round: the one version before it is kept).
        rerun = run_cli("sync", "--release", uri, "--pvc", str(pvc), "--keep", "1", "--progress-interval", "0")
        watcher.stop.set()
        watcher.join()
        republished = rerun.returncode == 0 and tree_digest(version_dir) == tree_digest(src / "llm")
        row.runs += 1
        row.injected += 1
        held = (filled_mid_sync and failed_cleanly and previous_intact and republished and not watcher.violations
                and not hung)
        row.survived += held
        row.data_lost += not previous_intact
        row.partial_visible += len(watcher.violations)
        row.hangs += hung
        row.seconds += seconds
        if republished:
            current, current_src = version, src / "llm"
        if not held:
            failures.append(
                f"round {i} (filler after {after_files} files, parts of {part_size} B): filled mid-sync "
                f"{filled_mid_sync} ({fill.stderr.strip()[-200:]}), exit {sync.returncode}, hung {hung}, "
                f"staging left {staging.exists()}, visible {version_dir.exists()}, previous intact {previous_intact}, "
                f"watcher {watcher.violations[:3]}, re-run exit {rerun.returncode}\nsync stderr: {err[-3000:]}\n"
                f"re-run stderr: {rerun.stderr[-1500:]}")
    assert not failures, "\n".join(failures)

