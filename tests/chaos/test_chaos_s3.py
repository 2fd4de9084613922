"""S3 faults against the real `triton_rollout sync` CLI (a subprocess, as a pod runs it) and the real local S3
(SeaweedFS) behind tests.helpers.FaultProxy: 503 storms, SlowDown throttling, connections reset mid-body and a
server that stalls mid-body without closing (kserve#5611).

Each round syncs the next version of one model into a PVC that already holds the version before it, with a
RepositoryWatcher on the new version's directory; after it the previous version's digest is checked against
its source. The figures go to the faults ledger first, the assertions come after.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from triton_rollout.errors import TransferError
from triton_rollout.release.publish import publish_release

from devstack.s3 import SeaweedS3
from tests.chaos.ledger import LEDGER, FaultRow
from tests.helpers import FaultProxy, RepositoryWatcher, cli_env, make_release_dir, result_json, run_cli, tree_digest

pytestmark = pytest.mark.slow

PART = 1024 * 1024  # the releases' part size: every MiB of the big file has its own sha256
BIG_MIB = 6
# The engine's retry budget for one ranged GET (transfer.Downloader max_attempts) and its backoff
# (s3.backoff_delay: min(8, 0.2 * 2**attempt) s, jittered by up to x1.5): what bounds a failing sync.
ATTEMPTS = 6
MAX_BACKOFF_S = sum(min(8.0, 0.2 * 2**a) * 1.5 for a in range(1, ATTEMPTS))
START_S = 10.0  # interpreter start, manifest read and publish, generously, on 2 cores shared with SeaweedFS


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess[str] | None  # None: killed at the bound (a hang)
    seconds: float
    watcher: RepositoryWatcher
    previous_intact: bool
    published: dict[str, str] = field(default_factory=dict)


class Lineage:
    """One model's versions in a bucket and a PVC holding them; ``current``: the newest one published there, the
    version each round's sync must leave untouched."""

    def __init__(self, tmp_path: Path, bucket: str, pvc: Path) -> None:
        self.tmp_path, self.bucket, self.pvc = tmp_path, bucket, pvc
        self.version = 0
        self.sources: dict[int, Path] = {}
        result_json(run_cli("sync", "--release", self.publish(), "--pvc", str(pvc), "--progress-interval", "0"))
        self.current = self.version

    def publish(self) -> str:
        self.version += 1
        src = make_release_dir(self.tmp_path / f"src{self.version}", seed=self.version, big_mib=BIG_MIB, small=12)
        self.sources[self.version] = src / "llm"
        uri = f"s3://{self.bucket}/prod/llm/{self.version}"
        publish_release(src, uri, part_size=PART)
        return uri

    def version_dir(self, version: int) -> Path:
        return self.pvc / "repository" / "llm" / str(version)

    def intact(self, version: int) -> bool:
        return tree_digest(self.version_dir(version)) == tree_digest(self.sources[version])

    def sync_next(self, proxy: FaultProxy, *flags: str, bound: float) -> Outcome:
        """Publish the next version and sync it through ``proxy``, killed if it outlives ``bound`` seconds."""
        uri = self.publish()
        src = self.sources[self.version]
        expected = {p.relative_to(src).as_posix(): p.stat().st_size for p in src.rglob("*") if p.is_file()}
        watcher = RepositoryWatcher(self.version_dir(self.version), expected)
        watcher.start()
        started = time.monotonic()
        proc: subprocess.CompletedProcess[str] | None
        try:
            proc = run_cli("sync", "--release", uri, "--pvc", str(self.pvc), "--no-prune", "--progress-interval", "0",
                           "--request-mib", "4", *flags, env=cli_env(AWS_ENDPOINT_URL=proxy.endpoint), timeout=bound)
        except subprocess.TimeoutExpired:  # subprocess.run has killed it
            proc = None
        seconds = time.monotonic() - started
        watcher.stop.set()
        watcher.join()
        published = tree_digest(self.version_dir(self.version)) if self.version_dir(self.version).exists() else {}
        outcome = Outcome(proc, seconds, watcher, self.intact(self.current), published)
        if published:
            self.current = self.version
        return outcome

    def adopt(self, outcome: Outcome) -> None:
        """The round's version was published after all (a re-run): it is the one the next round must keep."""
        outcome.published = tree_digest(self.version_dir(self.version))
        self.current = self.version

    def published_whole(self, outcome: Outcome) -> bool:
        return outcome.published == tree_digest(self.sources[self.version])


def _record(row: FaultRow, outcome: Outcome, injected: int, held: bool) -> None:
    row.runs += 1
    row.injected += injected
    row.survived += injected if held else 0
    row.data_lost += 0 if outcome.previous_intact else 1
    row.partial_visible += len(outcome.watcher.violations)
    row.hangs += outcome.proc is None
    row.seconds += outcome.seconds


def _published(proc: subprocess.CompletedProcess[str] | None) -> dict[str, Any] | None:
    if proc is None or proc.returncode != 0:
        return None
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _counted_retries(proxy: FaultProxy) -> int:
    """The retries a sync's JSON result must count for what ``proxy`` broke. Retries of the manifest read
    (s3.with_retries, before the transfer starts) are not in the transfer counters."""
    return sum(not path.endswith("/manifest.json") for path in proxy.broken_paths)


def _survived_publish(lineage: Lineage, outcome: Outcome, min_retries: int) -> bool:
    """Every invariant of a sync that must get through: published whole, retries counted, nothing partial seen,
    the previous version untouched."""
    result = _published(outcome.proc)
    return (result is not None and result["status"] == "published" and result["retries"] >= min_retries
            and lineage.published_whole(outcome) and not outcome.watcher.violations and outcome.previous_intact)


def _survived_failure(lineage: Lineage, outcome: Outcome, exit_code: int) -> bool:
    """Every invariant of a sync that must fail: its exit code, a message saying what to do, nothing of the new
    version visible, the previous version untouched."""
    proc = outcome.proc
    return (proc is not None and proc.returncode == exit_code and "what to do:" in proc.stderr
            and not lineage.version_dir(lineage.version).exists() and not outcome.watcher.violations
            and outcome.previous_intact)


def _explain(outcome: Outcome) -> str:
    proc = outcome.proc
    tail = f"exit {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}" if proc else "killed at the bound"
    return f"{outcome.seconds:.1f}s, watcher {outcome.watcher.violations[:3]}, previous intact " \
           f"{outcome.previous_intact}: {tail}"


# -- 503 storms and SlowDown throttling ---------------------------------------------------------------------

def test_503_storms_and_throttling_are_retried(tmp_path: Path, bucket: str, pvc: Path, s3_server: SeaweedS3) -> None:
    lineage = Lineage(tmp_path, bucket, pvc)
    bound = START_S + 2 * MAX_BACKOFF_S
    cases = [
        # (row, rounds, FaultProxy arguments)
        (LEDGER.row("S3", "503 storm on object GETs",
                    injected_how="8 consecutive HTTP 503 SlowDown answers to the big file's ranged GETs, starting "
                                 "after 0-2 good ones (FaultProxy); each 503 counts as one",
                    behaviour="each GET retried with jittered exponential backoff; parts resume; published whole"),
         3, {"match": "rank0.engine", "failures": 8}),
        (LEDGER.row("S3", "503 storm on the manifest GET",
                    injected_how="3 consecutive HTTP 503 SlowDown answers to GET manifest.json (FaultProxy)",
                    behaviour="the manifest read is retried with backoff, then the sync runs; published whole"),
         2, {"match": "manifest.json", "failures": 3}),
        (LEDGER.row("S3", "SlowDown throttling",
                    injected_how="a quarter of all the release's GETs (manifest, small files, ranges) answered "
                                 "HTTP 503 SlowDown over the whole sync (FaultProxy, seeded)",
                    behaviour="throttled GETs retried with jittered backoff, the others go on; published whole"),
         2, {"match": "/prod/llm/", "failures": 40, "fraction": 0.25}),
    ]
    failures: list[str] = []
    for row, rounds, faults in cases:
        for i in range(rounds):
            skip = i % 3 if faults["match"] == "rank0.engine" else 0
            # Seeds whose first draws hit: a throttled round always throttles something.
            with FaultProxy(s3_server.port, mode="503", skip=skip, seed=(3, 7)[i % 2], **faults) as proxy:  # type: ignore[arg-type]
                outcome = lineage.sync_next(proxy, "--request-mib", "1", bound=bound)
            held = proxy.broken > 0 and _survived_publish(lineage, outcome, _counted_retries(proxy))
            _record(row, outcome, proxy.broken, held)
            if not held:
                failures.append(f"{row.fault} round {i}: {proxy.broken} 503s; {_explain(outcome)}")
    assert not failures, "\n".join(failures)


def test_503_storm_longer_than_the_retry_budget_fails_cleanly_and_resumes(
        tmp_path: Path, bucket: str, pvc: Path, s3_server: SeaweedS3) -> None:
    row = LEDGER.row("S3", "503 storm longer than the retry budget",
                     injected_how="every ranged GET of the big file answered HTTP 503 SlowDown after the first 2 "
                                  "(FaultProxy), then the storm ends and the sync is run again",
                     behaviour=f"fails after {ATTEMPTS} attempts with TransferError (exit code "
                               f"{TransferError.exit_code}) and what to do; nothing visible; the re-run reuses the "
                               "verified parts")
    lineage = Lineage(tmp_path, bucket, pvc)
    bound = START_S + MAX_BACKOFF_S
    failures: list[str] = []
    for i in range(2):
        with FaultProxy(s3_server.port, mode="503", match="rank0.engine", failures=10**6, skip=2) as proxy:
            outcome = lineage.sync_next(proxy, "--large-streams", "1", "--request-mib", "1", bound=bound)
        failed_cleanly = _survived_failure(lineage, outcome, TransferError.exit_code)
        # The storm is over: the same sync again, straight to S3, resumes from the verified parts.
        rerun = run_cli("sync", "--release", f"s3://{bucket}/prod/llm/{lineage.version}", "--pvc", str(pvc),
                        "--no-prune", "--progress-interval", "0", env=cli_env(AWS_ENDPOINT_URL=s3_server.endpoint))
        resumed = _published(rerun)
        previous = lineage.current
        if resumed:
            lineage.adopt(outcome)
        held = (failed_cleanly and resumed is not None and resumed["parts_reused"] >= 2
                and lineage.published_whole(outcome) and lineage.intact(previous))
        _record(row, outcome, 1, held)
        if not held:
            failures.append(f"round {i}: {_explain(outcome)}\nre-run: {rerun.returncode} {rerun.stdout[-800:]} "
                            f"{rerun.stderr[-1500:]}")
    assert not failures, "\n".join(failures)


# -- connections reset mid-body -----------------------------------------------------------------------------

def test_connections_reset_mid_body_resume_from_verified_parts(
        tmp_path: Path, bucket: str, pvc: Path, s3_server: SeaweedS3) -> None:
    row = LEDGER.row("S3", "connection reset mid-body",
                     injected_how="4 ranged GETs of the big file cut (TCP shutdown) at random byte offsets of their "
                                  "4 MiB bodies (FaultProxy, seeded); each cut counts as one",
                     behaviour="the GET is retried from the first part not yet verified: at most one part is "
                               "fetched twice per cut; published whole")
    lineage = Lineage(tmp_path, bucket, pvc)
    failures: list[str] = []
    for i in range(3):
        with FaultProxy(s3_server.port, mode="reset", match="rank0.engine", failures=4, cut_after=None,
                        seed=100 + i) as proxy:
            outcome = lineage.sync_next(proxy, bound=START_S + 2 * MAX_BACKOFF_S)
        # Resumed, not restarted: only the part each cut hit is fetched again.
        refetched = proxy.body_bytes - BIG_MIB * PART
        held = (proxy.broken == 4 and _survived_publish(lineage, outcome, proxy.broken)
                and refetched <= proxy.broken * PART)
        _record(row, outcome, proxy.broken, held)
        if not held:
            failures.append(f"round {i}: cuts at {proxy.cuts}, {refetched} bytes fetched twice; {_explain(outcome)}")
    assert not failures, "\n".join(failures)


# -- a server that stalls mid-body without closing ----------------------------------------------------------

STALL_S = 1.0  # the tests' --stall-timeout


def test_stalled_downloads_are_retried_or_fail_within_a_bound(
        tmp_path: Path, bucket: str, pvc: Path, s3_server: SeaweedS3) -> None:
    transient = LEDGER.row("S3", "server stalls mid-body (transient)",
                           injected_how="2 GETs (the big file's ranges, or manifest.json) stop sending at a random "
                                        "byte offset and keep the connection open (FaultProxy); --stall-timeout 1",
                           behaviour="no byte for --stall-timeout seconds: the GET is dropped and retried; progress "
                                     "resumes; published whole")
    permanent = LEDGER.row("S3", "server stalls mid-body (permanent)",
                           injected_how="every ranged GET of the big file stops sending at a random byte offset, "
                                        "the connection kept open (FaultProxy); --stall-timeout 1",
                           behaviour=f"each stalled GET dropped after --stall-timeout, retried {ATTEMPTS} times, then "
                                     f"TransferError (exit code {TransferError.exit_code}) within the bound "
                                     "attempts x (stall timeout + backoff); nothing visible")
    lineage = Lineage(tmp_path, bucket, pvc)
    flags = ("--stall-timeout", str(STALL_S))
    failures: list[str] = []
    for i, match in enumerate(["rank0.engine", "manifest.json", "rank0.engine"]):
        bound = START_S + 2 * (STALL_S + MAX_BACKOFF_S)
        with FaultProxy(s3_server.port, mode="stall", match=match, failures=2, cut_after=None, seed=i) as proxy:
            outcome = lineage.sync_next(proxy, *flags, bound=bound)
        held = proxy.broken == 2 and _survived_publish(lineage, outcome, _counted_retries(proxy))
        _record(transient, outcome, proxy.broken, held)
        if not held:
            failures.append(f"transient stall of {match} round {i}: {_explain(outcome)}")
    for i in range(2):
        # One stream: the bound is one GET's whole retry budget (parallel streams only fail sooner).
        bound = START_S + ATTEMPTS * STALL_S + MAX_BACKOFF_S
        with FaultProxy(s3_server.port, mode="stall", match="rank0.engine", failures=10**6, cut_after=None,
                        seed=10 + i) as proxy:
            outcome = lineage.sync_next(proxy, *flags, "--large-streams", "1", bound=bound)
        held = outcome.seconds < bound and _survived_failure(lineage, outcome, TransferError.exit_code)
        _record(permanent, outcome, 1, held)
        if not held:
            failures.append(f"permanent stall round {i} (bound {bound:.0f}s): {_explain(outcome)}")
    assert not failures, "\n".join(failures)
