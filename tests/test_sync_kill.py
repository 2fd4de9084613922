"""SIGKILL the sync at random points: repository/ never shows a partial version, re-runs resume."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from triton_rollout.release.publish import publish_release

from tests.helpers import RepositoryWatcher, cli_env, make_release_dir, result_json, run_cli, tree_digest


def _sync_cmd(uri: str, pvc: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "triton_rollout", "sync", "--release", uri, "--pvc", str(pvc),
            "--progress-interval", "0", "--lock-timeout", "30", *extra]


@pytest.mark.slow
def test_sigkill_never_exposes_a_partial_version_and_resumes(tmp_path: Path, bucket: str, pvc: Path) -> None:
    src = make_release_dir(tmp_path / "src", seed=11, big_mib=48, small=40)
    uri = f"s3://{bucket}/prod/llm/1"
    publish_release(src, uri, part_size=1024 * 1024)
    model_dir = src / "llm"
    expected = {p.relative_to(model_dir).as_posix(): p.stat().st_size for p in model_dir.rglob("*") if p.is_file()}
    watcher = RepositoryWatcher(pvc / "repository" / "llm" / "1", expected)
    watcher.start()
    env = cli_env()
    try:
        # 1. Deterministic: kill once a few parts of the big file are verified, then check the re-run reuses them.
        proc = subprocess.Popen(_sync_cmd(uri, pvc, "--concurrency", "1", "--request-mib", "1"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        journal = pvc / "staging" / "llm" / "1" / "llm" / "rank0.engine.parts"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and len(journal.read_text().split()) >= 3:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (pvc / "repository" / "llm" / "1").exists()
        resumed = result_json(run_cli(*_sync_cmd(uri, pvc)[3:], env=env))
        assert resumed["status"] == "published"
        assert resumed["parts_reused"] >= 3, resumed
        assert resumed["bytes_transferred"] < resumed["bytes_total"]
        assert tree_digest(pvc / "repository" / "llm" / "1") == tree_digest(src / "llm")

        # 2. Random kill points over fresh copies of the same release, into a second PVC.
        rng = random.Random(20261128)
        pvc2 = tmp_path / "pvc2"
        watcher2 = RepositoryWatcher(pvc2 / "repository" / "llm" / "1", expected)
        watcher2.start()
        kills = attempts = 0
        while kills < 6 and attempts < 30:
            attempts += 1
            proc = subprocess.Popen(_sync_cmd(uri, pvc2, "--concurrency", "2", "--request-mib", "2"), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.02, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            if (pvc2 / "repository" / "llm" / "1").exists():
                # Published before the kill landed: start over so later kills hit other phases.
                assert tree_digest(pvc2 / "repository" / "llm" / "1") == tree_digest(src / "llm")
                with watcher2.paused:
                    subprocess.run(["rm", "-rf", str(pvc2)], check=True)
        final = result_json(run_cli(*_sync_cmd(uri, pvc2)[3:], env=env))
        assert final["status"] in ("published", "unchanged", "adopted")
        assert tree_digest(pvc2 / "repository" / "llm" / "1") == tree_digest(src / "llm")
        assert kills >= 6, f"only {kills} of {attempts} random kills caught a sync in flight"
        watcher2.stop.set()
        watcher2.join()
        assert watcher2.violations == []
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.violations == []
    assert watcher.seen_complete > 0
