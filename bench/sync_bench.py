"""Sync benchmark: this project's verified S3 -> PVC sync against cp, s5cmd, aws s3 sync and rclone.

One run starts a real local S3 (SeaweedFS over loopback), generates and publishes two releases
(``large``: one big file plus a few hundred small ones; ``many_small``: thousands of small files),
then, for several rounds, times each tool's full sync into a fresh empty directory and its no-op
re-sync into the same directory, with the peak RSS of each tool process. Ratios are only meaningful
within one run: the S3 server and the clients share the machine's cores.

    PYTHONPATH=.:plugins python -m bench.sync_bench          (or: make bench)

Environment knobs (defaults are the issue's benchmark; scale down for a quick look):
    BENCH_LARGE_MIB=2048   size of the big file in the ``large`` case
    BENCH_SMALL_FILES=300  small files next to the big file in ``large``
    BENCH_MANY_FILES=3000  files in ``many_small``
    BENCH_ROUNDS=3         rounds; medians of full and no-op times are reported
    BENCH_TOOLS=...        comma list, subset of cp,s5cmd,aws,rclone,triton_rollout
    BENCH_CASES=...        comma list, subset of large,many_small
    BENCH_TRANSFERS=16     rclone --transfers/--checkers (s5cmd and aws keep their own defaults)
    BENCH_TIMEOUT=1800     seconds before one tool command is killed
    BENCH_KEEP=1           keep bench/work/ (generated data, S3 data, logs) afterwards
    BENCH_RESULTS=path     where the JSON goes (default bench/results/sync.json)

The page cache cannot be dropped reliably here (no root guarantee, shared machine), so every tool reads
from a warm cache: the source files for cp, the S3 server's volume files for the others. All tools
run under the same condition; absolute numbers are better than cold-cache ones.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.s3 import SeaweedS3

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "work"
BENCH_VENV = REPO / ".venv-bench"
BUCKET = "bench"
PREFIX = "bench"
VERSION = 1
TRITON_MODEL = "llm"
ALL_TOOLS = ("cp", "s5cmd", "aws", "rclone", "triton_rollout")
ALL_CASES = ("large", "many_small")
MIB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def env_list(name: str, allowed: tuple[str, ...]) -> list[str]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return list(allowed)
    picked = [x.strip() for x in raw.split(",") if x.strip()]
    bad = [x for x in picked if x not in allowed]
    if bad:
        raise SystemExit(f"{name}: unknown {bad}; choose from {', '.join(allowed)}")
    return picked


@dataclass(frozen=True)
class Config:
    large_mib: int
    small_files: int
    many_files: int
    rounds: int
    tools: list[str]
    cases: list[str]
    transfers: int
    timeout: float
    keep: bool
    results: Path

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            large_mib=env_int("BENCH_LARGE_MIB", 2048),
            small_files=env_int("BENCH_SMALL_FILES", 300),
            many_files=env_int("BENCH_MANY_FILES", 3000),
            rounds=max(1, env_int("BENCH_ROUNDS", 3)),
            tools=env_list("BENCH_TOOLS", ALL_TOOLS),
            cases=env_list("BENCH_CASES", ALL_CASES),
            transfers=env_int("BENCH_TRANSFERS", 16),
            timeout=float(env_int("BENCH_TIMEOUT", 1800)),
            keep=os.environ.get("BENCH_KEEP", "") == "1",
            results=Path(os.environ.get("BENCH_RESULTS") or REPO / "bench" / "results" / "sync.json"),
        )


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Release:
    case: str
    src: Path
    files: dict[str, int]  # release-relative path -> size

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def uri(self) -> str:
        return f"s3://{BUCKET}/{PREFIX}/{self.case}/{VERSION}"


def write_large_file(path: Path, size: int) -> None:
    """Incompressible, non-repeating bytes at memcpy speed (os.urandom alone is ~4x slower here).

    Each MiB is a slice of an 8 MiB random pool at an odd offset, stamped with its index, so no two
    MiB (nor 4 KiB-aligned blocks) are equal: neither compression nor dedupe can shortcut a tool.
    """
    pool = os.urandom(8 * MIB)
    with open(path, "wb") as fh:
        done, i = 0, 0
        while done < size:
            n = min(MIB, size - done)
            off = (i * 1_048_573) % (7 * MIB)
            fh.write((i.to_bytes(16, "little") + pool[off + 16 : off + MIB])[:n])
            done += n
            i += 1


def write_small_files(root: Path, subdir: str, count: int, lo: int, hi: int, rng: random.Random,
                      files: dict[str, int]) -> None:
    for i in range(count):
        # Spread over a few directories like a tokenizer / config tree, not one flat folder.
        rel = f"{TRITON_MODEL}/{subdir}/d{i % 16:02d}/f{i:05d}.bin"
        size = rng.randint(lo, hi)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        files[rel] = size


def generate(case: str, cfg: Config) -> Release:
    src = WORK / "src" / case
    spec = {"case": case, "large_mib": cfg.large_mib, "small": cfg.small_files, "many": cfg.many_files}
    stamp = src.parent / f"{case}.spec.json"
    # Reuse data a kept earlier run generated with the same spec (BENCH_KEEP=1 workflows).
    if stamp.exists() and src.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("spec") == spec:
            log(f"{case}: reusing generated data in {src}")
            return Release(case, src, saved["files"])
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    rng = random.Random(f"{case}-{cfg.large_mib}")
    files: dict[str, int] = {}
    t0 = time.perf_counter()
    if case == "large":
        size = cfg.large_mib * MIB
        (src / TRITON_MODEL).mkdir()
        write_large_file(src / TRITON_MODEL / "engine.bin", size)
        files[f"{TRITON_MODEL}/engine.bin"] = size
        write_small_files(src, "tokenizer", cfg.small_files, 4 * 1024, 64 * 1024, rng, files)
    else:
        write_small_files(src, "assets", cfg.many_files, 1024, 32 * 1024, rng, files)
    (src / TRITON_MODEL / "config.pbtxt").write_text(f'name: "{TRITON_MODEL}"\nbackend: "python"\n')
    files[f"{TRITON_MODEL}/config.pbtxt"] = (src / TRITON_MODEL / "config.pbtxt").stat().st_size
    stamp.write_text(json.dumps({"spec": spec, "files": files}))
    total = sum(files.values())
    log(f"{case}: generated {len(files)} files, {total / MIB:.1f} MiB in {time.perf_counter() - t0:.1f}s")
    return Release(case, src, files)


# ------------------------------------------------------------------------------------ measured runs


@dataclass
class Measured:
    seconds: float
    rc: int
    peak_rss_mib: float
    stdout: str
    log_path: Path


# Runs one tool and reports its wall time and peak RSS. A separate, minimal process (python -S -I, a
# few MiB) forks the tool because Linux counts the forking process's memory high-water mark into the
# child's ru_maxrss at exec: forked straight from this harness, every tool would show the harness's
# RSS as a floor. os.wait4 gives the rusage of exactly that one child (and what it reaped).
_MEASURE = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"cannot run {argv[0]}: {exc}", file=sys.stderr, flush=True)
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
secs = time.perf_counter() - t0
with open(out, "w") as fh:
    json.dump({"seconds": secs, "rc": os.waitstatus_to_exitcode(status), "maxrss_kib": ru.ru_maxrss}, fh)
"""


def run_measured(cmd: list[str], *, env: dict[str, str], log_path: Path, timeout: float) -> Measured:
    """Run one command through the measuring helper; time and peak RSS are the tool's alone."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out_path = log_path.with_suffix(".stdout")
    meas_path = log_path.with_suffix(".rusage.json")
    meas_path.unlink(missing_ok=True)
    with open(out_path, "wb") as out, open(log_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-S", "-I", "-c", _MEASURE, str(meas_path), *cmd],
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Kill the whole group (helper and tool) so a hung tool cannot stall the benchmark.
            _kill_group(proc.pid)
            proc.wait()
    stdout = out_path.read_text(errors="replace")
    if not meas_path.exists():
        return Measured(float(timeout), proc.returncode or -9, 0.0, stdout, log_path)
    m = json.loads(meas_path.read_text())
    return Measured(m["seconds"], m["rc"], m["maxrss_kib"] / 1024.0, stdout, log_path)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def tail(path: Path, lines: int = 12) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ----------------------------------------------------------------------------------------- tools


@dataclass
class Tool:
    name: str
    # (release, dest) -> argv of the full sync and of the no-op re-sync
    full: Callable[[Release, Path], list[str]]
    noop: Callable[[Release, Path], list[str]]
    # release-relative path -> where the tool puts it under dest
    placed: Callable[[Path, str], Path] = field(default=lambda dest, rel: dest / rel)
    skip: str | None = None


def find_peer(name: str) -> str | None:
    """A peer binary from .venv-bench; s5cmd's bin/ entry is a Python shim, so take the real binary."""
    if name == "s5cmd":
        hits = sorted(glob.glob(str(BENCH_VENV / "lib" / "python3*" / "site-packages" / "s5cmd" / "bin" / "s5cmd")))
        return hits[0] if hits else None
    p = BENCH_VENV / "bin" / name
    return str(p) if p.exists() else None


def triton_rollout_skip(env: dict[str, str]) -> str | None:
    """None when `python -m triton_rollout sync` is usable, else why the tool is skipped."""
    if not (REPO / "plugins" / "triton_rollout" / "cli_sync.py").exists():
        return "plugins/triton_rollout/cli_sync.py does not exist yet"
    r = subprocess.run([sys.executable, "-m", "triton_rollout", "sync", "--help"], env=env,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"`python -m triton_rollout sync --help` failed: {(r.stderr or r.stdout).strip()[-300:]}"
    return None


def build_tools(cfg: Config, s3: SeaweedS3, env: dict[str, str]) -> list[Tool]:
    ep = s3.endpoint
    missing = "not in .venv-bench (run `make bench`, which installs bench/requirements-peers.txt there)"
    s5 = find_peer("s5cmd")
    aws = find_peer("aws")
    rclone = find_peer("rclone")

    def cp_full(rel: Release, dest: Path) -> list[str]:
        return ["cp", "-r", f"{rel.src}/.", f"{dest}/"]

    def cp_noop(rel: Release, dest: Path) -> list[str]:
        # cp has no sync mode; -u (copy only when the source is newer) is its closest no-op.
        return ["cp", "-ru", f"{rel.src}/.", f"{dest}/"]

    def s5_cmd(rel: Release, dest: Path) -> list[str]:
        # s5cmd's own defaults (256 workers, 5 parts per file in flight): the reference to beat.
        return [str(s5), "--endpoint-url", ep, "--log", "error", "sync",
                f"s3://{BUCKET}/{PREFIX}/{rel.case}/{VERSION}/*", f"{dest}/"]

    def aws_cmd(rel: Release, dest: Path) -> list[str]:
        # awscli's defaults (10 concurrent requests, 8 MiB parts).
        return [str(aws), "s3", "sync", f"s3://{BUCKET}/{PREFIX}/{rel.case}/{VERSION}", str(dest),
                "--endpoint-url", ep, "--only-show-errors", "--no-progress"]

    def rclone_cmd(rel: Release, dest: Path) -> list[str]:
        n = str(cfg.transfers)
        return [str(rclone), "sync", f"bench:{BUCKET}/{PREFIX}/{rel.case}/{VERSION}", str(dest),
                "--transfers", n, "--checkers", n, "--log-level", "ERROR"]

    def tr_cmd(rel: Release, dest: Path) -> list[str]:
        return [sys.executable, "-m", "triton_rollout", "sync", "--release", rel.uri, "--pvc", str(dest)]

    def tr_placed(dest: Path, rel: str) -> Path:
        model, _, rest = rel.partition("/")
        return dest / "repository" / model / str(VERSION) / rest

    tools = {
        "cp": Tool("cp", cp_full, cp_noop),
        "s5cmd": Tool("s5cmd", s5_cmd, s5_cmd, skip=None if s5 else f"s5cmd {missing}"),
        "aws": Tool("aws", aws_cmd, aws_cmd, skip=None if aws else f"aws {missing}"),
        "rclone": Tool("rclone", rclone_cmd, rclone_cmd, skip=None if rclone else f"rclone {missing}"),
        "triton_rollout": Tool("triton_rollout", tr_cmd, tr_cmd, placed=tr_placed,
                               skip=triton_rollout_skip(env) if "triton_rollout" in cfg.tools else None),
    }
    return [tools[name] for name in cfg.tools]


def tool_versions(env: dict[str, str]) -> dict[str, str]:
    """Each peer's version line, recorded with the results so ratios can be traced to releases."""
    probes = {"s5cmd": [find_peer("s5cmd"), "version"], "aws": [find_peer("aws"), "--version"],
              "rclone": [find_peer("rclone"), "version"]}
    out = {}
    for name, argv in probes.items():
        if argv[0] is None:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            r = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=30)
            out[name] = ((r.stdout or r.stderr).strip().splitlines() or [""])[0]
    return out


def tool_env(s3: SeaweedS3) -> dict[str, str]:
    env = dict(os.environ)
    env.update(s3.env())
    env["AWS_REGION"] = env["AWS_DEFAULT_REGION"]
    # Keep a user's ~/.aws and rclone.conf out of the measurement.
    env["AWS_CONFIG_FILE"] = str(WORK / "aws-config-none")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(WORK / "aws-credentials-none")
    env.pop("AWS_PROFILE", None)
    env["RCLONE_CONFIG"] = str(WORK / "rclone-none.conf")
    env.update({
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": s3.endpoint,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": s3.access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": s3.secret_key,
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
    })
    paths = [str(REPO), str(REPO / "plugins")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


# --------------------------------------------------------------------------------------- publish


def publish(rel: Release, env: dict[str, str]) -> None:
    """The project's own publisher (files first, manifest.json last), as producers use it."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "triton_rollout", "publish", "--src", str(rel.src),
                        "--release", rel.uri], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"`python -m triton_rollout publish` of {rel.uri} failed (rc {r.returncode}):\n"
                           f"{(r.stderr or r.stdout)[-2000:]}")
    log(f"{rel.case}: published {rel.uri} in {time.perf_counter() - t0:.1f}s")


# ------------------------------------------------------------------------------------ verification


def _sample_digest(path: Path, size: int) -> str:
    """sha256 of three 64 KiB windows (start, middle, end): catches wrong content cheaply."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for off in sorted({0, max(0, size // 2 - 32768), max(0, size - 65536)}):
            fh.seek(off)
            h.update(fh.read(65536))
    return h.hexdigest()


def verify(tool: Tool, rel: Release, dest: Path) -> str | None:
    """None when dest holds every release file at the right size (and sampled content); else why not."""
    missing, wrong, got_bytes = [], [], 0
    for path, size in rel.files.items():
        p = tool.placed(dest, path)
        try:
            st = p.stat()
        except FileNotFoundError:
            missing.append(path)
            continue
        got_bytes += st.st_size
        if st.st_size != size:
            wrong.append(f"{path} ({st.st_size} != {size})")
    if missing or wrong:
        return (f"{len(missing)} missing (e.g. {missing[:3]}), {len(wrong)} wrong size (e.g. {wrong[:3]}); "
                f"{got_bytes} of {rel.total_bytes} bytes present")
    # The biggest file and a spread of small ones, compared with the source by sampled content.
    by_size = sorted(rel.files, key=lambda p: (-rel.files[p], p))
    for path in by_size[:1] + by_size[1::max(1, len(by_size) // 20)]:
        size = rel.files[path]
        if _sample_digest(tool.placed(dest, path), size) != _sample_digest(rel.src / path, size):
            return f"content of {path} differs from the source"
    return None


def count_files(dest: Path) -> tuple[int, int]:
    n = b = 0
    for root, _, names in os.walk(dest):
        for name in names:
            n += 1
            b += os.lstat(os.path.join(root, name)).st_size
    return n, b


# -------------------------------------------------------------------------------------------- main


@dataclass
class Samples:
    full: list[float] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)
    durable: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    error: str | None = None


def bench_one(tool: Tool, rel: Release, cfg: Config, env: dict[str, str], rnd: int, s: Samples) -> None:
    dest = WORK / "dst" / rel.case / tool.name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    logs = WORK / "logs" / f"r{rnd}-{rel.case}-{tool.name}"
    try:
        # Flush what earlier tools left dirty so no tool pays for another's deferred writeback.
        os.sync()
        full = run_measured(tool.full(rel, dest), env=env, log_path=logs.with_name(logs.name + "-full.log"),
                            timeout=cfg.timeout)
        # Time to make the copy durable: triton_rollout fsyncs before publishing, the peers do not.
        t_sync = time.perf_counter()
        os.sync()
        durable = full.seconds + time.perf_counter() - t_sync
        if full.rc != 0:
            s.error = f"full sync exited {full.rc} (log {full.log_path}):\n{tail(full.log_path)}"
            log(f"  {tool.name}: FAILED: {s.error}")
            return
        bad = verify(tool, rel, dest)
        if bad:
            s.error = f"destination wrong after full sync: {bad}"
            log(f"  {tool.name}: FAILED: {s.error}")
            return
        n, b = count_files(dest)
        noop = run_measured(tool.noop(rel, dest), env=env, log_path=logs.with_name(logs.name + "-noop.log"),
                            timeout=cfg.timeout)
        if noop.rc != 0:
            s.error = f"no-op re-sync exited {noop.rc} (log {noop.log_path}):\n{tail(noop.log_path)}"
            log(f"  {tool.name}: FAILED: {s.error}")
            return
        s.full.append(full.seconds)
        s.durable.append(durable)
        s.noop.append(noop.seconds)
        s.rss.extend([full.peak_rss_mib, noop.peak_rss_mib])
        extra = ""
        if tool.name == "triton_rollout":
            extra = " | result: " + _result_summary(full.stdout) + " / no-op: " + _result_summary(noop.stdout)
        log(f"  {tool.name}: full {full.seconds:.2f}s ({rel.total_bytes / MIB / full.seconds:.0f} MiB/s), "
            f"durable {durable:.2f}s, "
            f"no-op {noop.seconds:.2f}s, peak RSS {max(full.peak_rss_mib, noop.peak_rss_mib):.0f} MiB, "
            f"dest {n} files / {b / MIB:.1f} MiB, verified{extra}")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _result_summary(stdout: str) -> str:
    """The sync's JSON result (last JSON line of stdout), trimmed to its transfer counters."""
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict):
                keys = [k for k in data if any(w in k for w in ("file", "byte", "second", "skip"))]
                return json.dumps({k: data[k] for k in keys} or data, sort_keys=True)[:300]
    return "(no JSON on stdout)"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def report(cfg: Config, releases: dict[str, Release], results: dict[str, dict[str, Samples]],
           skipped: dict[str, str], versions: dict[str, str]) -> dict[str, Any]:
    cases: dict[str, dict[str, dict[str, float]]] = {}
    errors: dict[str, dict[str, str]] = {}
    header = (f"{'case':<11} {'tool':<15} {'full_s':>8} {'x cp':>6} {'x s5cmd':>8} {'MiB/s':>7} "
              f"{'noop_s':>7} {'noop x s5':>9} {'rss_MiB':>8} {'durable_s':>10} {'dur x s5':>9}")
    lines = [header, "-" * len(header)]
    for case, per_tool in results.items():
        cases[case] = {}
        med = {t: (statistics.median(s.full), statistics.median(s.noop)) for t, s in per_tool.items()
               if s.full and not s.error}
        dur = {t: statistics.median(s.durable) for t, s in per_tool.items() if s.durable and not s.error}
        cp_full = med.get("cp", (None, None))[0]
        s5_full, s5_noop = med.get("s5cmd", (None, None))
        mib = releases[case].total_bytes / MIB
        for tool, s in per_tool.items():
            if tool not in med:
                errors.setdefault(case, {})[tool] = s.error or "no successful round"
                lines.append(f"{case:<11} {tool:<15} {'FAILED':>8}  {(s.error or '').splitlines()[0][:70]}")
                continue
            full, noop = med[tool]
            rss = max(s.rss)
            cases[case][tool] = {"full_s": round(full, 4), "noop_s": round(noop, 4), "peak_rss_mib": round(rss, 1),
                                 "durable_s": round(dur[tool], 4)}
            lines.append(f"{case:<11} {tool:<15} {full:>8.2f} {ratio(full, cp_full):>6} {ratio(full, s5_full):>8} "
                         f"{mib / full:>7.0f} {noop:>7.2f} {ratio(noop, s5_noop):>9} {rss:>8.0f} "
                         f"{dur[tool]:>10.2f} {ratio(dur[tool], dur.get('s5cmd')):>9}")
    for tool, why in skipped.items():
        lines.append(f"{'(all)':<11} {tool:<15} {'SKIPPED':>8}  {why[:80]}")
    print("\n".join(lines), flush=True)
    return {
        "cases": cases,
        "meta": {
            "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "rounds": cfg.rounds,
            "large_mib": cfg.large_mib,
            "files": {c: len(r.files) for c, r in releases.items()},
            "bytes": {c: r.total_bytes for c, r in releases.items()},
            "cpus": os.cpu_count(),
            "statistic": "median of rounds for times, max over rounds (full and no-op) for RSS",
            "rclone_transfers": cfg.transfers,
            "versions": versions,
            "rss_floor": "peak RSS includes the ~6-8 MiB of the measuring helper it was forked from",
            "page_cache": "warm (dropping it is not possible reliably here); same for every tool",
            "durable_s": "full_s plus the time of a sync(2) right after: when the copy is on disk "
                         "(triton_rollout fsyncs before it publishes; the peers leave dirty pages)",
            "dirty_pages": "sync(2) before every timed full sync, so no tool pays another's writeback",
        },
        "skipped": skipped,
        "failed": errors,
    }


def main() -> int:
    cfg = Config.from_env()
    log(f"config: large {cfg.large_mib} MiB + {cfg.small_files} small files, many_small {cfg.many_files} "
        f"files, {cfg.rounds} round(s), tools {','.join(cfg.tools)}, cases {','.join(cfg.cases)}")
    WORK.mkdir(parents=True, exist_ok=True)
    # An installed package ships compiled bytecode (pip compiles on install); an editable checkout run
    # with PYTHONDONTWRITEBYTECODE would recompile every module on every start instead.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "plugins")], check=False)
    s3 = SeaweedS3(data_dir=WORK / "s3", buckets=(BUCKET,))
    shutil.rmtree(s3.data_dir, ignore_errors=True)
    try:
        s3.start()
        log(f"SeaweedFS S3 at {s3.endpoint} (pid {s3.pid}, data {s3.data_dir})")
        env = tool_env(s3)
        releases = {case: generate(case, cfg) for case in cfg.cases}
        for rel in releases.values():
            publish(rel, env)
        tools = build_tools(cfg, s3, env)
        skipped = {t.name: t.skip for t in tools if t.skip}
        for name, why in skipped.items():
            log(f"SKIP {name}: {why}")
        active = [t for t in tools if not t.skip]
        results = {case: {t.name: Samples() for t in active} for case in cfg.cases}
        for rnd in range(cfg.rounds):
            # Rotate the order each round so no tool always runs first (or last) after another's I/O.
            order = active[rnd % len(active):] + active[: rnd % len(active)] if active else []
            for case, rel in releases.items():
                log(f"round {rnd + 1}/{cfg.rounds}, case {case} ({len(rel.files)} files, "
                    f"{rel.total_bytes / MIB:.1f} MiB)")
                for tool in order:
                    s = results[case][tool.name]
                    if s.error:
                        continue  # a tool that failed once is out of this case; its error is reported
                    bench_one(tool, rel, cfg, env, rnd, s)
        out = report(cfg, releases, results, skipped, tool_versions(env))
        cfg.results.parent.mkdir(parents=True, exist_ok=True)
        cfg.results.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
        log(f"wrote {cfg.results}")
        return 1 if out["failed"] else 0
    finally:
        s3.stop()
        log("S3 server stopped")
        if cfg.keep:
            log(f"kept {WORK} (BENCH_KEEP=1)")
        else:
            shutil.rmtree(WORK, ignore_errors=True)
            log(f"removed {WORK}")


if __name__ == "__main__":
    raise SystemExit(main())
